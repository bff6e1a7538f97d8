"""Messages and handlers from an attack report (issue 8), each against real `tide worker` processes.

Deep nesting and out-of-range numbers must dead-letter a message (never crash every worker), a handler
that never returns must not silently starve the worker, BaseException and returned awaitables must not
strand or fake-ack a message, and a handler that cannot be imported is one line and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.records import DeadLetter, Heartbeat

from tests.ops.cli_helpers import SCRIPT

from .conftest import WorkerProcess, wait_until

K = QueueKeys("q")
SK = StreamKeys("s", "g")
H = "tests.worker.hostile_handlers"
DEEP = b'{"v":1,"id":"deep","body":' + b"[" * 5000 + b"]" * 5000 + b"}"  # ~10 KB


def logged(r: Any) -> list[str]:
    return [x.decode() for x in r.lrange("log", 0, -1)]


def dead_letters(r: Any) -> list[DeadLetter]:
    return [DeadLetter.decode(x) for x in r.lrange(K.dead, 0, -1)]


def processing(r: Any) -> int:
    return sum(r.llen(k) for k in r.scan_iter(match="{q}:processing:*"))


def json_logs(w: WorkerProcess) -> list[dict[str, Any]]:
    out = []
    for line in w.logs().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"not_json": line})
    return out


def worker_args(handler: str, *extra: str, source: str = "queue") -> list[str]:
    where = ["--queue", "q"] if source == "queue" else ["--stream", "s", "--group", "g"]
    return [*where, "--handler", f"{H}:{handler}", "--block-timeout", "0.5", *extra]


# ---- 3: a message nested too deep for the JSON decoder ---------------------------------------------


@pytest.mark.parametrize("source", ["queue", "stream"])
def test_deeply_nested_message_is_dead_lettered_and_the_queue_moves_on(r, spawn, source):
    ok = [encode_envelope(f"ok{i}") for i in range(3)]
    if source == "queue":
        for raw in [ok[0], DEEP, ok[1], ok[2]]:
            r.lpush("q", raw)
    else:
        for raw in [ok[0], DEEP, ok[1], ok[2]]:
            r.xadd("s", {"data": raw})
    w = spawn(*worker_args("base_exceptions", source=source), env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: logged(r) == ["ok0", "ok1", "ok2"], what="the messages behind the deep one")
    if source == "queue":
        wait_until(lambda: r.llen(K.dead) == 1 and processing(r) == 0, what="dead letter, acks")
        [dl] = dead_letters(r)
        assert dl.raw == DEEP and dl.reason == "malformed"
        assert dl.message_id == "sha1:" + hashlib.sha1(DEEP).hexdigest()
        assert r.llen("q") == 0
    else:
        wait_until(lambda: r.xlen(SK.dead) == 1, what="the stream dead letter")
        wait_until(lambda: r.xpending("s", "g")["pending"] == 0, what="nothing left pending")
        [(_, fields)] = r.xrange(SK.dead)
        assert fields[b"message"] == DEEP and fields[b"reason"] == b"malformed"
        dl = DeadLetter.for_raw(DEEP, reason="malformed", error=fields[b"error"].decode(), queue="s")
    assert "nested too deep" in dl.error
    assert w.proc.poll() is None, w.logs()  # the worker is still up
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0


def _tool(redis_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """One `tide` ops command as its own process."""
    cmd = [sys.executable, "-c", SCRIPT, *argv, "--redis-url", redis_url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_tools_read_deeply_nested_records_without_crashing(r, redis_url, spawn):
    """`tide dlq list/requeue` and `tide stats` over a foreign, deeply nested dead letter and heartbeat."""
    r.lpush(K.dead, b"[" * 5000 + b"]" * 5000)  # not a record at all
    good = DeadLetter.for_raw(DEEP, reason="malformed", error="e", queue="q")
    r.lpush(K.dead, good.encode())
    r.zadd(K.workers, {"w1": 1})
    r.set(K.worker("w1"), b"{" + b'"a":[' * 3000 + b"]" * 3000 + b"}")
    runs = [
        ["dlq", "list", "--queue", "q"],
        ["dlq", "list", "--queue", "q", "--json"],
        ["stats", "--queue", "q"],
        ["dlq", "requeue", "--queue", "q"],
    ]
    for argv in runs:
        p = _tool(redis_url, *argv)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (argv, p.stderr[-2000:])
        if argv[:2] == ["dlq", "list"]:
            assert "unreadable" in p.stdout
    assert r.lrange("q", 0, -1) == [DEEP]  # the record's message came back as it was
    with pytest.raises(ValueError):
        Heartbeat.decode(r.get(K.worker("w1")))


# ---- 15a: out-of-range numbers, and true words for exhausted attempts --------------------------------


def test_out_of_range_numbers_are_malformed_with_a_true_reason(r, spawn):
    bad = {
        "attempts": b'{"v":1,"id":"a","ts":1.0,"a":100000000000000000000000000000,"body":1}',
        "huge ts": b'{"v":1,"id":"t","ts":1' + b"0" * 400 + b',"a":0,"body":1}',
        "infinite ts": b'{"v":1,"id":"i","ts":1e400,"a":0,"body":1}',
        "nan ts": b'{"v":1,"id":"n","ts":NaN,"a":0,"body":1}',
        "5000 digits": b'{"v":1,"id":"d","ts":1.0,"a":0,"body":' + b"7" * 5000 + b"}",
    }
    used_up = encode_envelope("used up", message_id="u", attempts=7)  # past --max-attempts 5
    for raw in [*bad.values(), used_up, encode_envelope("ok")]:
        r.lpush("q", raw)
    w = spawn(*worker_args("base_exceptions"), env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: logged(r) == ["ok"] and r.llen(K.dead) == 6, what="all settled")
    by_raw = {dl.raw: dl for dl in dead_letters(r)}
    for what, raw in bad.items():
        dl = by_raw[raw]
        assert dl.reason == "malformed" and dl.error.startswith("out of range"), (what, dl)
    dl = by_raw[used_up]
    assert dl.reason == "failed" and "delivered" not in dl.error, dl
    assert dl.error == "its envelope counts 7 attempts already, max attempts 5"
    assert w.proc.poll() is None, w.logs()


# ---- 4: sync handlers that never return --------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_stuck_threads_are_replaced_then_the_worker_fails_liveness_and_gives_messages_back(r, spawn):
    push = lambda bodies: [r.lpush("q", encode_envelope(b)) for b in bodies]  # noqa: E731
    # Concurrency 1: 1 thread + up to 4 replacements; a stuck message fails at once (max attempts 1).
    args = worker_args(
        "hang_some", "--handler-timeout", "0.3", "--max-attempts", "1", "--shutdown-grace", "2"
    )
    w = spawn(*args, env={"TIDE_TEST_LOG": "log", "TIDE_METRICS_PORT": "0"})
    port = wait_until(
        lambda: next((e["metrics_port"] for e in json_logs(w) if e.get("msg") == "worker starting"), None),
        what="the metrics port",
    )
    push(["hang1", "hang2", "ok1", "ok2", "ok3"])
    # More stuck threads than the old fixed pool of 2 x concurrency had: the rest still runs.
    wait_until(lambda: logged(r) == ["ok1", "ok2", "ok3"], what="messages behind two stuck handlers")
    assert _get(port, "/healthz")[0] == 200
    assert 'tide_handler_threads_abandoned{queue="q"} 2.0' in _get(port, "/metrics")[1]
    # Past the bound (4 stuck beyond the pool's 1 thread) nothing can run: say so, to be restarted.
    push(["hang3", "hang4", "hang5", "late1", "late2"])
    wait_until(lambda: _get(port, "/healthz")[0] == 503, what="liveness failing")
    assert 'tide_handler_threads_abandoned{queue="q"} 5.0' in _get(port, "/metrics")[1]
    assert any(e.get("level") == "error" and "stuck" in e.get("msg", "") for e in json_logs(w)), w.logs()
    assert [d.reason for d in dead_letters(r)] == ["timeout"] * 5
    assert logged(r) == ["ok1", "ok2", "ok3"]
    # Restarted (SIGTERM, as the kubelet does): the messages it could not run go back to the queue.
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.logs()
    assert r.llen("q") == 2 and processing(r) == 0
    w2 = spawn(*worker_args("hang_some", "--handler-timeout", "5"), env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: logged(r)[3:] == ["late1", "late2"], what="the rest, by a healthy worker")
    w2.signal(signal.SIGTERM)
    assert w2.wait(15) == 0


def test_killed_worker_with_stuck_threads_has_its_messages_reaped(r, spawn):
    args = worker_args("hang_some", "--handler-timeout", "0.3", "--max-attempts", "1", "--batch-size", "4")
    w = spawn(*args, env={"TIDE_TEST_LOG": "log", "TIDE_HEARTBEAT_TTL": "1"})
    for b in ["hang1", "hang2", "hang3", "hang4", "hang5", "late1", "late2"]:
        r.lpush("q", encode_envelope(b))
    wait_until(lambda: r.llen(K.dead) == 5, what="five stuck handlers")
    w.proc.kill()
    w.wait(10)
    w2 = spawn(*worker_args("hang_some", "--reaper-interval", "0.3"), env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: sorted(logged(r)) == ["late1", "late2"], timeout=30, what="reaped and run")
    w2.signal(signal.SIGTERM)
    assert w2.wait(15) == 0


# ---- 7: KeyboardInterrupt and SystemExit raised by a handler ------------------------------------------

MODES = {
    "thread": ("base_exceptions", ["--handler-timeout", "5"]),
    "inline": ("base_exceptions", ["--handler-timeout", "0"]),
    "async": ("async_base_exceptions", []),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_keyboard_interrupt_and_system_exit_fail_the_message_like_any_exception(r, spawn, mode):
    handler, extra = MODES[mode]
    for b in ["kbd", "exit", "ok"]:
        r.lpush("q", encode_envelope(b))
    args = worker_args(handler, *extra, "--max-attempts", "2", "--backoff-base", "0")
    w = spawn(*args, env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: r.llen(K.dead) == 2 and logged(r) == ["ok"], what="retried, then dead-lettered")
    wait_until(lambda: processing(r) == 0 and r.llen("q") == 0, what="nothing stranded")
    by_body = {json.loads(dl.message)["body"]: dl for dl in dead_letters(r)}
    assert by_body["kbd"].reason == "failed" and by_body["kbd"].error == "KeyboardInterrupt()"
    assert by_body["exit"].reason == "failed" and by_body["exit"].error == "SystemExit(3)"
    assert by_body["kbd"].attempts == 2 and "KeyboardInterrupt" in by_body["kbd"].traceback
    assert w.proc.poll() is None, w.logs()  # still serving
    lines = json_logs(w)
    assert not [e for e in lines if "not_json" in e], w.logs()  # every line JSON, no stray traceback
    retried = [e for e in lines if e.get("msg") == "handler failed: retrying"]
    assert sorted(e["error"] for e in retried) == ["KeyboardInterrupt()", "SystemExit(3)"]
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0


# ---- 8: a sync handler that returns an awaitable -----------------------------------------------------


@pytest.mark.parametrize("handler", ["returns_coroutine", "returns_awaitable"])
@pytest.mark.parametrize("timeout", ["5", "0"])  # a thread per chunk / inline on the event loop
def test_awaitable_returned_by_a_sync_handler_is_awaited_before_the_ack(r, spawn, handler, timeout):
    bodies = [f"m{i}" for i in range(5)]
    for b in bodies:
        r.lpush("q", encode_envelope(b))
    w = spawn(*worker_args(handler, "--handler-timeout", timeout), env={"TIDE_TEST_LOG": "log"})
    wait_until(lambda: r.hget(K.stats, "processed") == b"5", what="all acked")
    assert logged(r) == bodies  # the work was done, not just acked
    assert "never awaited" not in w.logs()
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0


def test_coroutine_past_the_timeout_is_cancelled_and_failed(r, spawn, tmp_path: Path):
    (tmp_path / "slowcoro.py").write_text(
        "import asyncio\n"
        "async def _slow(msg):\n"
        "    await asyncio.sleep(30)\n"
        "def handle(msg):\n"
        "    return _slow(msg)\n"
    )
    r.lpush("q", encode_envelope("slow"))
    args = ["--queue", "q", "--handler", "slowcoro:handle", "--handler-timeout", "0.3", "--max-attempts", "1"]
    w = spawn(*args, env={"PYTHONPATH": f"{tmp_path}:{_pythonpath()}"})
    wait_until(lambda: r.llen(K.dead) == 1, what="timed out")
    assert dead_letters(r)[0].reason == "timeout"
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0


# ---- 14: a handler module that cannot be imported -------------------------------------------------------


def _pythonpath() -> str:
    import os

    return os.environ["PYTHONPATH"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def handle(msg):\n    return (\n", "syntax error"),
        ("raise RuntimeError('no config\\nat all')\n", "RuntimeError: no config at all"),
        ("import sys\nsys.exit(5)\n", "SystemExit: 5"),
    ],
)
def test_handler_that_fails_at_import_is_one_line_and_exit_2(spawn, tmp_path: Path, source, expected):
    (tmp_path / "broken_handler.py").write_text(source)
    w = spawn(
        "--queue",
        "q",
        "--handler",
        "broken_handler:handle",
        env={"PYTHONPATH": f"{tmp_path}:{_pythonpath()}"},
    )
    assert w.wait(30) == 2
    lines = w.logs().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["msg"] == "cannot load the handler" and expected in entry["error"], entry


def test_tools_leave_corrupt_records_in_place_and_refuse_deep_json(r, redis_url, spawn):
    """A dead letter whose base64 message is corrupt, or whose encoding is unknown, and a stream dead
    letter with a NaN time: listed as unreadable, never requeued, and no tool crashes; ``tide enqueue
    --json`` of JSON nested past the decoder is refused in one line."""
    corrupt = DeadLetter.for_raw(b"\xff\xfe", reason="malformed", error="e", queue="q")
    corrupt.message = "!!! not base64 !!!"
    unknown = DeadLetter.for_raw(b"x", reason="malformed", error="e", queue="q")
    unknown.encoding = "rot13"
    r.lpush(K.dead, corrupt.encode(), unknown.encode())
    r.xadd("{s}:dead", {"message": "m", "encoding": "utf-8", "reason": "failed", "time": "nan"})
    runs = [
        ["dlq", "list", "--queue", "q"],
        ["dlq", "requeue", "--queue", "q"],
        ["dlq", "list", "--stream", "s"],
    ]
    for argv in runs:
        p = _tool(redis_url, *argv)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (argv, p.stderr[-2000:])
        if argv[1] == "list":
            assert "unreadable" in p.stdout, p.stdout
    assert r.llen(K.dead) == 2 and r.llen("q") == 0  # left in place: we do not know what they held
    deep = "[" * 20_000 + "]" * 20_000  # past the decoder's recursion limit, within one argument's size limit
    p = _tool(redis_url, "enqueue", "--queue", "q", "--json", deep)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "nested too deep" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert r.llen("q") == 0
