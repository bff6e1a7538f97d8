"""queue_stats and stream_stats on keys seeded by hand in the contract layout."""

from __future__ import annotations

import redis
from tide_worker import ops
from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.producer import Producer
from tide_worker.records import Heartbeat

from tests.ops.conftest import now, seed_dead, seed_worker


def test_empty_queue(r: redis.Redis) -> None:
    s = ops.queue_stats(r, "nothing")
    assert (s["ready"], s["in_flight"], s["delayed"], s["dead"], s["backlog"]) == (0, 0, 0, 0, 0)
    assert s["workers"] == [] and s["workers_alive"] == 0


def test_queue_stats_counts_every_part(r: redis.Redis) -> None:
    t = now()
    k = QueueKeys("orders")
    Producer(r).enqueue_many("orders", range(7))
    seed_worker(r, "orders", "w1", held=3, rate=10.5, now=t)
    seed_worker(r, "orders", "w2", held=0, rate=4.5, now=t)
    seed_worker(r, "orders", "dead-w", alive=False, held=2, now=t)  # registered, heartbeat expired
    r.lpush(k.processing("orphan"), b"x")  # never registered: found by SCAN
    r.zadd(k.delayed, {b"due1": t - 5, b"due2": t - 1, b"later": t + 60})
    seed_dead(r, "orders", 4)
    r.hset(k.stats, mapping={"processed": 12, "failed": 1})
    r.lpush("other-queue", b"not ours")
    r.lpush(QueueKeys("other-queue").processing("w9"), b"not ours either")

    s = ops.queue_stats(r, "orders", now=t)
    assert s["ready"] == 7
    assert s["in_flight"] == 3 + 2 + 1
    assert (s["delayed"], s["delayed_due"], s["dead"]) == (3, 2, 4)
    assert s["backlog"] == 7 + 6 + 2
    assert s["workers_alive"] == 2 and s["rate"] == 15.0
    by_id = {w["id"]: w for w in s["workers"]}
    assert set(by_id) == {"w1", "w2", "dead-w", "orphan"}
    assert by_id["w1"]["alive"] and by_id["w1"]["processing"] == 3 and by_id["w1"]["rate"] == 10.5
    assert by_id["w1"]["processed"] == 100 and by_id["w1"]["inflight"] == 3
    assert (
        not by_id["dead-w"]["alive"] and by_id["dead-w"]["registered"] and by_id["dead-w"]["processing"] == 2
    )
    assert by_id["orphan"]["registered"] is False and by_id["orphan"]["processing"] == 1
    assert s["counters"] == {"processed": 12, "failed": 1}
    assert [w["alive"] for w in s["workers"]] == [True, True, False, False]  # alive first


def test_queue_with_own_hash_tag(r: redis.Redis) -> None:
    t = now()
    seed_worker(r, "{orders}:high", "w1", held=2, now=t)
    assert QueueKeys("{orders}:high").processing("w1") == "{orders}:high:processing:w1"
    assert ops.queue_stats(r, "{orders}:high", now=t)["in_flight"] == 2


def test_corrupt_heartbeat_is_not_alive(r: redis.Redis) -> None:
    k = QueueKeys("q")
    r.zadd(k.workers, {"w1": 5.0})
    r.set(k.worker("w1"), b"garbage")
    [w] = ops.queue_stats(r, "q")["workers"]
    assert w["alive"] is False and w["last_seen"] == 5.0


def test_stream_without_group_counts_the_whole_stream(r: redis.Redis) -> None:
    Producer(r).xadd_many("ev", range(5))
    s = ops.stream_stats(r, "ev", "g")
    assert not s["group_exists"] and s["lag"] == 5 and s["backlog"] == 5 and s["pending"] == 0
    assert ops.stream_stats(r, "missing", "g")["backlog"] == 0


def test_stream_stats_lag_pending_consumers(r: redis.Redis) -> None:
    Producer(r).xadd_many("ev", range(10))
    r.xgroup_create("ev", "g", id="0")
    r.xreadgroup("g", "c1", {"ev": ">"}, count=4)
    [(_, entries)] = r.xreadgroup("g", "c2", {"ev": ">"}, count=2)
    r.xack("ev", "g", entries[0][0])
    t = now()
    k = StreamKeys("ev", "g")
    r.zadd(k.workers, {"c1": t})
    hb = Heartbeat(id="c1", host="h", pid=1, started=t, ts=t, concurrency=1, inflight=4, rate=2.0)
    r.set(k.worker("c1"), hb.encode(), ex=30)
    r.xadd(k.dead, {"message": encode_envelope("x").decode(), "encoding": "utf-8", "reason": "failed"})
    s = ops.stream_stats(r, "ev", "g", now=t)
    assert (s["length"], s["lag"], s["lag_estimated"], s["pending"]) == (10, 4, False, 5)
    assert s["backlog"] == 9 and s["dead"] == 1
    assert {c["name"]: c["pending"] for c in s["consumers"]} == {"c1": 4, "c2": 1}
    assert s["workers_alive"] == 1 and s["rate"] == 2.0


def test_nil_lag_is_estimated_never_zero(r: redis.Redis) -> None:
    ids = Producer(r).xadd_many("ev", range(10))
    r.xgroup_create("ev", "g", id="0")
    r.xreadgroup("g", "c1", {"ev": ">"}, count=3)
    r.xdel("ev", ids[6])  # a deletion past the group's position: Redis reports lag as nil
    assert r.xinfo_groups("ev")[0]["lag"] is None
    s = ops.stream_stats(r, "ev", "g")
    assert s["lag_estimated"] and s["length"] == 9
    # 10 added - 3 read = 7 (the true count is 6: the estimate errs towards more work, never zero).
    assert s["lag"] == 7 and s["backlog"] == 7 + 3
