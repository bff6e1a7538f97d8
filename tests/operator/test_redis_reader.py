"""Backlog readers against real Redis: lists (processing lists, due vs waiting retries), streams (lag,
pending, nil lag, missing group), Cluster and TLS, and shared pools."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from tide_operator.redis_reader import (
    LIST_BACKLOG_LUA,
    ClientPool,
    Credentials,
    ListReader,
    StreamReader,
    make_reader,
)
from tide_operator.spec import Source
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.records import Heartbeat

from tests.conftest import SENTINEL_DATA_PASSWORD, SENTINEL_PASSWORD


def run(coro):
    return asyncio.run(coro)


def register(r, keys, worker: str, held: int, rate: float, idle_for: float = 0.0) -> None:
    now = time.time()
    r.zadd(keys.workers, {worker: now})
    if held:
        r.lpush(keys.processing(worker), *[f"m-{worker}-{i}" for i in range(held)])
    since = now - idle_for if idle_for else 0.0
    hb = Heartbeat(
        id=worker, host="h", pid=1, started=now, ts=now, concurrency=1, rate=rate, idle_since=since
    )
    r.set(keys.worker(worker), hb.encode(), ex=30)


async def read_list(url: str, queue: str, times: int = 1, cluster: bool = False, **kw):
    pool = ClientPool()
    try:
        reader = make_reader(pool.get(url, cluster, Credentials(**kw)), Source("list", queue))
        assert isinstance(reader, ListReader)
        out = [await reader.read(time.time()) for _ in range(times)]
        return out, reader
    finally:
        await pool.close()


def test_list_backlog_parts(r, redis_url):
    k = QueueKeys("jobs")
    r.lpush(k.ready, *range(7))
    register(r, k, "w1", 3, 5.0)
    register(r, k, "w2", 2, 7.0)
    now = time.time()
    r.zadd(k.delayed, {"due1": now - 5, "due2": now - 1, "later": now + 60})
    (first, second), _ = run(read_list(redis_url, "jobs", times=2))
    b = first.backlog
    assert (b.ready, b.inflight, b.retries_due, b.retries_waiting) == (7, 5, 2, 1)
    assert b.total == 14
    assert b.next_retry_at == pytest.approx(now + 60)
    assert sorted(first.rates) == [5.0, 7.0] and first.workers == 2
    # plain strings at the head: aged from the first reading that saw the head, so the second is older
    assert b.oldest_age == 0.0 and second.backlog.oldest_age is not None and second.backlog.oldest_age > 0
    assert replace(second.backlog, oldest_age=None) == replace(b, oldest_age=None)


def test_list_steady_state_is_one_round_trip(r, redis_url):
    k = QueueKeys("jobs")
    register(r, k, "w1", 3, 5.0)

    async def go():
        pool = ClientPool()
        reader = make_reader(pool.get(redis_url, False, Credentials()), Source("list", "jobs"))
        await reader.read(time.time())  # loads the script when needed; one more trip for the new worker
        first = reader.round_trips
        register(r, k, "w2", 1, 1.0)
        await reader.read(time.time())  # w2 joined: one more trip
        second = reader.round_trips
        reading = await reader.read(time.time())
        await pool.close()
        return second - first, reader.round_trips - second, reading

    joined, steady, reading = run(go())
    assert (joined, steady) == (2, 1)
    assert reading.backlog.inflight == 4


def test_list_script_reloaded_after_flush(r, redis_url):
    r.lpush("jobs", 1, 2)

    async def go():
        pool = ClientPool()
        reader = make_reader(pool.get(redis_url, False, Credentials()), Source("list", "jobs"))
        a = await reader.read(time.time())
        r.script_flush()  # as after a restart or a failover to a replica without the script
        b = await reader.read(time.time())
        await pool.close()
        return a, b

    a, b = run(go())
    assert a.backlog.ready == b.backlog.ready == 2


def test_list_registry_change_and_dead_worker(r, redis_url):
    k = QueueKeys("{orders}:high")
    register(r, k, "w1", 1, 1.0)

    async def go():
        pool = ClientPool()
        reader = make_reader(pool.get(redis_url, False, Credentials()), Source("list", k.queue))
        a = await reader.read(time.time())
        register(r, k, "w2", 4, 2.0)
        r.delete(k.worker("w1"))  # w1 died: heartbeat gone, its processing list still counts
        b = await reader.read(time.time())
        r.zrem(k.workers, "w2")  # out of the registry, still holding 4: an orphan, as `tide stats` says
        c = await reader.read(time.time())
        r.delete(k.processing("w2"))  # the reaper handed them back
        d = await reader.read(time.time())
        await pool.close()
        return a, b, c, d

    a, b, c, d = run(go())
    assert a.backlog.inflight == 1
    assert b.backlog.inflight == 5 and b.rates == (2.0,)
    assert c.backlog.inflight == 5 and c.workers == 1
    assert d.backlog.inflight == 1 and d.workers == 1


def test_list_empty(redis_url):
    (reading,), _ = run(read_list(redis_url, "nothing"))
    assert reading.backlog.total == 0 and reading.workers == 0


async def read_stream(url: str, stream: str, group: str, cluster: bool = False):
    pool = ClientPool()
    try:
        reader = make_reader(pool.get(url, cluster, Credentials()), Source("stream", stream, group))
        assert isinstance(reader, StreamReader)
        return await reader.read(time.time())
    finally:
        await pool.close()


def test_stream_lag_and_pending(r, redis_url):
    s = StreamKeys("events", "g")
    for i in range(10):
        r.xadd(s.stream, {"n": i})
    r.xgroup_create(s.stream, s.group, id="0")
    r.xreadgroup(s.group, "c1", {s.stream: ">"}, count=4)
    r.xack(s.stream, s.group, r.xpending_range(s.stream, s.group, "-", "+", 1)[0]["message_id"])
    b = run(read_stream(redis_url, "events", "g")).backlog
    assert (b.stream_lag, b.stream_pending, b.lag_estimated) == (6, 3, False)
    assert b.total == 9


def test_stream_missing_group_counts_whole_stream(r, redis_url):
    for i in range(5):
        r.xadd("events", {"n": i})
    b = run(read_stream(redis_url, "events", "g")).backlog
    assert b.stream_lag == 5 and b.stream_pending == 0


def test_stream_missing_stream_is_empty(redis_url):
    b = run(read_stream(redis_url, "nope", "g")).backlog
    assert b.total == 0


def test_stream_nil_lag_is_estimated_not_zero(r, redis_url):
    s = StreamKeys("events", "g")
    ids = [r.xadd(s.stream, {"n": i}) for i in range(10)]
    r.xgroup_create(s.stream, s.group, id="0")
    r.xreadgroup(s.group, "c1", {s.stream: ">"}, count=2)
    r.xdel(s.stream, ids[5])  # a deletion past the group's position makes Redis report lag nil
    groups = r.xinfo_groups(s.stream)
    assert groups[0]["lag"] is None
    b = run(read_stream(redis_url, "events", "g")).backlog
    assert b.lag_estimated
    # entries added minus entries read: 7 are truly undelivered, the estimate errs up by the deleted one
    assert b.stream_lag == 8
    assert b.stream_pending == 2


def test_stream_heartbeat_rates(r, redis_url):
    s = StreamKeys("events", "g")
    r.xadd(s.stream, {"n": 1})
    register(r, s, "c1", 0, 3.5)
    register(r, s, "c2", 0, 0.0, idle_for=7.0)
    reading = run(read_stream(redis_url, "events", "g"))
    assert reading.rates == (3.5, 0.0) and reading.workers == 2
    assert reading.idle == (0.0, 7.0)


def test_list_heartbeat_idle_seconds(r, redis_url):
    """Idle seconds read by the script (a worker seen before) and by Python (a new one) alike."""
    k = QueueKeys("jobs")
    register(r, k, "w1", 1, 2.0)
    register(r, k, "w2", 0, 0.0, idle_for=6.0)
    (first, second), _ = run(read_list(redis_url, "jobs", times=2))
    assert first.idle == second.idle == (0.0, 6.0)


def test_cluster_list_and_stream(redis_cluster):
    c = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        k = QueueKeys("jobs")
        c.lpush(k.ready, *range(4))
        register(c, k, "w1", 2, 1.0)
        c.zadd(k.delayed, {"due": time.time() - 1})
        (reading,), _ = run(read_list(redis_cluster.url, "jobs", cluster=True))
        assert (reading.backlog.ready, reading.backlog.inflight, reading.backlog.retries_due) == (4, 2, 1)
        for i in range(3):
            c.xadd("events", {"n": i})
        b = run(read_stream(redis_cluster.url, "events", "g", cluster=True)).backlog
        assert b.stream_lag == 3
    finally:
        c.close()


def test_tls_with_ca_from_secret_data(redis_tls, tls_files):
    with redis_tls.client() as c:
        c.lpush("jobs", "a", "b")
    pem = Path(tls_files.ca_cert).read_text()
    (reading,), _ = run(read_list(redis_tls.url, "jobs", ca_pem=pem))
    assert reading.backlog.ready == 2


def test_sentinel_tls_with_ca_from_secret_data(redis_sentinel_tls, tls_files):
    """spec.redis.sentinel with TLS: the operator's client reaches TLS-only sentinels and master with the CA
    as Secret data (no file), the sentinels' password and the data servers' password."""
    from tide_worker.environment import sentinel_url

    s = redis_sentinel_tls
    with s.master().client() as c:
        c.lpush("jobs", "a", "b", "c")
    url = sentinel_url(s.addresses, s.master_name, 0, tls=True)
    pem = Path(tls_files.ca_cert).read_text()
    creds = {"password": SENTINEL_DATA_PASSWORD, "sentinel_password": SENTINEL_PASSWORD}
    (reading,), _ = run(read_list(url, "jobs", ca_pem=pem, **creds))
    assert reading.backlog.ready == 3
    with pytest.raises(redis.ConnectionError):  # without the CA the certificate is not trusted
        run(read_list(url, "jobs", **creds))


def test_unreachable_fails_fast():
    async def go():
        pool = ClientPool()
        reader = make_reader(pool.get("redis://127.0.0.1:1/0", False, Credentials()), Source("list", "q"))
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await reader.read(time.time())
        finally:
            await pool.close()

    run(go())


def test_pool_shared_per_server_and_credentials():
    async def go():
        pool = ClientPool()
        a = pool.get("redis://h:1/0", False, Credentials())
        b = pool.get("redis://h:1/0", False, Credentials())
        c = pool.get("redis://h:1/0", False, Credentials(password="x"))
        d = pool.get("redis://h:2/0", False, Credentials())
        n = len(pool)
        await pool.close()
        return a is b, a is not c, a is not d, n

    assert run(go()) == (True, True, True, 3)


# --- batched reads: many resources on one server, one pipeline -----------------------------------------


def test_batcher_coalesces_concurrent_reads_into_one_round_trip(r, redis_url):
    for i in range(50):
        r.lpush(f"q{i}", *range(i + 1))
    register(r, QueueKeys("q7"), "w1", 4, 2.0)

    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        assert pool.batcher(client) is batcher  # one per client
        readers = [make_reader(client, Source("list", f"q{i}"), batcher) for i in range(50)]
        first = await asyncio.gather(*(x.read(time.time()) for x in readers))
        trips_after_first = batcher.round_trips
        second = await asyncio.gather(*(x.read(time.time()) for x in readers))
        await pool.close()
        return first, second, trips_after_first, batcher.round_trips

    first, second, trips1, trips2 = run(go())
    assert [x.backlog.ready for x in second] == list(range(1, 51))
    assert second[7].backlog.inflight == 4 and second[7].rates == (2.0,)
    # (plain strings age between the two readings: compared without their age)
    assert [replace(x.backlog, oldest_age=None) for x in first] == [
        replace(x.backlog, oldest_age=None) for x in second
    ]
    # 50 reads in one pipeline (+1 when the script had to be loaded); q7's new worker costs one more
    assert trips1 in (2, 3)
    assert trips2 - trips1 == 1


def test_batcher_keeps_errors_per_request(r, redis_url):
    r.set("broken", "a string, not a list")  # LLEN answers WRONGTYPE for this resource only
    r.lpush("fine", 1, 2, 3)

    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        bad = make_reader(client, Source("list", "broken"), batcher)
        good = make_reader(client, Source("list", "fine"), batcher)
        res = await asyncio.gather(bad.read(time.time()), good.read(time.time()), return_exceptions=True)
        await pool.close()
        return res, batcher.round_trips

    (bad, good), trips = run(go())
    assert isinstance(bad, redis.exceptions.ResponseError) and "WRONGTYPE" in str(bad)
    assert good.backlog.ready == 3
    assert trips == 1


async def _or_error(coro):
    try:
        return await coro
    except redis.exceptions.RedisError as exc:
        return exc


def test_shared_script_call_reads_each_queue_as_its_own_call_does(r, redis_url):
    """Many list queues in one call of the script: each reading equals the one its own call gives, with
    workers, orphans, retries and heads of each kind; a bad key in the middle fails only its queue."""
    now = time.time()
    names = [f"mix{i}" for i in range(12)]
    for i, name in enumerate(names):
        k = QueueKeys(name)
        if i % 2:
            r.lpush(k.ready, *range(i))
        if i % 3 == 0:
            register(r, k, "w1", i % 4, 1.5 + i)
            register(r, k, "w2", 1, 0.5)
        if i % 4 == 1:
            r.lpush(k.processing("gone"), "orphaned")
        if i % 5 == 0:
            r.zadd(k.delayed, {"due": now - 5, "later": now + 30})
    r.set(QueueKeys("mix6").ready, "not a list")

    async def go(batched: bool):
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client) if batched else None
        readers = [make_reader(client, Source("list", n), batcher) for n in names]
        out = []
        for _ in range(2):  # the second reading with the registries cached
            t = time.time()
            if batched:  # at once: one batch
                out = await asyncio.gather(*(x.read(t) for x in readers), return_exceptions=True)
            else:  # one by one: a call each, within the pool's connections
                out = [await _or_error(x.read(t)) for x in readers]
        await pool.close()
        return out, batcher.round_trips if batcher else None

    alone, _ = run(go(False))
    shared, trips = run(go(True))
    assert trips is not None and trips <= 4  # 12 queues: a call or two per reading, not 12
    for name, a, b in zip(names, alone, shared, strict=True):
        if name == "mix6":
            assert isinstance(a, redis.exceptions.ResponseError) and "WRONGTYPE" in str(a)
            assert isinstance(b, redis.exceptions.ResponseError) and "WRONGTYPE" in str(b)
            continue
        assert replace(a.backlog, oldest_age=None) == replace(b.backlog, oldest_age=None), name
        assert (a.rates, a.workers) == (b.rates, b.workers), name
    assert [x.backlog.inflight for x in shared if not isinstance(x, Exception)][:3] == [1, 1, 0]


def test_batcher_loads_the_script_once_for_a_batch(r, redis_url):
    r.script_flush()

    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        readers = [make_reader(client, Source("list", f"n{i}"), batcher) for i in range(30)]
        await asyncio.gather(*(x.read(time.time()) for x in readers))
        await pool.close()
        return batcher.round_trips

    loads_before = _script_loads(r)
    assert run(go()) == 2  # NOSCRIPT for all 30, one SCRIPT LOAD, all 30 again
    assert _script_loads(r) - loads_before == 1


def _script_loads(r) -> int:
    return int(r.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0))


def test_batcher_splits_large_queues(r, redis_url):
    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        # 2 queues a script call, 2 calls a pipeline: 7 reads are 4 calls in 2 round trips
        batcher.max_queues, batcher.max_commands = 2, 2
        readers = [make_reader(client, Source("list", f"s{i}"), batcher) for i in range(7)]
        res = await asyncio.gather(*(x.read(time.time()) for x in readers))
        await pool.close()
        return res, batcher.round_trips

    for i in range(7):
        r.lpush(f"s{i}", *range(i + 1))
    r.script_load(LIST_BACKLOG_LUA)
    res, trips = run(go())
    assert [x.backlog.ready for x in res] == list(range(1, 8)) and trips == 2


def test_batcher_connection_failure_fails_every_request():
    async def go():
        pool = ClientPool()
        client = pool.get("redis://127.0.0.1:1/0", False, Credentials())
        batcher = pool.batcher(client)
        readers = [make_reader(client, Source("list", f"q{i}"), batcher) for i in range(3)]
        res = await asyncio.gather(*(x.read(time.time()) for x in readers), return_exceptions=True)
        # the batcher recovers: a later read is attempted again, not stuck behind the failure
        again = await asyncio.gather(readers[0].read(time.time()), return_exceptions=True)
        await pool.close()
        return res + again

    assert all(isinstance(x, redis.exceptions.ConnectionError) for x in run(go()))


def test_batcher_on_cluster_reads_every_slot(redis_cluster):
    c = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        names = [f"cq{i}" for i in range(20)]  # spread over the three masters' slots
        for i, name in enumerate(names):
            c.lpush(name, *range(i + 1))

        async def go():
            pool = ClientPool()
            client = pool.get(redis_cluster.url, True, Credentials())
            batcher = pool.batcher(client)
            readers = [make_reader(client, Source("list", n), batcher) for n in names]
            res = await asyncio.gather(*(x.read(time.time()) for x in readers))
            await pool.close()
            return res, batcher.round_trips

        res, trips = run(go())
        assert [x.backlog.ready for x in res] == list(range(1, 21))
        assert trips == 1
    finally:
        c.close()


def test_a_user_refused_scan_still_reads_without_orphans(r, redis_url):
    """Orphans are found with SCAN; an ACL user refused it reads everything else, as before orphans counted."""
    k = QueueKeys("jobs")
    r.lpush(k.ready, 1, 2)
    register(r, k, "w1", 2, 1.0)
    r.lpush(k.processing("orphan"), "x")
    r.acl_setuser("noscan", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-scan"])
    try:
        (reading,), reader = run(read_list(redis_url, "jobs", username="noscan", password="pw"))
    finally:
        r.acl_deluser("noscan")
    assert (reading.backlog.ready, reading.backlog.inflight) == (2, 2)
    assert reader.batcher is None and "scan" in (reader._scan.refused or "").lower()


def test_lists_backlog_is_the_sum_read_in_one_batched_round_trip(r, redis_url):
    a, b = QueueKeys("high"), QueueKeys("low")
    r.lpush(a.ready, *range(7))
    r.lpush(b.ready, *range(30))
    register(r, a, "w1", 2, 5.0)
    register(r, b, "w1", 1, 5.0)  # the same worker heartbeats on each list it consumes
    now = time.time()
    r.zadd(b.delayed, {"due": now - 1, "later": now + 60})

    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        source = Source("list", "high", lists=(("high", 0), ("low", 0)))
        reader = make_reader(client, source, batcher)
        first = await reader.read(time.time())
        trips = batcher.round_trips
        second = await reader.read(time.time())
        trips = batcher.round_trips - trips
        beats = await reader.heartbeats()  # before a scale-down: each worker once, not once per list
        await pool.close()
        return first, second, trips, beats

    first, second, trips, beats = run(go())
    assert [b.id for b in beats] == ["w1"]
    total = second.backlog
    assert (total.ready, total.inflight, total.retries_due, total.retries_waiting) == (37, 3, 1, 1)
    assert total.next_retry_at == pytest.approx(now + 60)
    assert [(k, p.total) for k, p in second.parts] == [("high", 9), ("low", 32)]
    assert second.rates == (5.0,) and second.workers == 1  # counted once, not once per list
    # the same counts both times; the plain strings at the heads age from the first read that saw them
    assert replace(first.backlog, oldest_age=None) == replace(total, oldest_age=None)
    assert first.backlog.oldest_age is not None and total.oldest_age >= first.backlog.oldest_age
    assert trips == 1  # both lists in one pipeline


def _beat(r, keys, worker: str, pod: str, inflight: int, oldest_started: float) -> None:
    now = time.time()
    r.zadd(keys.workers, {worker: now})
    hb = Heartbeat(id=worker, host="h", pid=1, started=now, ts=now, concurrency=2, inflight=inflight,
                   pod=pod, namespace="ns", oldest_started=oldest_started)  # fmt: skip
    r.set(keys.worker(worker), hb.encode(), ex=30)


def test_heartbeats_before_a_scale_down_count_what_each_worker_holds_now(r, redis_url):
    """A heartbeat's in-flight count is up to a third of its TTL old, and a scale-down can come soon after
    a job ends: the processing lists, read in the same round trip, say what each worker holds now. Read
    from the heartbeats alone, the worker that just finished (w1) would cost the most and the one that
    just took two messages (w2) nothing, so a scale-down by one would take w2 and interrupt its work."""
    from tide_operator.deletion_cost import pod_costs

    k = QueueKeys("fresh")
    now = time.time()
    _beat(r, k, "w1", "pod-1", 1, now - 40)  # its job ended after this heartbeat: nothing held
    _beat(r, k, "w2", "pod-2", 0, 0.0)  # took two messages after this heartbeat
    r.lpush(k.processing("w2"), "a", "b")
    _beat(r, k, "w3", "pod-3", 1, now - 5)  # busy both ways
    r.lpush(k.processing("w3"), "c")
    r.zadd(k.workers, {"gone": now})  # registered, heartbeat expired: left out

    async def go():
        pool = ClientPool()
        try:
            return await make_reader(
                pool.get(redis_url, False, Credentials()), Source("list", "fresh")
            ).heartbeats()
        finally:
            await pool.close()

    beats = {b.id: b for b in run(go())}
    assert set(beats) == {"w1", "w2", "w3"}
    assert (beats["w1"].inflight, beats["w1"].oldest_started) == (0, 0.0)
    assert (beats["w2"].inflight, beats["w3"].inflight) == (2, 1)
    assert beats["w3"].oldest_started == pytest.approx(now - 5)
    costs = pod_costs(beats.values(), "ns", now)
    assert costs["pod-1"] == 0 < costs["pod-2"] < costs["pod-3"], costs


def test_heartbeats_of_several_lists_sum_what_each_worker_holds(r, redis_url):
    a, b = QueueKeys("hi"), QueueKeys("lo")
    for keys in (a, b):  # a worker heartbeats on each list it consumes, with the same record
        _beat(r, keys, "w1", "pod-1", 0, 0.0)
    r.lpush(a.processing("w1"), "x")
    r.lpush(b.processing("w1"), "y", "z")

    async def go():
        pool = ClientPool()
        try:
            source = Source("list", "hi", lists=(("hi", 0), ("lo", 0)))
            return await make_reader(pool.get(redis_url, False, Credentials()), source).heartbeats()
        finally:
            await pool.close()

    assert [(hb.id, hb.inflight) for hb in run(go())] == [("w1", 3)]


def test_stream_heartbeats_before_a_scale_down_count_each_consumers_pending_entries(r, redis_url):
    """For a stream, what a worker holds now is its consumer's pending entries in the group."""
    s = StreamKeys("held-events", "g")
    for i in range(5):
        r.xadd(s.stream, {"i": i})
    r.xgroup_create(s.stream, s.group, id="0")
    r.xreadgroup(s.group, "c2", {s.stream: ">"}, count=2)  # c2 took two after its heartbeat said idle
    now = time.time()
    for worker, inflight, oldest in (("c1", 1, now - 30), ("c2", 0, 0.0)):  # c1 finished since
        r.zadd(s.workers, {worker: now})
        hb = Heartbeat(id=worker, host="h", pid=1, started=now, ts=now, concurrency=2, inflight=inflight,
                       pod=f"pod-{worker}", namespace="ns", oldest_started=oldest)  # fmt: skip
        r.set(s.worker(worker), hb.encode(), ex=30)

    async def go(group: str):
        pool = ClientPool()
        try:
            reader = make_reader(pool.get(redis_url, False, Credentials()), Source("stream", s.stream, group))
            return {b.id: (b.inflight, b.oldest_started) for b in await reader.heartbeats()}
        finally:
            await pool.close()

    assert run(go("g")) == {"c1": (0, 0.0), "c2": (2, 0.0)}
    # workers registered for a group that does not exist (XPENDING: NOGROUP): their heartbeats' counts
    other = StreamKeys(s.stream, "missing")
    r.zadd(other.workers, {"c3": now})
    hb = Heartbeat(id="c3", host="h", pid=1, started=now, ts=now, concurrency=2, inflight=1, pod="pod-c3",
                   namespace="ns", oldest_started=now - 7)  # fmt: skip
    r.set(other.worker("c3"), hb.encode(), ex=30)
    assert run(go("missing")) == {"c3": (1, pytest.approx(now - 7))}


def test_more_concurrent_callers_than_connections_wait_for_one(r, redis_url):
    """A burst's readers on one server share MAX_CONNECTIONS: the extra ones wait for a free connection.
    redis-py's default pool failed them at once with MaxConnectionsError, a ConnectionError that reads as
    "Redis unreachable" (42 of 50 failed before the blocking pool)."""
    from tide_operator.redis_reader import MAX_CONNECTIONS

    async def go() -> tuple[list[object], int]:
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        try:
            calls = [client.blpop(["nothing-here"], 0.05) for _ in range(6 * MAX_CONNECTIONS)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            opened = sum(1 for c in r.client_list() if c.get("name") == "tide-operator")
            return results, opened
        finally:
            await pool.close()

    results, opened = run(go())
    assert [x for x in results if isinstance(x, BaseException)] == []
    assert results == [None] * (6 * MAX_CONNECTIONS)  # each waited its 50 ms on an empty list
    assert 0 < opened <= MAX_CONNECTIONS


def test_tls_replies_larger_than_the_shrunk_read_buffer_arrive_whole(redis_tls, tls_files, monkeypatch):
    """The operator's TLS read buffers (heap.shrink_tls_buffers): a reply of many buffers, and the buffer of a
    connection opened after the change is the smaller one."""
    import asyncio.sslproto

    import redis.asyncio as aioredis
    from tide_operator.heap import TLS_READ_BUFFER, shrink_tls_buffers

    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", asyncio.sslproto.SSLProtocol.max_size)
    shrink_tls_buffers()
    value = bytes(range(256)) * (5 * 2**20 // 256 + 7)  # 5 MB and a bit: ~80 reads of 64 KB
    with redis_tls.client() as c:
        c.set("big", value)

    async def read() -> tuple[bytes, int]:
        client = aioredis.Redis.from_url(redis_tls.url, ssl_ca_certs=tls_files.ca_cert)
        try:
            got = await client.get("big")
            conn = client.connection or await client.connection_pool.get_connection()
            protocol = conn._writer.transport._ssl_protocol  # type: ignore[union-attr]
            return got, len(protocol._ssl_buffer)
        finally:
            await client.aclose()

    got, buffer = asyncio.run(read())
    assert got == value
    assert buffer == TLS_READ_BUFFER < 256 * 1024


def test_the_operator_shrinks_tls_buffers_before_kopf_connects():
    """Set when the handlers module is imported (before kopf's login, peering and watches open their TLS
    connections to the API server), not in the startup handler after them. A fresh interpreter: importing
    the handlers registers them with kopf."""
    import subprocess
    import sys

    from tide_operator.heap import TLS_READ_BUFFER

    code = "import asyncio.sslproto, tide_operator.handlers; print(asyncio.sslproto.SSLProtocol.max_size)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout.strip()) == TLS_READ_BUFFER
