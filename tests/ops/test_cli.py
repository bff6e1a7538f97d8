"""`tide enqueue|stats|dlq` against a real server: output, exit codes and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from tide_local.redisproc import RedisServer, free_port
from tide_worker.envelope import decode
from tide_worker.keys import QueueKeys, StreamKeys

from tests.ops.cli_helpers import run, run_proc
from tests.ops.conftest import now, seed_dead, seed_worker


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["TIDE_REDIS_URL", "TIDE_REDIS_CLUSTER", "TIDE_REDIS_USERNAME", "TIDE_REDIS_PASSWORD"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TIDE_REDIS_CA_FILE", raising=False)


def test_enqueue_bodies_prints_ids(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["enqueue", "--redis-url", redis_url, "--queue", "jobs", "a", "b"]) == 0
    ids = capsys.readouterr().out.split()
    msgs = [decode(x) for x in r.lrange("jobs", 0, -1)[::-1]]
    assert [m.body for m in msgs] == ["a", "b"] and [m.id for m in msgs] == ids


def test_enqueue_json_from_stdin_and_url_from_env(redis_url: str, r: redis.Redis) -> None:
    proc = run_proc(
        ["enqueue", "-q", "jobs", "--json", "--file", "-", "--side", "left"],
        stdin='{"n": 1}\n\n[1, 2]\n"s"\n',
        env={"TIDE_REDIS_URL": redis_url},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 3
    assert [decode(x).body for x in r.lrange("jobs", 0, -1)] == [{"n": 1}, [1, 2], "s"]


def test_enqueue_stream_delay_and_id(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["enqueue", "--redis-url", redis_url, "--stream", "ev", "--maxlen", "100", "x", "y"]) == 0
    entry_ids = capsys.readouterr().out.split()
    assert [e.decode() for e, _ in r.xrange("ev")] == entry_ids
    assert run(["enqueue", "--redis-url", redis_url, "-q", "jobs", "--delay", "60", "--id", "d1", "z"]) == 0
    assert capsys.readouterr().out.split() == ["d1"]
    assert decode(r.zrange(QueueKeys("jobs").delayed, 0, -1)[0]).id == "d1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["enqueue", "-q", "jobs"], "nothing to enqueue"),
        (["enqueue", "-q", "jobs", "--json", "{bad"], "not valid JSON"),
        (["enqueue", "-q", "jobs", "--maxlen", "5", "x"], "--maxlen works with --stream only"),
        (["enqueue", "-s", "ev", "--delay", "5", "x"], "--delay works with --queue only"),
        (["enqueue", "-q", "jobs", "--id", "i", "x", "y"], "--id needs exactly one BODY"),
        (["enqueue", "-q", "jobs", "--file", "/nonexistent/file"], "--file /nonexistent/file"),
        (["stats", "-s", "ev"], "--stream needs --group"),
        (["dlq", "purge", "-q", "jobs"], "--yes"),
        (["stats", "-q", "jobs", "--redis-ca-file", "/nonexistent/ca.pem"], "no such file"),
        (["stats", "-q", "jobs", "--redis-url", "http://x"], "must start with redis://"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    if "--redis-url" not in argv:
        argv = [*argv, "--redis-url", redis_url]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert r.dbsize() == 0  # nothing half-done


def test_stats_json_and_table(redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    t = now()
    r.lpush("orders", b"a", b"b")
    seed_worker(r, "orders", "w1", held=3, rate=12.0, now=t)
    seed_dead(r, "orders", 2)
    assert run(["stats", "--redis-url", redis_url, "-q", "orders", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ready"], s["in_flight"], s["dead"], s["workers_alive"]) == (2, 3, 2, 1)
    assert s["workers"][0]["rate"] == 12.0
    assert run(["stats", "--redis-url", redis_url, "-q", "orders"]) == 0
    out = capsys.readouterr().out
    assert "backlog 5" in out and "in-flight  3" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("w1")] == [["w1", "yes"]]


def test_stats_stream(redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(4):
        r.xadd("ev", {"data": str(i)})
    assert run(["stats", "--redis-url", redis_url, "-s", "ev", "-g", "g", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["group_exists"] is False and s["backlog"] == 4
    assert run(["stats", "--redis-url", redis_url, "-s", "ev", "-g", "g"]) == 0
    assert "(not created yet)" in capsys.readouterr().out


def test_dlq_list_requeue_purge(redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    seed_dead(r, "q", 5)
    assert run(["dlq", "list", "--redis-url", redis_url, "-q", "q", "--limit", "2", "--json"]) == 0
    assert [d["message_id"] for d in json.loads(capsys.readouterr().out)] == ["m4", "m3"]
    assert run(["dlq", "list", "--redis-url", redis_url, "-q", "q", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5 dead letter(s)") and "id=m4 reason=failed attempts=3" in out
    assert run(["dlq", "requeue", "--redis-url", redis_url, "-q", "q", "--id", "m1", "--id", "m3"]) == 0
    assert "requeued 2" in capsys.readouterr().out
    assert [decode(x).id for x in r.lrange("q", 0, -1)[::-1]] == ["m1", "m3"]
    assert run(["dlq", "purge", "--redis-url", redis_url, "-q", "q", "--yes"]) == 0
    assert "purged 3" in capsys.readouterr().out and r.llen(QueueKeys("q").dead) == 0


def test_dlq_stream_commands(redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    dead = StreamKeys("ev", "").dead
    for i in range(3):
        r.xadd(
            dead, {"message": f"plain {i}", "encoding": "utf-8", "reason": "failed", "message_id": f"s{i}"}
        )
    assert run(["dlq", "list", "--redis-url", redis_url, "-s", "ev", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["message_id"] for d in listed] == ["s2", "s1", "s0"] and all("entry_id" in d for d in listed)
    assert run(["dlq", "requeue", "--redis-url", redis_url, "-s", "ev", "--count", "2"]) == 0
    assert [f[b"data"] for _, f in r.xrange("ev")] == [b"plain 0", b"plain 1"]
    assert run(["dlq", "purge", "--redis-url", redis_url, "-s", "ev", "-y"]) == 0
    assert r.xlen(dead) == 0


def test_progress_bar_on_long_lists(redis_url: str, r: redis.Redis) -> None:
    seed_dead(r, "q", 3000)
    proc = run_proc(["dlq", "requeue", "--redis-url", redis_url, "-q", "q", "--count", "2000", "--progress"])
    assert proc.returncode == 0, proc.stderr
    assert "2000/2000 100%" in proc.stderr and "[" + "#" * 30 + "]" in proc.stderr
    proc = run_proc(["dlq", "purge", "--redis-url", redis_url, "-q", "q", "--yes"])  # not a tty: no bar
    assert proc.returncode == 0 and proc.stderr == "" and "purged 1000" in proc.stdout


# --- failures: exit 1, one line, the URL without its password ---


def test_redis_down_exits_1_naming_the_url_without_password() -> None:
    port = free_port()
    url = f"redis://user:hunter2@127.0.0.1:{port}/0"
    for argv in (["stats", "-q", "q"], ["enqueue", "-q", "q", "x"], ["dlq", "list", "-q", "q"]):
        proc = run_proc([*argv, "--redis-url", url])
        assert proc.returncode == 1
        err = proc.stderr.strip()
        assert "\n" not in err and "Traceback" not in err
        assert f"cannot reach Redis at redis://user:***@127.0.0.1:{port}/0" in err
        assert "hunter2" not in err


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    # requirepass for the default user, plus an ACL user with its own password.
    with RedisServer(
        password="defpass", extra_args=["--user", "alice", "on", ">alicepw", "~*", "&*", "+@all"]
    ) as s:
        yield s


def test_credentials_from_url_and_env(auth_server: RedisServer) -> None:
    bare = f"redis://127.0.0.1:{auth_server.port}/0"
    proc = run_proc(
        ["enqueue", "-q", "auth", "x", "--redis-url", f"redis://alice:alicepw@127.0.0.1:{auth_server.port}/0"]
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_proc(
        ["enqueue", "-q", "auth", "y", "--redis-url", bare],
        env={"TIDE_REDIS_USERNAME": "alice", "TIDE_REDIS_PASSWORD": "alicepw"},
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_proc(
        ["stats", "-q", "auth", "--json"], env={"TIDE_REDIS_URL": bare, "TIDE_REDIS_PASSWORD": "defpass"}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ready"] == 2

    proc = run_proc(
        ["stats", "-q", "auth", "--redis-url", f"redis://alice:wrong@127.0.0.1:{auth_server.port}/0"]
    )
    assert proc.returncode == 1
    assert "refused the credentials" in proc.stderr and "wrong" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = run_proc(["stats", "-q", "auth", "--redis-url", bare])  # no credentials at all
    assert proc.returncode == 1 and "refused the credentials: it needs a password" in proc.stderr


def test_stats_watch_repeats_until_interrupted(redis_url: str, r: redis.Redis) -> None:
    import signal
    import subprocess
    import sys

    from tests.ops.cli_helpers import SCRIPT

    r.lpush("w", b"a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SCRIPT,
            "stats",
            "-q",
            "w",
            "--json",
            "--watch",
            "0.05",
            "--redis-url",
            redis_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    r.lpush("w", b"b")
    deadline = 50
    while deadline and json.loads(proc.stdout.readline())["ready"] != 2:
        deadline -= 1
    assert first["ready"] == 1 and deadline > 0
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 0
