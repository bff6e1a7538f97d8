"""One backlog contract: `tide stats` (tide_worker.ops) and the operator's readers, put in front of the same
real Redis state, report the same backlog, an orphaned processing list and estimated lags included."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from tide_operator.redis_reader import (
    ENVELOPE_ARGS,
    LIST_BACKLOG_LUA,
    ClientPool,
    Credentials,
    ListReader,
    Reading,
    StreamReader,
    make_reader,
)
from tide_operator.spec import Source
from tide_operator.status import backlog_status
from tide_worker import ops
from tide_worker.backlog import Backlog, GroupInfo, list_backlog, stream_backlog
from tide_worker.envelope import encode_envelope, enqueued_time
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer
from tide_worker.records import Heartbeat

from tests.ops.conftest import seed_worker


async def _read(url: str, sources: list[Source], rounds: int = 1, now: float | None = None) -> list[Reading]:
    """The operator's readings of ``sources``, batched as the operator reads (one shared batcher)."""
    pool = ClientPool()
    try:
        client = pool.get(url, False, Credentials())
        batcher = pool.batcher(client)
        readers = [make_reader(client, s, batcher) for s in sources]
        out: list[Reading] = []
        for _ in range(rounds):  # a second round reads with the registries cached (the steady state)
            t = time.time() if now is None else now
            out = list(await asyncio.gather(*(x.read(t) for x in readers)))
        return out
    finally:
        await pool.close()


def _list_backlog(s: dict[str, Any]) -> Backlog:
    """The backlog `tide stats` shows for a list queue, in the operator's terms."""
    return Backlog(
        ready=s["ready"],
        inflight=s["in_flight"],
        retries_due=s["delayed_due"],
        retries_waiting=s["delayed"] - s["delayed_due"],
        oldest_age=s["oldest_age"],
    )


def _stream_backlog(s: dict[str, Any]) -> Backlog:
    return Backlog(
        stream_lag=s["lag"],
        stream_pending=s["pending"],
        lag_estimated=s["lag_estimated"],
        oldest_age=s["oldest_age"],
    )


def test_tide_stats_and_the_operator_read_the_same_backlog(r: redis.Redis, redis_url: str) -> None:
    t = time.time()
    k = QueueKeys("orders")
    Producer(r).enqueue_many("orders", range(7))
    seed_worker(r, "orders", "w1", held=3, rate=10.5, now=t)
    seed_worker(r, "orders", "dead-w", alive=False, held=2, now=t)  # registered, heartbeat expired
    r.lpush(k.processing("orphan"), b"x", b"y")  # never registered: only SCAN finds it
    r.zadd(k.delayed, {b"due1": t - 5, b"due2": t - 1, b"later": t + 60})
    # a stream whose group does not exist yet: the whole stream, an estimate
    Producer(r).xadd_many("fresh", range(5))
    # a stream whose group's lag Redis reports as nil (a deletion past the group's position)
    ids = Producer(r).xadd_many("ev", range(10))
    r.xgroup_create("ev", "g", id="0")
    r.xreadgroup("g", "c1", {"ev": ">"}, count=3)
    r.xdel("ev", ids[6])
    assert r.xinfo_groups("ev")[0]["lag"] is None
    # a stream whose group knows its lag
    Producer(r).xadd_many("plain", range(6))
    r.xgroup_create("plain", "g", id="0")
    r.xreadgroup("g", "c1", {"plain": ">"}, count=2)

    sources = [Source("list", "orders"), Source("stream", "fresh", "g")]
    sources += [Source("stream", "ev", "g"), Source("stream", "plain", "g"), Source("stream", "none", "g")]
    # one clock for both readers (the seeding time): the ages compare exactly
    first = asyncio.run(_read(redis_url, sources, now=t))
    steady = asyncio.run(_read(redis_url, sources, rounds=2, now=t))
    stats = [ops.queue_stats(r, "orders", now=t)]
    stats += [ops.stream_stats(r, s.key, s.group or "", now=t) for s in sources[1:]]

    for readings in (first, steady):
        got = [x.backlog for x in readings]
        lst = got[0]
        assert lst.next_retry_at is not None and abs(lst.next_retry_at - (t + 60)) < 1e-3
        got[0] = Backlog(**{**vars(lst), "next_retry_at": None})
        want = [_list_backlog(stats[0])] + [_stream_backlog(s) for s in stats[1:]]
        assert got == want
        assert [b.total for b in got] == [s["backlog"] for s in stats]
        # what `kubectl get qc` shows (.status.backlog, the columns read from it) is `tide stats`'s backlog
        shown = [backlog_status(b) for b in got]
        assert [x["total"] for x in shown] == [s["backlog"] for s in stats]
        assert [x["lagEstimated"] for x in shown[1:]] == [s["lag_estimated"] for s in stats[1:]]
        assert shown[0]["inFlight"] == stats[0]["in_flight"] and shown[0]["ready"] == stats[0]["ready"]
    # the cases themselves: the orphan counts, both estimated lags are flagged
    assert first[0].backlog.inflight == 3 + 2 + 2
    assert (first[1].backlog.stream_lag, first[1].backlog.lag_estimated) == (5, True)
    assert (first[2].backlog.stream_lag, first[2].backlog.lag_estimated) == (7, True)
    assert first[4].backlog == Backlog()
    # the ages: the oldest message of each is a few ms old, nothing waits in the missing stream
    ages = [x.backlog.oldest_age for x in first]
    assert all(a is not None and 0 <= a < 60 for a in ages[:4]) and ages[4] is None, ages
    # registered workers and their rates agree too
    assert first[0].workers == sum(w["registered"] for w in stats[0]["workers"])
    assert sum(first[0].rates) == stats[0]["rate"]


def test_a_list_orphaned_after_the_first_reading_counts_after_the_next_scan(
    r: redis.Redis, redis_url: str
) -> None:
    """Between SCAN walks the reader reads the orphans it knows in its one script call; a list orphaned
    since is found by the next walk (in the background: the reading after it counts it)."""
    k = QueueKeys("jobs")
    r.lpush(k.ready, 1)

    async def go() -> tuple[int, int, int]:
        pool = ClientPool()
        try:
            client = pool.get(redis_url, False, Credentials())
            batcher = pool.batcher(client)
            reader = make_reader(client, Source("list", "jobs"), batcher)
            assert isinstance(reader, ListReader) and not isinstance(reader, StreamReader)
            a = (await reader.read(time.time())).backlog.inflight
            r.lpush(k.processing("late"), b"m1", b"m2", b"m3")
            batcher.scan.every = 0.0  # the walk is due now
            await reader.read(time.time())  # starts it
            while batcher.scan.generation < 2:
                await asyncio.sleep(0.01)
            c = (await reader.read(time.time())).backlog.inflight
            return a, c, ops.queue_stats(r, "jobs")["in_flight"]
        finally:
            await pool.close()

    before, after, stats = asyncio.run(go())
    assert before == 0 and after == stats == 3


# --- the rules themselves (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "added", "read", "last_generated", "last_delivered", "lag"),
    [
        (9, 10, 3, "10-0", "3-0", 7),  # entries added - entries read
        (4, 10, 3, "10-0", "3-0", 4),  # capped by the length (entries trimmed)
        (9, None, 3, "10-0", "3-0", 9),  # a counter unknown: the whole length
        (9, 10, 10, "10-0", "9-0", 1),  # the counters say 0, yet entries exist past the group: never 0
        (9, 10, 3, "10-0", "10-0", 0),  # the group delivered the last entry ever generated
        (0, 10, 3, "10-0", "3-0", 0),  # nothing left in the stream
    ],
)
def test_estimated_lag_rules(
    length: int, added: int | None, read: int | None, last_generated: str, last_delivered: str, lag: int
) -> None:
    group = GroupInfo(pending=2, lag=None, entries_read=read, last_delivered_id=last_delivered)
    b = stream_backlog(length, group, entries_added=added, last_generated_id=last_generated)
    assert (b.stream_lag, b.stream_pending, b.lag_estimated) == (lag, 2, True)


def test_missing_group_and_known_lag() -> None:
    assert stream_backlog(5, None) == Backlog(stream_lag=5, lag_estimated=True)
    assert stream_backlog(0, None) == Backlog()
    known = GroupInfo(pending=1, lag=3, entries_read=None, last_delivered_id=None)
    assert stream_backlog(9, known) == Backlog(stream_lag=3, stream_pending=1)


def test_list_backlog_counts_every_processing_list() -> None:
    b = list_backlog(7, [3, 2, 1], retries_total=3, retries_due=2, next_retry_at=5.0)
    assert b == Backlog(ready=7, inflight=6, retries_due=2, retries_waiting=1, next_retry_at=5.0)
    assert b.total == 15


# --- heartbeats: list_backlog.lua reads the record Heartbeat writes, by Heartbeat's rules ---------------

HB = Heartbeat(
    id="w1", host="h", pid=7, started=1.5, ts=2.5, concurrency=4, inflight=1, processed=9, failed=1,
    rate=0.1 + 0.2, rate_window=10.0, version="1.2", idle_since=1.0,
)  # fmt: skip


def _heartbeat_variants() -> list[bytes]:
    """Heartbeats as Python writes them, then each field missing, of a wrong type, or not finite."""
    doc = json.loads(HB.encode())
    out = [HB.encode(), Heartbeat(id="w", host="h", pid=1, started=0, ts=0, concurrency=1).encode()]
    for name, value in doc.items():
        out.append(json.dumps({k: v for k, v in doc.items() if k != name}).encode())
        wrong: list[Any] = [True, None, [1], {"a": 1}]
        wrong += [1, 2.5] if isinstance(value, str) else ["3", 1.5, 1e400]
        out += [json.dumps({**doc, name: w}).encode() for w in wrong]
    return [*out, b"garbage", b"[]", b"{}", b"null", b'"text"', b"3"]


def _python_figures(raw: bytes) -> tuple[float, float] | None:
    try:
        hb = Heartbeat.decode(raw)
    except ValueError:
        return None
    return hb.rate, hb.idle_for()


def test_list_script_reads_heartbeats_as_heartbeat_does(r: redis.Redis) -> None:
    k = QueueKeys("hb")
    variants = _heartbeat_variants()
    wids = [f"w{i}" for i in range(len(variants))]
    for wid, raw in zip(wids, variants, strict=True):
        r.set(k.worker(wid), raw)
    keys = [k.ready, k.workers, k.delayed] + [x for w in wids for x in (k.processing(w), k.worker(w))]
    res = r.eval(LIST_BACKLOG_LUA, len(keys), *keys, repr(time.time()), str(len(wids)))
    lua = [None if x is None else tuple(map(float, x.split())) for x in res[7::2]]
    want = [_python_figures(raw) for raw in variants]
    assert lua == want
    # every digit of the rate, and idle since 1.0 at ts 2.5; none written reads as 0, and 0 as busy
    assert want[0] == (0.1 + 0.2, 1.5) and want[1] == (0.0, 0.0)
    assert sum(x is None for x in want) > len(variants) // 2  # the broken ones are refused by both


def test_reader_reads_heartbeats_alike_in_python_and_in_the_script(r: redis.Redis, redis_url: str) -> None:
    """A worker new to the reader is read by Python (``_figures``), a known one by the script: the same
    rates and idle seconds."""
    k = QueueKeys("hb")
    variants = _heartbeat_variants()
    for i, raw in enumerate(variants):
        r.zadd(k.workers, {f"w{i}": i})
        r.set(k.worker(f"w{i}"), raw)
    by_python, by_lua = (
        asyncio.run(_read(redis_url, [Source("list", "hb")])),
        asyncio.run(_read(redis_url, [Source("list", "hb")], rounds=2)),
    )
    want = [x for x in map(_python_figures, variants) if x is not None]
    assert by_python[0].rates == by_lua[0].rates == tuple(r for r, _ in want)
    assert by_python[0].idle == by_lua[0].idle == tuple(i for _, i in want)
    assert 1.5 in by_lua[0].idle


# --- the head's enqueue time: list_backlog.lua decodes it by envelope.enqueued_time's rules --------------

ENV = {"v": 1, "id": "m1", "ts": 1700000000.25, "a": 0, "body": {"x": 1}}


def _envelope_variants() -> list[bytes]:
    """Envelopes as the producer writes them, then broken in each field, plain strings, other JSON."""
    out = [encode_envelope({"x": 1}), encode_envelope("é ü", ts=12.5, attempts=3, headers={"k": "v"})]
    out.append(json.dumps(ENV).encode())
    for name in ENV:
        out.append(json.dumps({k: v for k, v in ENV.items() if k != name}).encode())
        for wrong in (True, None, [1], {"a": 1}, "3", -1, 1e400, 2**40, 0, "", 1.5):
            out.append(json.dumps({**ENV, name: wrong}).encode())
    for h in ({}, [], 0, "", False, None, {"k": 1}, [1], "x", 3, True):
        out.append(json.dumps({**ENV, "h": h}).encode())
    out += [b'{"v": 1, "id": "m", "ts": NaN, "body": 1}', b'{"v": 1, "id": "m", "ts": Infinity, "body": 1}']
    out += [b'{"v": 1, "id": "m", "ts": 1e15, "body": 1}', b'{"v": 1, "id": "m", "ts": -1e15, "body": 1}']
    out += [b'{"v": 1, "id": "m", "ts": 999999999999999.9, "body": 1}']
    out += [b'{"v": 1, "id": "m", "ts": 5, "a": 2147483648, "body": 1}']
    out += [b'{"v": 1, "id": "m", "ts": 5, "a": 2147483647, "body": null}']
    out += [b'{"v": 1, "id": "m", "ts": 5, "body": "\xff"}'.replace(b"\\xff", b"\xff")]
    out += ['{"v": 1, "id": "m", "ts": 5, "body": "\u00e9"}'.encode()]
    out += [
        b'{"v": 1, "id": "m", "ts": 5, "body": "\xed\xa0\x80"}',
        b'{"v": 1, "id": "m", "ts": 5, "body": "\xc0\xaf"}',
    ]
    out += [
        b'{"v": 1, "id": "m", "ts": 5, "body": "\xf4\x90\x80\x80"}',
        b'{"v":1,"id":"m","ts":5,"body":"\xe2\x82"}',
    ]
    out += [
        b'{"v": 1, "id": "m", "ts": 7}',
        b'{"v": 1, "ts": 7, "body": 1}',
        b'{"v": 2, "id": "m", "ts": 7, "body": 1}',
    ]
    out += [b'{"v": 1, "id": "m", "ts": 7, "body": 1, "v": 2}', b'{"ts": 7, "id": "m", "body": 1}']
    out += [b'{"v": 1, "id": "m", "ts": 7, "body": 1', b"{not json", b"plain text", b"", b"\xff\xfe", b"42"]
    out += [b'["v", 1]', b'{"x": ""v"", "ts": 3}', b'{"v": 1, "zz": 1, "ts": 3}', " \u00e9".encode()]
    return out


def _lua_heads(r: redis.Redis, raws: list[bytes], side: str = "right") -> list[Any]:
    k = QueueKeys("env")
    out = []
    for raw in raws:
        r.delete(k.ready)
        r.lpush(k.ready, raw)
        keys = [k.ready, k.workers, k.delayed]
        res = r.eval(LIST_BACKLOG_LUA, len(keys), *keys, repr(time.time()), "0", side, *ENVELOPE_ARGS)
        out.append(res[5])
    return out


def test_list_script_reads_enqueue_times_as_the_envelope_does(r: redis.Redis) -> None:
    variants = _envelope_variants()
    heads = _lua_heads(r, variants)
    lua = [float(h[2:]) if h.startswith(b"t:") else None for h in heads]
    want = [enqueued_time(raw) for raw in variants]
    assert lua == want, [(v, a, b) for v, a, b in zip(variants, lua, want, strict=True) if a != b]
    # what carries no time is named by its hash, so the reader can tell when the head changed
    assert all(h == b"h:" + hashlib.sha1(v).hexdigest().encode() for h, v in zip(heads, variants, strict=True)
               if not h.startswith(b"t:"))  # fmt: skip
    assert sum(x is not None for x in want) >= 5 and sum(x is None for x in want) > len(want) // 2


# Where the two differ, known and pinned: cjson reads 1.0 as 1 (Python refuses a float version or attempt
# count), and refuses a lone-surrogate escape that Python's json reads. Only messages no Tide producer
# writes; the effect is only where the age counts from (the envelope's time or the operator's first sight).
KNOWN_DIFFERENCES = [
    (b'{"v": 1.0, "id": "m", "ts": 5, "body": 1}', b"t:5", None),
    (b'{"v": 1, "id": "m", "ts": 5, "a": 2.0, "body": 1}', b"t:5", None),
    (b'{"v": 1, "id": "m", "ts": 5, "body": "\\ud800"}', "hash", 5.0),
]


def test_known_differences_between_the_script_and_the_envelope(r: redis.Redis) -> None:
    raws = [raw for raw, _, _ in KNOWN_DIFFERENCES]
    for head, (raw, lua, python) in zip(_lua_heads(r, raws), KNOWN_DIFFERENCES, strict=True):
        assert head == (b"h:" + hashlib.sha1(raw).hexdigest().encode() if lua == "hash" else lua)
        assert enqueued_time(raw) == python


def test_the_head_is_read_at_the_consuming_side(r: redis.Redis) -> None:
    k = QueueKeys("side")
    r.lpush(k.ready, encode_envelope(1, ts=100.0), encode_envelope(2, ts=200.0))  # LPUSH: 100 at the right
    keys = [k.ready, k.workers, k.delayed]
    now = repr(time.time())
    right = r.eval(LIST_BACKLOG_LUA, len(keys), *keys, now, "0", "right", *ENVELOPE_ARGS)[5]
    left = r.eval(LIST_BACKLOG_LUA, len(keys), *keys, now, "0", "left", *ENVELOPE_ARGS)[5]
    assert (right, left) == (b"t:100", b"t:200")
    assert ops.queue_stats(r, "side", now=1000.0)["oldest_age"] == 900.0
    assert ops.queue_stats(r, "side", now=1000.0, side="left")["oldest_age"] == 800.0


def test_a_plain_head_ages_from_when_the_reader_first_saw_it(r: redis.Redis, redis_url: str) -> None:
    """A plain string carries no time: its age counts from the first reading that found it at the head, and
    starts again when another message is there."""
    k = QueueKeys("plainq")
    r.lpush(k.ready, b"second", b"first")  # "second" is at the right, the consuming end

    async def go() -> list[float | None]:
        pool = ClientPool()
        try:
            client = pool.get(redis_url, False, Credentials())
            reader = make_reader(client, Source("list", "plainq"), pool.batcher(client))
            ages = [
                (await reader.read(1000.0)).backlog.oldest_age,
                (await reader.read(1007.0)).backlog.oldest_age,
            ]
            r.rpop(k.ready)  # the head changes
            ages.append((await reader.read(1010.0)).backlog.oldest_age)
            ages.append((await reader.read(1012.5)).backlog.oldest_age)
            r.rpop(k.ready)  # empty
            ages.append((await reader.read(1013.0)).backlog.oldest_age)
            r.lpush(k.ready, encode_envelope(1, ts=1011.0))
            ages.append((await reader.read(1014.0)).backlog.oldest_age)
            return ages
        finally:
            await pool.close()

    assert asyncio.run(go()) == [0.0, 7.0, 0.0, 2.5, None, 3.0]
    assert ops.queue_stats(r, "plainq", now=1014.0)["oldest_age"] == 3.0


def test_a_streams_oldest_entry_is_the_first_after_the_group(r: redis.Redis, redis_url: str) -> None:
    """XRANGE after the group's last delivered id as the previous reading saw it: exact while the group
    stays, bounded above by the last delivered entry's time when it moved; the stream's first entry
    without a group."""
    for i in range(1, 6):
        r.xadd("ages", {"n": i}, id=f"{i * 1000}-0")

    async def go() -> list[float | None]:
        pool = ClientPool()
        try:
            client = pool.get(redis_url, False, Credentials())
            reader = make_reader(client, Source("stream", "ages", "g"), pool.batcher(client))
            ages = [(await reader.read(10.0)).backlog.oldest_age]  # no group: the first entry, 1 s
            r.xgroup_create("ages", "g", id="0")
            ages.append((await reader.read(10.0)).backlog.oldest_age)  # read after "-": entry 1
            r.xreadgroup("g", "c", {"ages": ">"}, count=2)  # delivered 1 and 2
            ages.append((await reader.read(10.0)).backlog.oldest_age)  # moved: bound by entry 2 (2 s)
            ages.append((await reader.read(10.0)).backlog.oldest_age)  # exact: entry 3
            r.xreadgroup("g", "c", {"ages": ">"}, count=3)  # all delivered
            ages.append((await reader.read(10.0)).backlog.oldest_age)
            ages.append((await reader.read(10.0)).backlog.oldest_age)
            return ages
        finally:
            await pool.close()

    assert asyncio.run(go()) == [9.0, 9.0, 8.0, 7.0, None, None]
    r.xgroup_setid("ages", "g", "3000-0")
    assert ops.stream_stats(r, "ages", "g", now=10.0)["oldest_age"] == 6.0


# --- generated states: the two readings agree on any list queue and any stream --------------------------

IDS = ["a", "b", "c", "d", "e"]
worker_st = st.tuples(st.booleans(), st.booleans(), st.integers(0, 4))  # registered, alive, held


@st.composite
def list_states(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=4))
    return {
        "ready": draw(st.integers(0, 5)),
        "workers": {w: draw(worker_st) for w in ids},
        "retries": draw(st.lists(st.integers(-30, 30).filter(bool), max_size=4)),
    }


def _seed_list(r: redis.Redis, k: QueueKeys, state: dict[str, Any], t: float) -> None:
    r.delete(k.ready, k.delayed, k.workers, *[k.processing(w) for w in IDS], *[k.worker(w) for w in IDS])
    if state["ready"]:
        r.lpush(k.ready, *range(state["ready"]))
    for w, (registered, alive, held) in state["workers"].items():
        if registered:
            seed_worker(r, k.queue, w, alive=alive, held=held, rate=1.5, now=t)
        elif held:
            r.lpush(k.processing(w), *range(held))  # an orphan
    for i, off in enumerate(state["retries"]):
        r.zadd(k.delayed, {f"r{i}": t + off})


@pytest.mark.fuzz
@given(before=list_states(), after=list_states())
def test_generated_list_states_read_alike(r: redis.Redis, redis_url: str, before: Any, after: Any) -> None:
    """Any state, then any other in which no list appears for an owner the reader has never seen (that one
    waits for the next SCAN walk): the operator's readings equal `tide stats` both times."""
    # owners the reader knows after the first reading: registered, or found by its SCAN (a list exists)
    known = {w for w, (registered, _, held) in before["workers"].items() if registered or held}
    after = {
        **after,
        "workers": {
            w: (reg, alive, held if reg or w in known else 0)
            for w, (reg, alive, held) in after["workers"].items()
        },
    }
    r.flushall()
    k = QueueKeys("gen")
    t = time.time()

    async def go() -> list[tuple[Backlog, dict[str, Any]]]:
        pool = ClientPool()
        try:
            client = pool.get(redis_url, False, Credentials())
            reader = make_reader(client, Source("list", "gen"), pool.batcher(client))
            out = []
            for state in (before, after):
                _seed_list(r, k, state, t)
                reading = await reader.read(t)
                out.append((reading.backlog, ops.queue_stats(r, "gen", now=t)))
            return out
        finally:
            await pool.close()

    for backlog, stats in asyncio.run(go()):
        # plain strings: the operator ages them from when it first saw them, `tide stats` cannot
        assert stats["oldest_age"] is None
        assert (backlog.oldest_age is not None) == (backlog.ready > 0)
        assert Backlog(**{**vars(backlog), "next_retry_at": None, "oldest_age": None}) == _list_backlog(stats)
        assert backlog.total == stats["backlog"]


@pytest.mark.fuzz
@given(
    n=st.integers(0, 8),
    group=st.none() | st.tuples(st.integers(0, 8), st.integers(0, 8)),  # entries read, acked
    deleted=st.sets(st.integers(0, 7), max_size=4),
)
def test_generated_streams_read_alike(
    r: redis.Redis, redis_url: str, n: int, group: tuple[int, int] | None, deleted: set[int]
) -> None:
    r.flushall()
    ids = [r.xadd("gs", {"n": i}) for i in range(n)]
    if group is not None:
        r.xgroup_create("gs", "g", id="0", mkstream=True)
        read, acked = group
        got: Any = r.xreadgroup("g", "c1", {"gs": ">"}, count=read) if read else []
        entries = got[0][1] if got else []
        for eid, _ in entries[:acked]:
            r.xack("gs", "g", eid)
    for i in deleted:
        if i < n:
            r.xdel("gs", ids[i])
    t = time.time()
    # the second reading knows the group's position: its age is exact (the first may bound it from above)
    [first] = asyncio.run(_read(redis_url, [Source("stream", "gs", "g")], now=t))
    [reading] = asyncio.run(_read(redis_url, [Source("stream", "gs", "g")], rounds=2, now=t))
    stats = ops.stream_stats(r, "gs", "g", now=t)
    assert reading.backlog == _stream_backlog(stats)
    assert reading.backlog.total == stats["backlog"]
    assert replace(first.backlog, oldest_age=None) == replace(reading.backlog, oldest_age=None)
    if reading.backlog.oldest_age is not None:
        assert first.backlog.oldest_age is not None and first.backlog.oldest_age >= reading.backlog.oldest_age
