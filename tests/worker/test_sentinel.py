"""The worker, producer and CLI through Redis Sentinel: real sentinels, a real master and replica."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from tide_local.redisproc import RedisSentinelSet
from tide_worker.config import WorkerConfig
from tide_worker.connection import RedisSettings, parse_sentinel_url, redact, sync_client
from tide_worker.envelope import encode_envelope
from tide_worker.producer import Producer
from tide_worker.runtime import EXIT_REFUSED

from tests.conftest import SENTINEL_DATA_PASSWORD, SENTINEL_PASSWORD

from .conftest import InprocWorker, wait_until


def test_parse_sentinel_url() -> None:
    s = parse_sentinel_url("rediss+sentinel://:p%40ss@a:1,b:2,[::1]:3/orders/4")
    assert s.addresses == [("a", 1), ("b", 2), ("::1", 3)]
    assert (s.master_name, s.db, s.password, s.username, s.tls) == ("orders", 4, "p@ss", None, True)
    s = parse_sentinel_url("redis+sentinel://sentinel/mymaster")
    assert (s.addresses, s.db, s.password, s.tls) == ([("sentinel", 26379)], 0, None, False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://:pw@a:1", "master name"),
        ("redis+sentinel://:pw@a:1/", "master name"),
        ("redis+sentinel://:pw@a:1/m/x", "db a number"),
        ("redis+sentinel://:pw@a:1/m/0/extra", "db a number"),
        ("redis+sentinel://:pw@a:99999/m", "not host:port"),
        ("redis+sentinel://:pw@a:1,,b:2/m", "not host:port"),
    ],
)
def test_bad_sentinel_urls_say_what_to_fix_and_hide_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        parse_sentinel_url(url)
    assert "pw" not in str(info.value)


def test_redact_covers_sentinel_urls() -> None:
    text = "connect rediss+sentinel://user:p@ss@a:1,b:2/m/0 failed; redis+sentinel://:x@h:1/m"
    out = redact(text)
    assert "p@ss" not in out and ":x@" not in out
    assert "rediss+sentinel://***@a:1,b:2/m/0" in out and "redis+sentinel://***@h:1/m" in out


def _env() -> dict[str, str]:
    return {"TIDE_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD, "TIDE_TEST_LOG": "log"}


def test_worker_producer_and_cli_through_sentinel(redis_sentinel: RedisSentinelSet, spawn) -> None:
    url = redis_sentinel.url(db=0)
    settings = RedisSettings(url=url, sentinel_password=SENTINEL_PASSWORD)
    Producer(settings=settings).enqueue_many("q", ["a", "b", "c"])
    direct = redis_sentinel.master().client()
    assert direct.llen("q") == 3  # the producer wrote to the master the sentinels named
    out = subprocess.run(
        [sys.executable, "-m", "tide_worker.cli", "stats", "-q", "q", "--redis-url", url, "--json"],
        env={**__import__("os").environ, "TIDE_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert SENTINEL_DATA_PASSWORD not in out.stdout + out.stderr
    w = spawn("--queue", "q", "--handler", "tests.worker.handlers:record", url=url, env=_env())
    wait_until(lambda: direct.llen("log") == 3, timeout=30, what="three messages through Sentinel")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    assert SENTINEL_DATA_PASSWORD not in w.logs() and SENTINEL_PASSWORD not in w.logs()
    direct.close()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong master name", "No master found for 'nosuchmaster'"),
        ("wrong sentinel password", "AuthenticationError"),
        ("no sentinel password", "AuthenticationError"),
        ("no sentinel reachable", "Error 111 connecting to 127.0.0.1:2"),
        ("wrong data password", "refused the credentials"),
    ],
)
def test_sentinel_misconfiguration_exits_with_one_line(
    redis_sentinel: RedisSentinelSet, spawn, case: str, expect: str
) -> None:
    env = {"TIDE_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    url = redis_sentinel.url()
    if case == "wrong master name":
        url = url.replace("/mymaster/", "/nosuchmaster/")
    elif case == "wrong sentinel password":
        env["TIDE_REDIS_SENTINEL_PASSWORD"] = "wrong-sentinel-pw"
    elif case == "no sentinel password":
        env = {}
    elif case == "no sentinel reachable":
        url = f"redis+sentinel://:{SENTINEL_DATA_PASSWORD}@127.0.0.1:1,127.0.0.1:2/mymaster/0"
    elif case == "wrong data password":
        url = url.replace(SENTINEL_DATA_PASSWORD, "wrong-data-pw")
    w = spawn("--queue", "q", "--handler", "tests.worker.handlers:noop", url=url, env=env)
    assert w.wait(30) == EXIT_REFUSED, w.logs()
    errors = [e for e in map(json.loads, w.logs().splitlines()) if e["level"] == "error"]
    assert len(errors) == 1 and expect in errors[0]["msg"], errors
    if case != "wrong data password":
        assert "Sentinel gave no master" in errors[0]["msg"]
        assert "client.Redis(" not in errors[0]["msg"]  # sentinels named by host:port, not repr
    assert "reconnecting" not in w.logs()
    assert SENTINEL_DATA_PASSWORD not in w.logs() and SENTINEL_PASSWORD not in w.logs()


def test_worker_carries_on_after_a_failover(redis_sentinel_private: RedisSentinelSet) -> None:
    s = redis_sentinel_private
    url = s.url()
    settings = RedisSettings(url=url, sentinel_password=SENTINEL_PASSWORD)
    producer = sync_client(settings)
    seen: list[str] = []
    lock = threading.Lock()

    def handle(msg) -> None:
        with lock:
            seen.append(msg.body)

    bodies = [f"m{i}" for i in range(400)]
    for b in bodies[:200]:
        producer.lpush("q", encode_envelope(b))
    cfg = WorkerConfig(
        handler="x", queue="q", redis_url=url, metrics_port=-1, block_timeout=0.5, batch_size=10,
        reaper_interval=0.5,
    )  # fmt: skip
    import os

    os.environ["TIDE_REDIS_SENTINEL_PASSWORD"] = SENTINEL_PASSWORD
    try:
        w = InprocWorker(cfg, handle).start()
    finally:
        del os.environ["TIDE_REDIS_SENTINEL_PASSWORD"]
    wait_until(lambda: len(set(seen)) == 200, timeout=30, what="the first half before the failover")
    assert producer.wait(1, 5000) == 1  # replicated: what the master held survives its death
    old = s.kill_master()
    started = time.monotonic()
    # In the gap the sentinels know the name but name no healthy master: an outage (MasterDown, a plain
    # ConnectionError the worker waits out), never "no such master" (which makes a starting worker exit).
    seen_errors: set[str] = set()
    while time.monotonic() - started < 30:
        probe = sync_client(settings)
        try:
            probe.ping()
            break
        except redis.ConnectionError as exc:
            seen_errors.add(type(exc).__name__)
        finally:
            probe.close()
        time.sleep(0.05)
    assert "MasterNotFoundError" not in seen_errors, seen_errors
    s.wait_failover(old.port)
    gap = time.monotonic() - started
    for b in bodies[200:]:
        producer.lpush("q", encode_envelope(b))  # the producer's own reconnect finds the new master
    wait_until(lambda: set(seen) == set(bodies), timeout=60, what="the second half on the new master")
    assert w.worker.is_ready() and w.thread.is_alive(), "the worker must reconnect, not exit"
    assert w.stop() == 0
    print(f"failover gap {gap:.1f}s, errors {seen_errors}, duplicates {len(seen) - len(set(seen))}")
    producer.close()
    assert isinstance(producer, redis.Redis)


def test_cli_redacts_sentinel_urls() -> None:
    from tide_worker.ops_cli import redact as cli_redact

    out = cli_redact("redis+sentinel://:p@ss@a:1,b:2/m/0")
    assert "p@ss" not in out and out.endswith("a:1,b:2/m/0")


def _replica(s: RedisSentinelSet):
    master = s.master()
    return next(x for x in s.servers if x is not master)


def test_durable_enqueue_returns_once_the_replica_has_it(redis_sentinel: RedisSentinelSet) -> None:
    import asyncio

    from tide_worker.producer import AsyncProducer, NotReplicated

    settings = RedisSettings(url=redis_sentinel.url(), sentinel_password=SENTINEL_PASSWORD)
    replica = _replica(redis_sentinel).client()
    with Producer(settings=settings, wait_replicas=1, wait_timeout=5) as p:
        p.enqueue("q", "one")
        assert replica.llen("q") == 1  # WAIT returned: the replica applied the push
        p.enqueue_many("q", [f"m{i}" for i in range(2500)], chunk=1000)
        assert replica.llen("q") == 2501
        p.xadd_many("s", ["a", "b"])
        assert replica.xlen("s") == 2
    # More replicas than exist: the push lands on the master, the caller is told it is not durable.
    with Producer(settings=settings, wait_replicas=2, wait_timeout=0.2) as p:
        with pytest.raises(NotReplicated, match="only 1 of 2 replicas") as info:
            p.enqueue("q", "two", id="id-two")
        assert info.value.ids == ["id-two"]
    assert redis_sentinel.master().client().llen("q") == 2502

    async def durable_async() -> None:
        ap = AsyncProducer(settings=settings, wait_replicas=1, wait_timeout=5)
        await ap.enqueue("aq", "x")
        await ap.enqueue_many("aq", ["y", "z"])
        assert replica.llen("aq") == 3
        await ap.aclose()

    asyncio.run(durable_async())
    with pytest.raises(ValueError, match="wait_replicas"):
        Producer(settings=settings, wait_replicas=-1)
    replica.close()


def test_cli_durable_enqueue(redis_sentinel: RedisSentinelSet) -> None:
    import os

    env = {**os.environ, "TIDE_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    base = [
        sys.executable,
        "-m",
        "tide_worker.cli",
        "enqueue",
        "-q",
        "q",
        "--redis-url",
        redis_sentinel.url(),
    ]
    ok = subprocess.run([*base, "--wait-replicas", "1", "a", "b"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert _replica(redis_sentinel).client().llen("q") == 2
    short = subprocess.run(
        [*base, "--wait-replicas", "2", "--wait-timeout", "0.2", "c"], env=env, capture_output=True, text=True
    )
    assert short.returncode == 1
    assert short.stderr.count("\n") == 1 and "not durable: only 1 of 2 replicas" in short.stderr
    bad = subprocess.run([*base, "--wait-replicas", "-1", "c"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--wait-replicas" in bad.stderr


def test_rediss_sentinel_tls_to_the_sentinels_and_the_master_across_a_failover(
    redis_sentinel_tls: RedisSentinelSet, tls_files, spawn
) -> None:
    """rediss+sentinel://: the producer and a worker reach TLS-only sentinels and a TLS-only master with the
    CA from TIDE_REDIS_CA_FILE; the master SIGKILLed, both carry on on the promoted replica (over TLS)."""
    s = redis_sentinel_tls
    url = s.url()
    assert url.startswith("rediss+sentinel://")
    ca = str(tls_files.ca_cert)
    settings = RedisSettings(url=url, sentinel_password=SENTINEL_PASSWORD, ca_file=ca)
    with pytest.raises(redis.ConnectionError):  # the same servers without TLS: not a fallback to plain
        sync_client(
            RedisSettings(url=s.url(scheme="redis+sentinel"), sentinel_password=SENTINEL_PASSWORD)
        ).ping()
    with Producer(settings=settings) as p:
        p.enqueue_many("tq", ["a", "b", "c"])
    w = spawn(
        "--queue", "tq", "--handler", "tests.worker.handlers:record", "--block-timeout", "0.5",
        url=url, env={**_env(), "TIDE_REDIS_CA_FILE": ca},
    )  # fmt: skip

    def logged() -> int:
        with s.master().client() as c:
            return int(c.llen("log"))

    wait_until(lambda: logged() == 3, timeout=30, what="three messages through TLS Sentinel")
    old = s.kill_master()
    s.wait_failover(old.port)
    with Producer(settings=settings) as p:
        p.enqueue_many("tq", ["d", "e"])
    wait_until(lambda: logged() == 5, timeout=60, what="the worker carries on on the new master, over TLS")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()
    assert SENTINEL_PASSWORD not in w.logs()
