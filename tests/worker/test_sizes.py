"""Sizes past Lua's stack limit: every script of worker-image and operator, and a real worker, given more
than 8,000 values at once (``unpack`` of a table that long fails, and Redis rolls nothing back).

Before the fix, ``fetch_batch.lua`` trimmed the queue before its ``LPUSH ... unpack(items)`` failed:
``--batch-size 10000`` lost 10,000 of 20,000 queued messages per start.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis
import redis.asyncio as aredis
from tide_operator.redis_reader import LIST_BACKLOG_LUA
from tide_worker import ops
from tide_worker.config import WorkerConfig
from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.reaper import ListReaper
from tide_worker.scripts import Scripts
from tide_worker.scripts import source as script_source

from .conftest import wait_until

N = 20_000
BIG = 10_000  # past the ~8,000 values unpack() takes
K = QueueKeys("q")


def fill(r: redis.Redis, key: str, raws: list[bytes]) -> None:
    """LPUSH in slices (oldest first, so the oldest ends at the right, the consumer end)."""
    for i in range(0, len(raws), 5000):
        r.lpush(key, *raws[i : i + 5000])


def bodies(n: int) -> list[bytes]:
    return [encode_envelope(f"m{i:05d}", message_id=f"id{i:05d}") for i in range(n)]


@pytest.mark.parametrize("count", [BIG, N, 3 * N])
@pytest.mark.parametrize("side", ["right", "left"])
def test_fetch_batch_moves_any_count_without_loss(r, count, side):
    raws = bodies(N)
    for i in range(0, N, 5000):  # producers push to the end opposite the workers'
        (r.lpush if side == "right" else r.rpush)("q", *raws[i : i + 5000])
    fetch = r.register_script(script_source("fetch_batch"))
    proc, unstarted = K.processing("w"), K.unstarted("w")
    got = fetch(keys=["q", proc, K.stats, unstarted], args=[count, side, 0, "processed", "0"])
    want = min(count, N)
    assert got == raws[:want]  # consumption order, oldest first
    assert r.lrange(proc, 0, -1) == raws[:want][::-1]  # newest fetched at the left
    assert r.llen("q") == N - want  # nothing trimmed that was not moved
    assert int(r.get(unstarted)) == want


def test_promote_due_moves_any_limit(r):
    raws = bodies(BIG)
    for i in range(0, BIG, 5000):
        r.zadd(K.delayed, {x: 1.0 + i + j for j, x in enumerate(raws[i : i + 5000])})
    promote = r.register_script(script_source("promote_due"))
    assert promote(keys=[K.delayed, "q"], args=[time.time(), BIG + 5, "right"]) == BIG
    assert r.zcard(K.delayed) == 0
    assert r.lrange("q", 0, -1)[::-1] == raws  # due order at the consumer end


def test_stream_ack_acks_any_count(r):
    s = StreamKeys("s", "g")
    r.xgroup_create("s", "g", id="0", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for i in range(BIG):
        pipe.xadd("s", {"data": b"x%d" % i})
    ids = [x.decode() for x in pipe.execute()]
    r.xreadgroup("g", "c", {"s": ">"}, count=BIG)
    ack = r.register_script(script_source("stream_ack"))
    assert ack(keys=["s", s.stats], args=["g", 0, "processed", *ids]) == BIG
    assert r.xpending("s", "g")["pending"] == 0
    assert int(r.hget(s.stats, "processed")) == BIG


def test_requeue_head_exists_many_and_dead_take_any_count(r):
    raws = bodies(BIG)
    proc = K.processing("w")
    fill(r, proc, raws)
    requeue = r.register_script(script_source("requeue_head"))
    assert requeue(keys=[proc, "q"], args=["right", "only", *raws]) == BIG
    assert r.lrange("q", 0, -1)[::-1] == raws and not r.exists(proc)
    exists = r.register_script(script_source("exists_many"))
    r.set(K.dedupe("id00003"), 1)
    flags = exists(keys=[K.dedupe(f"id{i:05d}") for i in range(BIG)], args=[])
    assert len(flags) == BIG and sum(flags) == 1 and flags[3] == 1
    # dead.lua with a count of BIG unstarted: finds the message among them either way
    fill(r, proc, raws)
    r.set(K.unstarted("w"), BIG)
    dead = r.register_script(script_source("dead"))
    assert dead(keys=[proc, K.dead, K.stats, K.unstarted("w")], args=[raws[0], b"{}"]) == 1
    assert int(r.get(K.unstarted("w"))) == BIG - 1 and r.llen(proc) == BIG - 1


def test_reap_takes_any_count(r, redis_url):
    raws = bodies(BIG)
    fill(r, K.processing("dead"), raws)
    r.zadd(K.workers, {"dead": time.time()})

    async def go() -> tuple[int, int]:
        client = aredis.Redis.from_url(redis_url)
        try:
            reaper = ListReaper(
                client, Scripts(client), WorkerConfig(handler="x:y", queue="q", worker_id="me")
            )
            return await reaper.run_once()
        finally:
            await client.aclose()

    assert asyncio.run(go()) == (BIG, 0)
    assert r.lrange("q", 0, -1)[::-1] == raws
    assert r.hlen(K.interrupts) == BIG


def test_dlq_scripts_take_any_batch(r):
    from tests.ops.conftest import seed_dead

    seed_dead(r, "q", BIG)
    assert ops.dlq_requeue(r, "q", batch=BIG) == BIG
    assert r.llen("q") == BIG and r.llen(K.dead) == 0
    # streams
    sk = StreamKeys("s", "g")
    pipe = r.pipeline(transaction=False)
    for i in range(BIG):
        pipe.xadd(sk.dead, {"message": f"m{i}", "reason": "failed", "message_id": f"m{i}"})
    pipe.execute()
    assert ops.stream_dlq_requeue(r, "s", batch=BIG) == BIG
    assert r.xlen("s") == BIG and r.xlen(sk.dead) == 0


def test_operator_backlog_script_takes_any_number_of_workers(r):
    workers = [f"w{i}" for i in range(BIG // 2)]  # two keys each: BIG keys past the registry
    r.zadd(K.workers, {w: 1.0 for w in workers})
    r.lpush(K.processing("w7"), b"a", b"b")
    script = r.register_script(LIST_BACKLOG_LUA)
    keys = ["q", K.workers, K.delayed]
    for w in workers:
        keys += [K.processing(w), K.worker(w)]
    out = script(keys=keys, args=[time.time()])
    assert len(out[1]) == len(workers) and len(out) == 6 + 2 * len(workers)  # 6: the head (here none)
    assert out[5] is None and out[6 + 2 * 7] == 2


@pytest.mark.parametrize("batch", [BIG, 50_000])
def test_worker_with_a_huge_batch_consumes_everything(r, spawn, batch):
    raws = bodies(N)
    fill(r, "q", raws)
    w = spawn(
        "--queue", "q", "--handler", "tests.worker.handlers:noop", "--batch-size", str(batch),
        "--block-timeout", "0.5",
    )  # fmt: skip

    def done() -> bool:
        return int(r.hget(K.stats, "processed") or 0) >= N and r.llen("q") == 0

    wait_until(done, timeout=90, interval=0.2, what=f"{N} processed")
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.logs()
    assert int(r.hget(K.stats, "processed")) == N  # every message once: none lost, none twice
    assert r.llen("q") == 0 and r.llen(K.dead) == 0 and not r.keys(K.prefix + ":processing:*")
