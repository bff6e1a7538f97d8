"""Dead letters of list queues and streams: list, requeue (atomic, batched, filtered), purge (chunked)."""

from __future__ import annotations

import json

import pytest
import redis
from tide_worker import ops, scripts
from tide_worker.envelope import decode, encode_envelope
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.records import DeadLetter

from tests.ops.conftest import dead_letter, seed_dead


def test_list_newest_first_with_offset(r: redis.Redis) -> None:
    seed_dead(r, "q", 10)
    got = ops.dlq_list(r, "q", limit=3, offset=2)
    assert [d.message_id for d in got] == ["m7", "m6", "m5"]
    assert got[0].reason == "failed" and got[0].attempts == 3 and "boom 7" in got[0].error
    assert ops.dlq_list(r, "q", limit=0) == [] and len(ops.dlq_list(r, "q", limit=100)) == 10


def test_unreadable_record_is_listed_and_left_alone(r: redis.Redis) -> None:
    seed_dead(r, "q", 2)
    r.rpush(QueueKeys("q").dead, b"\xffnot json")  # at the tail: the oldest
    listed = ops.dlq_list(r, "q")
    assert listed[-1].reason == "unreadable" and listed[-1].raw == b"\xffnot json"
    assert ops.dlq_requeue(r, "q") == 2
    assert r.lrange(QueueKeys("q").dead, 0, -1) == [b"\xffnot json"]
    assert r.llen("q") == 2


def test_requeue_resets_attempts_keeps_id_and_order(r: redis.Redis) -> None:
    seed_dead(r, "q", 5)
    r.lpush("q", encode_envelope("already queued"))
    assert ops.dlq_requeue(r, "q") == 5
    assert r.llen(QueueKeys("q").dead) == 0
    # Workers take from the right: the waiting message first, then the dead letters oldest first.
    msgs = [decode(x) for x in r.lrange("q", 0, -1)[::-1]]
    assert [m.body for m in msgs] == ["already queued"] + [{"n": i} for i in range(5)]
    assert [m.id for m in msgs[1:]] == [f"m{i}" for i in range(5)]
    assert all(m.attempts == 0 for m in msgs)


def test_requeue_left_side_pushes_right(r: redis.Redis) -> None:
    seed_dead(r, "q", 3)
    r.rpush("q", encode_envelope("waiting"))
    assert ops.dlq_requeue(r, "q", side="left") == 3
    assert [decode(x).body for x in r.lrange("q", 0, -1)] == ["waiting", {"n": 0}, {"n": 1}, {"n": 2}]


def test_requeue_plain_and_malformed_messages_go_back_as_they_were(r: redis.Redis) -> None:
    dead = QueueKeys("q").dead
    r.lpush(dead, DeadLetter.for_raw(b"plain text", reason="failed", error="e", queue="q").encode())
    r.lpush(dead, DeadLetter.for_raw(b"\xff\xfe", reason="malformed", error="e", queue="q").encode())
    assert ops.dlq_requeue(r, "q") == 2
    assert r.lrange("q", 0, -1) == [b"\xff\xfe", b"plain text"]


def test_requeue_count_and_ids(r: redis.Redis) -> None:
    seed_dead(r, "q", 10)
    assert ops.dlq_requeue(r, "q", count=3) == 3
    assert [decode(x).id for x in r.lrange("q", 0, -1)[::-1]] == ["m0", "m1", "m2"]
    assert ops.dlq_requeue(r, "q", ids={"m8", "m5", "nope"}, batch=2) == 2
    assert [decode(x).id for x in r.lrange("q", 0, -1)[::-1]][3:] == ["m5", "m8"]
    left = [d.message_id for d in ops.dlq_list(r, "q", limit=100)]
    assert left == ["m9", "m7", "m6", "m4", "m3"]
    assert ops.dlq_requeue(r, "q", count=0) == 0


def test_requeue_skips_a_record_removed_meanwhile(r: redis.Redis) -> None:
    [d0, d1] = seed_dead(r, "q", 2)
    # The script is what makes each move atomic: a record already gone is never pushed.
    script = r.register_script(scripts.source("dlq_requeue"))
    r.lrem(QueueKeys("q").dead, 0, d0.encode())
    flags = script(keys=[QueueKeys("q").dead, "q"], args=["LPUSH", d0.encode(), b"A", d1.encode(), b"B"])
    assert flags == [0, 1] and r.lrange("q", 0, -1) == [b"B"]
    with pytest.raises(redis.ResponseError):
        script(keys=[QueueKeys("q").dead, "q"], args=["DEL", d1.encode(), b"B"])


def test_requeue_leaves_letters_that_die_meanwhile_for_the_next_run(r: redis.Redis) -> None:
    seed_dead(r, "q", 1200)
    dead = QueueKeys("q").dead
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 2:  # a worker dead-letters a new message midway
            r.lpush(dead, dead_letter(9999, "q").encode())

    assert ops.dlq_requeue(r, "q", batch=500, progress=progress) == 1200
    assert [d.message_id for d in ops.dlq_list(r, "q")] == ["m9999"]
    assert calls[0] == (0, 1200) and calls[-1] == (1200, 1200)


def test_long_list_requeue_and_purge_are_chunked_with_progress(r: redis.Redis) -> None:
    seed_dead(r, "big", 20_000)
    calls: list[tuple[int, int]] = []
    assert ops.dlq_requeue(r, "big", count=12_000, progress=lambda d, t: calls.append((d, t))) == 12_000
    assert r.llen("big") == 12_000 and r.llen(QueueKeys("big").dead) == 8_000
    assert len(calls) == 1 + 12_000 // ops.DEFAULT_BATCH
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1] == (12_000, 12_000)
    assert decode(r.rpop("big") or b"").id == "m0"

    purged: list[tuple[int, int]] = []
    assert ops.dlq_purge(r, "big", chunk=1000, progress=lambda d, t: purged.append((d, t))) == 8_000
    assert not r.exists(QueueKeys("big").dead)
    assert purged == [(i * 1000, 8000) for i in range(9)]
    assert r.llen("big") == 11_999  # the queue itself is untouched
    assert ops.dlq_purge(r, "big") == 0


def test_purge_spares_letters_that_arrive_meanwhile(r: redis.Redis) -> None:
    seed_dead(r, "q", 2500)
    dead = QueueKeys("q").dead

    def progress(done: int, total: int) -> None:
        if done == 1000:
            r.lpush(dead, dead_letter(7777, "q").encode())

    assert ops.dlq_purge(r, "q", chunk=1000, progress=progress) == 2500
    assert [d.message_id for d in ops.dlq_list(r, "q")] == ["m7777"]


def _stream_dead(r: redis.Redis, stream: str, n: int) -> list[str]:
    dead = StreamKeys(stream, "g").dead
    ids = []
    for i in range(n):
        dl = dead_letter(i, stream)
        fields = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in vars(dl).items()}
        ids.append(r.xadd(dead, fields).decode())
    return ids


def test_stream_dead_letters(r: redis.Redis) -> None:
    entry_ids = _stream_dead(r, "ev", 30)
    r.xadd(StreamKeys("ev", "g").dead, {"junk": "1"})
    got = ops.stream_dlq_list(r, "ev", limit=3, offset=1)
    assert [g.letter.message_id for g in got] == ["m29", "m28", "m27"]
    assert got[0].entry_id == entry_ids[29] and got[0].letter.attempts == 3 and got[0].letter.time == 1029.0
    assert ops.stream_dlq_list(r, "ev", limit=1)[0].letter.reason == "unreadable"
    assert len(ops.stream_dlq_list(r, "ev", limit=1000)) == 31

    calls: list[tuple[int, int]] = []
    assert ops.stream_dlq_requeue(r, "ev", count=5, batch=2, progress=lambda d, t: calls.append((d, t))) == 5
    assert calls[-1] == (5, 5)
    assert ops.stream_dlq_requeue(r, "ev", ids={"m10", "m20"}, batch=7) == 2
    msgs = [decode(f[b"data"]) for _, f in r.xrange("ev")]
    assert [m.id for m in msgs] == ["m0", "m1", "m2", "m3", "m4", "m10", "m20"]
    assert all(m.attempts == 0 for m in msgs)
    assert r.xlen(StreamKeys("ev", "g").dead) == 31 - 7

    assert ops.stream_dlq_purge(r, "ev", chunk=10) == 24
    assert r.xlen(StreamKeys("ev", "g").dead) == 0 and r.xlen("ev") == 7


def test_concurrent_requeues_never_duplicate(redis_url: str, r: redis.Redis) -> None:
    # Two operators requeue the same list at once: every letter moves exactly once.
    import threading

    seed_dead(r, "q", 4000)
    moved: list[int] = []

    def requeue() -> None:
        with redis.Redis.from_url(redis_url) as c:
            moved.append(ops.dlq_requeue(c, "q", batch=50))

    threads = [threading.Thread(target=requeue) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [decode(x).id for x in r.lrange("q", 0, -1)]
    assert len(ids) == len(set(ids)) == 4000 == sum(moved)
    assert r.llen(QueueKeys("q").dead) == 0
