"""Golden test: the dead letter reap.lua writes (on a real redis-server) is the record Python builds for the
same message: same fields and types, the id of ``Delivery.message_id``, the attempts of the decoded
envelope, the same utf-8/base64 rule for the bytes, and the time with every digit."""

from __future__ import annotations

import json
from importlib import resources

import redis
from tide_worker import ops
from tide_worker.envelope import MalformedMessage, decode, encode_envelope
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.records import DeadLetter
from tide_worker.source import Delivery

REAP_LUA = resources.files("tide_worker").joinpath("lua", "reap.lua").read_text(encoding="utf-8")


def _env(**fields: object) -> bytes:
    return json.dumps({"v": 1, "id": "m1", "ts": 1.5, "a": 2, "body": {"n": 1}, **fields}).encode()


MESSAGES: list[bytes] = [
    encode_envelope({"n": 1}, message_id="id-1", attempts=3, headers={"k": "v"}),
    encode_envelope("héllo / \u2603 \U0001f600 \x01", message_id="ünïcode"),
    b"plain text",
    b'{"x": 1, "note": "JSON, not an envelope"}',
    b'{"v": 1, "note": "claims an envelope, has neither id nor body"}',
    b"\xff\xfe not UTF-8",
    b"\xed\xa0\x80 a surrogate",  # accepted by a lax UTF-8 check, refused by Python's
    b"\xe0\x80\x80 overlong",
    b"\xf4\x90\x80\x80 past U+10FFFF",
    b"\xf0\x9f\x98\x80 four bytes",
    b'{"v": 1, "id": "\\ud800", "body": 1}',  # a lone surrogate in the id
    _env(),
    _env(h=None),
    _env(h={}),
    _env(h=[]),
    _env(h=0),
    _env(h=""),
    _env(h=[1]),
    _env(h="x"),
    _env(h=True),
    _env(ts=None),
    _env(ts="now"),
    _env(ts=1e16),
    _env(v=2),
    _env(v=None),
    _env(v="1"),
    _env(v=True),
    _env(id=""),
    _env(id=5),
    _env(a=-1),
    _env(a="2"),
    _env(a=None),
    _env(a=2**31),
    _env(a=2**31 - 1),
    _env(a=1.5),
    _env(a=True),
    json.dumps({"v": 1, "id": "m2", "a": 1}).encode(),  # no body
    json.dumps({"v": 1, "body": "b"}).encode(),  # no id
    b'{"v": 1, "id": "m3", "body": 1',  # not JSON: plain
]


def _python_record(
    raw: bytes, count: int, max_interrupts: int, queue: str, worker: str, now: float
) -> DeadLetter:
    """The poison record as Python builds a dead letter: DeadLetter.for_raw, the delivery's id."""
    try:
        msg = decode(raw, queue)
    except MalformedMessage:
        msg = None
    return DeadLetter.for_raw(
        raw,
        reason="poison",
        error=f"interrupted {count} times by worker deaths (max {max_interrupts})",
        queue=queue,
        message_id=Delivery(raw, msg).message_id,
        attempts=msg.attempts if msg is not None else 0,
        worker=worker,
        time=now,
        traceback="",
    )


def test_reap_writes_the_dead_letter_python_builds(r: redis.Redis) -> None:
    k = QueueKeys("golden")
    wid, now = "dead-w", 1732912345.123456
    r.rpush(k.processing(wid), *MESSAGES)
    keys = [k.processing(wid), k.ready, k.interrupts, k.dead, k.workers, k.worker(wid), k.stats]
    requeued, dead = r.eval(REAP_LUA, len(keys), *keys, wid, 0, "left", repr(now), "golden", 60)
    assert (requeued, dead) == (0, len(MESSAGES))  # max 0 interruptions: every message is poison
    written = [DeadLetter.decode(x) for x in reversed(r.lrange(k.dead, 0, -1))]  # LPUSHed: newest first
    want = [_python_record(raw, 1, 0, "golden", wid, now) for raw in MESSAGES]
    for raw, got, expected in zip(MESSAGES, written, want, strict=True):
        assert got == expected, raw
        assert got.raw == raw
    # the field names and JSON types too, not only the values after decoding
    for x, expected in zip(reversed(r.lrange(k.dead, 0, -1)), want, strict=True):
        obj = json.loads(x)
        assert set(obj) == set(DeadLetter.__dataclass_fields__)
        assert {n: type(v) for n, v in obj.items()} == {
            n: type(v) for n, v in json.loads(expected.encode()).items()
        }


STREAM_DEAD_LUA = (
    resources.files("tide_worker").joinpath("lua", "stream_dead.lua").read_text(encoding="utf-8")
)


def test_stream_dead_letter_reads_back_as_written(r: redis.Redis) -> None:
    """A stream's dead letter goes out as ``DeadLetter.stream_fields`` (the worker's stream_dead.lua) and
    ``tide dlq list`` reads it back with ``DeadLetter.from_stream_fields``: the same record, every type."""
    s = StreamKeys("ev", "g")
    records = [
        DeadLetter.for_raw(raw, reason="failed", error="E: x", queue="ev", message_id=f"m{i}", attempts=i + 1,
                           worker="w1", time=1732912345.123456 + i, traceback="tb")
        for i, raw in enumerate([encode_envelope("x"), b"\xff\xfe not UTF-8", "ünï \u2603".encode()])
    ]  # fmt: skip
    r.xgroup_create(s.stream, s.group, id="0", mkstream=True)
    for rec in records:
        eid = r.xadd(s.stream, {"data": rec.raw})
        r.xreadgroup(s.group, "c1", {s.stream: ">"}, count=1)
        fields = [*rec.stream_fields(), "stream_id", eid]
        assert r.eval(STREAM_DEAD_LUA, 3, s.stream, s.dead, s.stats, s.group, eid, *fields) == 1
    letters = [x.letter for x in reversed(ops.stream_dlq_list(r, "ev"))]
    assert letters == records
