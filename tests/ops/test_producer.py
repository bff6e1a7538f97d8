"""Producer API against a real standalone server: envelope fields, order, sides, delay, bulk, xadd."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from tide_worker.connection import RedisSettings
from tide_worker.envelope import decode
from tide_worker.keys import QueueKeys
from tide_worker.producer import AsyncProducer, Producer


def test_enqueue_writes_an_envelope_the_worker_decodes(r: redis.Redis) -> None:
    p = Producer(r)
    before = time.time()
    mid = p.enqueue("jobs", {"order": 7}, headers={"trace": "t1"})
    raw = r.rpop("jobs")
    assert raw is not None
    env = json.loads(raw)
    assert env["v"] == 1 and env["id"] == mid and env["a"] == 0
    assert before - 1 <= env["ts"] <= time.time() + 1
    msg = decode(raw)
    assert msg.enveloped and msg.id == mid and msg.body == {"order": 7} and msg.attempts == 0
    assert msg.headers == {"trace": "t1"}


def test_explicit_id_and_bytes_body(r: redis.Redis) -> None:
    Producer(r).enqueue("jobs", b"caf\xc3\xa9", id="fixed-1")
    msg = decode(r.rpop("jobs") or b"")
    assert msg.id == "fixed-1" and msg.body == "café"


def test_fifo_for_both_sides(r: redis.Redis) -> None:
    right = Producer(r)  # workers take from the right: we LPUSH
    right.enqueue_many("a", ["1", "2", "3"])
    right.enqueue("a", "4")
    assert [decode(r.rpop("a") or b"").body for _ in range(4)] == ["1", "2", "3", "4"]
    left = Producer(r, side="left")  # workers take from the left: we RPUSH
    left.enqueue_many("b", ["1", "2", "3"])
    left.enqueue("b", "4")
    assert [decode(r.lpop("b") or b"").body for _ in range(4)] == ["1", "2", "3", "4"]
    with pytest.raises(ValueError):
        Producer(r, side="middle")  # type: ignore[arg-type]


def test_enqueue_many_chunks_keep_order_and_ids(r: redis.Redis) -> None:
    ids = Producer(r).enqueue_many("bulk", (f"m{i}" for i in range(2503)), chunk=1000)
    assert len(ids) == 2503 and len(set(ids)) == 2503
    assert r.llen("bulk") == 2503
    # FIFO across chunk boundaries: the right end holds the first message.
    raws = r.lrange("bulk", 0, -1)[::-1]
    msgs = [decode(x) for x in raws]
    assert [m.body for m in msgs] == [f"m{i}" for i in range(2503)]
    assert [m.id for m in msgs] == ids


def test_delay_goes_to_the_retry_set_with_its_due_time(r: redis.Redis) -> None:
    mid = Producer(r).enqueue("jobs", "later", delay=30)
    assert r.llen("jobs") == 0
    [(member, score)] = r.zrange(QueueKeys("jobs").delayed, 0, -1, withscores=True)
    assert decode(member).id == mid
    assert time.time() + 25 < score < time.time() + 35
    with pytest.raises(ValueError):
        Producer(r).enqueue("jobs", "x", delay=-1)


def test_xadd_writes_the_envelope_in_field_data(r: redis.Redis) -> None:
    p = Producer(r)
    entry = p.xadd("events", {"e": 1}, message_id="ev-1")
    [(eid, fields)] = r.xrange("events")
    assert eid.decode() == entry
    msg = decode(fields[b"data"])
    assert msg.id == "ev-1" and msg.body == {"e": 1}
    assert p.xadd("events", "x", id="9999999999999-0") == "9999999999999-0"


def test_xadd_maxlen_trims_approximately(r: redis.Redis) -> None:
    p = Producer(r)
    for i in range(3000):
        p.xadd("capped", i, maxlen=500)
    n = r.xlen("capped")
    # "~" trims whole macro nodes (100 entries by default): never below maxlen, and far below 3000.
    assert 500 <= n < 1000
    ids = p.xadd_many("capped2", range(3000), maxlen=500, chunk=700)
    assert len(ids) == 3000 and ids == sorted(ids, key=lambda e: tuple(map(int, e.split("-"))))
    assert 500 <= r.xlen("capped2") < 1000
    p.xadd_many("exact", range(10))
    assert r.xlen("exact") == 10


def test_producer_from_settings_owns_and_closes_its_client(redis_url: str, r: redis.Redis) -> None:
    with Producer(settings=RedisSettings(url=redis_url)) as p:
        p.enqueue("own", "x")
    assert r.llen("own") == 1


def test_async_producer(redis_url: str, r: redis.Redis) -> None:
    async def main() -> tuple[str, list[str], str]:
        async with AsyncProducer(settings=RedisSettings(url=redis_url)) as p:
            one = await p.enqueue("aq", "first")
            many = await p.enqueue_many("aq", ["a", "b"], chunk=1)
            await p.enqueue("aq", "later", delay=10)
            entry = await p.xadd("as", "e", maxlen=10)
            await p.xadd_many("as", ["f", "g"])
            return one, many, entry

    one, many, entry = asyncio.run(main())
    assert [decode(x).id for x in r.lrange("aq", 0, -1)[::-1]] == [one, *many]
    assert r.zcard(QueueKeys("aq").delayed) == 1
    assert r.xlen("as") == 3 and r.xrange("as")[0][0].decode() == entry


def test_sync_and_async_producers_write_the_same_messages(redis_url: str, r: redis.Redis) -> None:
    """One preparation serves both: same keys, same end of the list, same envelope fields."""

    def calls(p: Producer) -> None:
        p.enqueue("s", {"n": 1}, id="a1", headers={"h": 1})
        p.enqueue_many("s", ["x", b"y"], chunk=1, headers={"h": 2})
        p.enqueue("s", "later", id="d1", delay=30)
        p.xadd("st", "e", message_id="e1", maxlen=5)
        p.xadd_many("st", ["f"], headers={"h": 3})

    async def acalls(p: AsyncProducer) -> None:
        await p.enqueue("s", {"n": 1}, id="a1", headers={"h": 1})
        await p.enqueue_many("s", ["x", b"y"], chunk=1, headers={"h": 2})
        await p.enqueue("s", "later", id="d1", delay=30)
        await p.xadd("st", "e", message_id="e1", maxlen=5)
        await p.xadd_many("st", ["f"], headers={"h": 3})

    def snapshot() -> tuple[list[Any], list[Any], list[Any]]:
        def fields(raw: bytes) -> tuple[Any, ...]:
            m = decode(raw)
            return (m.body, m.headers, m.attempts) + ((m.id,) if m.id in {"a1", "d1", "e1"} else ())

        ready = [fields(x) for x in r.lrange("s", 0, -1)]  # left side: RPUSH, so head first
        delayed = [fields(x) for x in r.zrange(QueueKeys("s").delayed, 0, -1)]
        stream = [fields(fields_[b"data"]) for _, fields_ in r.xrange("st")]
        r.delete("s", QueueKeys("s").delayed, "st")
        return ready, delayed, stream

    calls(Producer(r, side="left"))
    sync = snapshot()

    async def main() -> None:
        async with AsyncProducer(settings=RedisSettings(url=redis_url), side="left") as p:
            await acalls(p)

    asyncio.run(main())
    assert snapshot() == sync
    assert sync[0][0] == ({"n": 1}, {"h": 1}, 0, "a1") and [x[0] for x in sync[0]] == [{"n": 1}, "x", "y"]
