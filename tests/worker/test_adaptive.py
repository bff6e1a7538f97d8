"""The adaptive fetch, the default (``--batch-size auto``): batches from a deep queue, one message at a
time from a shallow one, and no message held by one worker while another could run it.

Real redis-server, real ``tide worker`` processes. See docs/worker.md, "Adaptive fetch".
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.scripts import source as script_source

from .conftest import push, wait_until

K = QueueKeys("q")
FAST = ["--block-timeout", "0.5", "--log-level", "WARNING"]


def evalsha_calls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def who(r) -> Counter[str]:
    return Counter(x.decode().split(" ", 1)[0] for x in r.lrange("log", 0, -1))


@pytest.mark.parametrize(
    ("registered", "queued", "taken"), [(1, 10, 10), (2, 10, 5), (2, 3, 1), (3, 1, 1), (4, 0, 0)]
)
def test_fair_fetch_takes_at_most_an_equal_share_per_registered_worker(r, registered, queued, taken):
    """The script itself, atomically: floor(LLEN / workers), at least one, never above the count."""
    fetch = r.register_script(script_source("fetch_batch"))
    for i in range(registered):
        r.zadd(K.workers, {f"w{i}": 1})
    push(r, "q", [f"m{i}" for i in range(queued)])
    proc = K.processing("w0")
    keys = ["q", proc, K.stats, K.unstarted("w0"), K.workers]
    got = fetch(keys=keys, args=[100, "right", 0, "processed", "0", "fair"])
    assert [decode(x).body for x in got] == [f"m{i}" for i in range(taken)]  # oldest first
    assert r.llen(proc) == taken and r.llen("q") == queued - taken
    assert int(r.get(K.unstarted("w0"))) == taken
    # Without "fair" (a fixed --batch-size) the count is taken as given.
    push(r, "q", ["x"] * 3)
    assert len(fetch(keys=keys, args=[100, "right", 0, "processed", "", ""])) == queued - taken + 3


def test_a_deep_queue_is_fetched_in_batches_across_lanes(r, spawn):
    """Each start still needs its own count (exact poison-pill counting), so batches come from lanes:
    with 16 of them a script call serves many messages (fetch, acks and the count together)."""
    n = 3000
    r.lpush("q", *[encode_envelope(f"m{i}") for i in range(n)][::-1])
    before = evalsha_calls(r)
    w = spawn("--queue", "q", "--handler", "tests.worker.handlers:anoop", "--concurrency", "16", *FAST)
    wait_until(lambda: int(r.hget(K.stats, "processed") or 0) == n, timeout=60, what="all processed")
    calls = evalsha_calls(r) - before
    assert calls < n / 3, calls  # one call per message would be ~n
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.logs()


def test_a_second_worker_gets_work_at_once_from_a_shallow_queue(r, spawn):
    """Worker A alone with 8 slow messages; B starts a moment later and shares them. At a fixed
    --batch-size 8, A takes all 8 in its first fetch and B gets none (the contrast, checked too)."""

    def run(extra: list[str]) -> Counter[str]:
        r.delete("log", K.stats)
        push(r, "q", [f"m{i}" for i in range(8)])
        env = {"TIDE_TEST_LOG": "log", "TIDE_TEST_SLEEP": "0.4"}
        args = ["--queue", "q", "--handler", "tests.worker.handlers:slow_record_who", *extra, *FAST]
        a = spawn(*args, env={**env, "TIDE_WORKER_ID": "a"})
        wait_until(lambda: r.llen("q") < 8, timeout=30, what="A fetched")
        b = spawn(*args, env={**env, "TIDE_WORKER_ID": "b"})
        wait_until(lambda: r.llen("log") == 8, timeout=60, what="all 8 ran")
        for w in (a, b):
            w.signal(signal.SIGTERM)
        for w in (a, b):
            assert w.wait(30) == 0, w.logs()
        assert r.llen("q") == 0 and r.llen(K.processing("a")) == 0 and r.llen(K.processing("b")) == 0
        return who(r)

    fixed = run(["--batch-size", "8"])
    assert fixed == {"a": 8}, fixed  # the prefetch held every message while B sat idle
    adaptive = run([])  # the default
    # A slow handler: each worker holds only what it runs, so B takes the next message once started.
    assert adaptive["b"] >= 2 and adaptive["a"] >= 2, adaptive


def test_no_message_waits_in_a_busy_workers_prefetch_while_another_is_idle(r, spawn):
    """A busy worker (slow handler) does not fetch: the next message goes to the idle one, every time."""
    env = {"TIDE_TEST_LOG": "log", "TIDE_TEST_SLEEP": "0.6"}
    args = ["--queue", "q", "--handler", "tests.worker.handlers:slow_record_who", *FAST]
    workers = {wid: spawn(*args, env={**env, "TIDE_WORKER_ID": wid}) for wid in ("a", "b")}
    wait_until(lambda: r.zcard(K.workers) == 2, timeout=30, what="both registered")

    def holder(body: str) -> str:
        for wid in workers:
            if any(decode(x).body == body for x in r.lrange(K.processing(wid), 0, -1)):
                return wid
        return ""

    for i in range(5):
        push(r, "q", [f"first{i}"])
        busy = wait_until(lambda i=i: holder(f"first{i}"), timeout=30, what="the first taken")
        push(r, "q", [f"second{i}"])  # while one worker runs first{i} and the other is idle
        other = wait_until(lambda i=i: holder(f"second{i}"), timeout=30, what="the second taken")
        assert other != busy, (i, busy)
        wait_until(lambda i=i: r.llen("log") == 2 * (i + 1), timeout=30, what=f"round {i} ran")
    for w in workers.values():
        w.signal(signal.SIGTERM)
    for w in workers.values():
        assert w.wait(30) == 0, w.logs()
