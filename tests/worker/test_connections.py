"""Redis restarts under a running worker, Redis Cluster and TLS."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster
from tide_local.redisproc import RedisServer
from tide_worker.config import WorkerConfig
from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter
from tide_worker.runtime import EXIT_REFUSED

from .conftest import InprocWorker, push, wait_until


def test_redis_restart_under_a_running_worker_loses_nothing(redis_aof):
    r = redis_aof.client()
    seen: list[str] = []
    lock = threading.Lock()

    def handle(msg):
        time.sleep(0.005)
        with lock:
            seen.append(msg.body)

    bodies = [f"m{i}" for i in range(300)]
    push(r, "q", bodies[:200])
    cfg = WorkerConfig(
        handler="x", queue="q", redis_url=redis_aof.url, batch_size=5, metrics_port=-1, block_timeout=0.5
    )
    w = InprocWorker(cfg, handle).start()
    wait_until(lambda: len(seen) >= 20)
    redis_aof.stop()  # SIGTERM: the append-only file keeps everything acknowledged so far
    wait_until(lambda: not w.worker.connected, timeout=20, what="worker notices the outage")
    assert not w.worker.is_ready()
    time.sleep(1.0)
    redis_aof.start()
    r = redis_aof.client()
    push(r, "q", bodies[200:])
    wait_until(lambda: set(seen) == set(bodies), timeout=60, what="everything processed after the restart")
    assert w.worker.is_ready() and w.thread.is_alive()
    key = QueueKeys("q").processing(w.worker.cfg.worker_id)
    wait_until(lambda: r.llen(key) == 0 and r.llen("q") == 0)
    # Duplicates only for messages whose ack was cut by the outage: a handful at most.
    assert len(seen) - len(set(seen)) <= 10
    assert w.stop() == 0


def test_cluster_queue_with_retries_dead_letters_and_reaper(redis_cluster):
    rc = SyncCluster.from_url(redis_cluster.url)
    try:
        q = "{orders}:high"  # a name with its own hash tag: every derived key stays in its slot
        keys = QueueKeys(q)
        for i in range(30):
            rc.lpush(q, encode_envelope(f"m{i}"))
        rc.lpush(keys.processing("dead-worker"), encode_envelope("orphaned"))  # a dead worker's list
        seen: list[str] = []

        def handle(msg):
            if msg.body == "m7":
                raise RuntimeError("always")
            seen.append(msg.body)

        cfg = WorkerConfig(
            handler="x", queue=q, redis_url=redis_cluster.url, cluster=True, batch_size=8, metrics_port=-1,
            max_attempts=2, backoff_base=0.01, promote_interval=0.05, reaper_interval=0.2, block_timeout=0.5,
        )  # fmt: skip
        w = InprocWorker(cfg, handle).start()
        wait_until(lambda: len(seen) == 30, timeout=30)
        wait_until(lambda: rc.llen(keys.dead) == 1)
        assert DeadLetter.decode(rc.lindex(keys.dead, 0)).reason == "failed"
        assert sorted(seen) == sorted([f"m{i}" for i in range(30) if i != 7] + ["orphaned"])
        assert w.stop() == 0
    finally:
        rc.close()


def test_cluster_several_queues_in_different_slots(redis_cluster):
    """Each queue's keys stay under its own hash tag: two queues on different slots, one worker."""
    rc = SyncCluster.from_url(redis_cluster.url)
    try:
        queues = ["{alpha}:jobs", "{omega}:jobs"]
        assert rc.keyslot(queues[0]) != rc.keyslot(queues[1])
        for q in queues:
            for i in range(20):
                rc.lpush(q, encode_envelope(f"{q}-m{i}"))
        seen: list[str] = []

        def handle(msg):
            if msg.body.endswith("-m7"):
                raise RuntimeError("always")
            seen.append(msg.body)

        cfg = WorkerConfig(
            handler="x", queues=queues, weights=[2, 1], redis_url=redis_cluster.url, cluster=True,
            batch_size=8, metrics_port=-1, max_attempts=2, backoff_base=0.01, promote_interval=0.05,
            reaper_interval=0.2, block_timeout=0.5,
        )  # fmt: skip
        w = InprocWorker(cfg, handle).start()
        wait_until(lambda: len(seen) == 38, timeout=30)
        for q in queues:
            keys = QueueKeys(q)
            wait_until(lambda keys=keys: rc.llen(keys.dead) == 1)
            assert DeadLetter.decode(rc.lindex(keys.dead, 0)).queue == q
        assert w.stop() == 0
        assert sorted(seen) == sorted(f"{q}-m{i}" for q in queues for i in range(20) if i != 7)
        for q in queues:
            assert rc.zcard(QueueKeys(q).workers) == 0 and rc.llen(q) == 0
    finally:
        rc.close()


def test_cluster_stream(redis_cluster):
    rc = SyncCluster.from_url(redis_cluster.url)
    try:
        for i in range(5):
            rc.xadd("events", {"data": encode_envelope(f"e{i}")})
        seen: list[str] = []
        cfg = WorkerConfig(
            handler="x", stream="events", group="g", redis_url=redis_cluster.url, cluster=True,
            batch_size=10, metrics_port=-1, block_timeout=0.5,
        )  # fmt: skip
        w = InprocWorker(cfg, lambda m: seen.append(m.body)).start()
        wait_until(lambda: seen == [f"e{i}" for i in range(5)], timeout=30)
        wait_until(lambda: rc.xpending("events", "g")["pending"] == 0)
        assert w.stop() == 0
    finally:
        rc.close()


def test_tls_with_ca_file(redis_tls, tls_files, monkeypatch):
    monkeypatch.setenv("TIDE_REDIS_CA_FILE", str(tls_files.ca_cert))
    r = redis_tls.client()
    push(r, "q", ["a", "b"])
    seen: list[str] = []
    assert redis_tls.url.startswith("rediss://")
    cfg = WorkerConfig(handler="x", queue="q", redis_url=redis_tls.url, metrics_port=-1, block_timeout=0.5)
    w = InprocWorker(cfg, lambda m: seen.append(m.body)).start()
    wait_until(lambda: seen == ["a", "b"])
    assert w.stop() == 0


def test_tls_without_the_ca_is_refused_and_never_ready(redis_tls, monkeypatch):
    monkeypatch.delenv("TIDE_REDIS_CA_FILE", raising=False)
    cfg = WorkerConfig(handler="x", queue="q", redis_url=redis_tls.url, metrics_port=-1, block_timeout=0.5)
    w = InprocWorker(cfg, lambda m: None).start()
    time.sleep(1.0)
    assert w.thread.is_alive() and not w.worker.is_ready()  # retrying, not crashed, not ready
    assert w.stop(timeout=15) == 0


def test_cli_entry_point_runs_the_worker(r, spawn):
    """`tide worker` (the real CLI entry) starts, consumes and exits 0 on SIGTERM."""
    import signal
    import subprocess
    import sys

    push(r, "q", ["a"])
    env_url = r.connection_pool.connection_kwargs
    url = f"redis://{env_url['host']}:{env_url['port']}/0"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tide_worker.cli import main; sys.exit(main())", "worker",
         "--redis-url", url, "--queue", "q", "--handler", "tests.worker.handlers:record", "--metrics-port", "-1"],
        env={**__import__("os").environ, "TIDE_TEST_LOG": "log", "TIDE_REDIS_URL": url},
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: r.llen("log") == 1, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert isinstance(r, redis.Redis)


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    # requirepass for the default user; "reader" may only PING and read, so its scripts are refused.
    acl = ["--user", "reader", "on", ">readerpw", "~*", "+ping", "+@read", "+client", "+hello"]
    with RedisServer(password="s3cret", extra_args=acl) as s:
        yield s


@pytest.mark.parametrize(
    ("auth", "expect"),
    [
        (":wrong@", "refused the credentials"),
        ("", "refused the credentials"),  # no password at all: NOAUTH
        ("reader:readerpw@", "lacks a permission"),  # right password, ACL without EVALSHA
    ],
)
def test_refused_credentials_fail_fast_with_a_clear_message(auth_server, spawn, auth, expect):
    url = f"redis://{auth}127.0.0.1:{auth_server.port}/0"
    start = time.monotonic()
    w = spawn("--queue", "q", "--handler", "tests.worker.handlers:noop", url=url)
    # Retrying a refusal as if the connection were lost would keep the worker alive for ever.
    assert w.wait(30) == EXIT_REFUSED, w.logs()
    assert time.monotonic() - start < 20  # process start dominates; the refusal itself takes ms
    errors = [e for e in map(json.loads, w.logs().splitlines()) if e["level"] == "error"]
    assert len(errors) == 1 and expect in errors[0]["msg"], errors  # one line says why
    assert "s3cret" not in w.logs()
    assert "reconnecting" not in w.logs()


def test_the_right_password_works(auth_server, spawn):
    url = f"redis://:s3cret@127.0.0.1:{auth_server.port}/0"
    r = redis.Redis.from_url(url)
    r.flushall()
    push(r, "q", ["a"])
    w = spawn(
        "--queue", "q", "--handler", "tests.worker.handlers:record", url=url, env={"TIDE_TEST_LOG": "log"}
    )
    wait_until(lambda: r.llen("log") == 1, timeout=30)
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    r.close()
