"""Stats and dead letters against what the real `tide worker` writes (not hand-seeded keys)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from tide_worker import ops
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer

from tests import waiting

TIDE = str(Path(sys.executable).parent / "tide")


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    waiting.wait_until(cond, timeout, 0.05, what)


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        cmd = [
            TIDE, "worker", "--redis-url", redis_url, "--handler", "tests.ops.handlers:fail_while_flagged",
            "--max-attempts", "1", "--metrics-port", "-1", "--block-timeout", "0.5", "--heartbeat-ttl", "3",
            "--log-level", "WARNING", *args,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def test_queue_stats_and_dlq_round_trip_with_a_real_worker(
    r: redis.Redis, tmp_path: Path, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    flag = tmp_path / "bug"
    flag.touch()
    p = Producer(r)
    p.enqueue_many("orders", [{"n": 1}, {"n": 2}])
    bad = p.enqueue("orders", {"n": 3, "flag": str(flag)})
    start_worker("--queue", "orders", "--worker-id", "w-ops")

    def settled() -> bool:
        s = ops.queue_stats(r, "orders")
        return s["counters"].get("processed") == 2 and s["dead"] == 1 and s["workers_alive"] == 1

    wait_until(settled, "two processed, one dead letter, one live worker")
    s = ops.queue_stats(r, "orders")
    assert (s["ready"], s["in_flight"], s["backlog"]) == (0, 0, 0)
    [w] = s["workers"]
    assert w["id"] == "w-ops" and w["alive"] and w["registered"] and w["pid"] > 0

    [dl] = ops.dlq_list(r, "orders")
    assert dl.message_id == bad and dl.reason == "failed" and "boom" in dl.error and dl.attempts >= 1
    assert dl.worker == "w-ops" and dl.queue == "orders"

    flag.unlink()  # the bug is fixed: requeue, and the worker processes it this time
    assert ops.dlq_requeue(r, "orders") == 1
    wait_until(lambda: ops.queue_stats(r, "orders")["counters"].get("processed") == 3, "the requeued message")
    assert r.llen(QueueKeys("orders").dead) == 0


def test_stream_stats_and_dlq_round_trip_with_a_real_worker(
    r: redis.Redis, tmp_path: Path, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    flag = tmp_path / "bug"
    flag.touch()
    p = Producer(r)
    p.xadd_many("events", [{"n": 1}, {"n": 2}])
    bad = p.xadd("events", {"n": 3, "flag": str(flag)}, message_id="ev-bad")
    start_worker("--stream", "events", "--group", "g")

    def settled() -> bool:
        s = ops.stream_stats(r, "events", "g")
        return s["group_exists"] and s["dead"] == 1 and s["lag"] == 0 and s["pending"] == 0

    wait_until(settled, "the group drained with one dead letter")
    s = ops.stream_stats(r, "events", "g")
    assert s["workers_alive"] == 1 and len(s["consumers"]) >= 1 and s["backlog"] == 0
    [entry] = ops.stream_dlq_list(r, "events")
    assert entry.letter.message_id == "ev-bad" and "boom" in entry.letter.error and bad

    flag.unlink()
    assert ops.stream_dlq_requeue(r, "events") == 1
    wait_until(
        lambda: ops.stream_stats(r, "events", "g")["counters"].get("processed") == 3, "the requeued entry"
    )
    s = ops.stream_stats(r, "events", "g")
    assert (s["lag"], s["pending"], s["dead"]) == (0, 0, 0)


def test_the_tide_entry_point_has_the_ops_commands(redis_url: str, r: redis.Redis) -> None:
    env = {**os.environ, "TIDE_REDIS_URL": redis_url}
    out = subprocess.run(
        [TIDE, "enqueue", "-q", "entry", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [TIDE, "stats", "-q", "entry", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and '"ready": 1' in out.stdout, out.stderr
    out = subprocess.run(
        [TIDE, "dlq", "purge", "-q", "entry"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "--yes" in out.stderr
