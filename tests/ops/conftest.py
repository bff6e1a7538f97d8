"""Helpers for the ops tests: seed keys by hand in the contract layout, as workers would write them."""

from __future__ import annotations

import time
from typing import Any

from tide_worker.envelope import encode_envelope
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter, Heartbeat


def dead_letter(i: int, queue: str = "q", **kw: Any) -> DeadLetter:
    raw = encode_envelope({"n": i}, message_id=f"m{i}", attempts=3)
    fields: dict[str, Any] = {
        "reason": "failed",
        "error": f"ValueError: boom {i}",
        "queue": queue,
        "message_id": f"m{i}",
        "attempts": 3,
        "worker": "w1",
        "time": 1000.0 + i,
    }
    fields.update(kw)
    return DeadLetter.for_raw(raw, **fields)


def seed_dead(client: Any, queue: str, n: int, start: int = 0) -> list[DeadLetter]:
    """Push n dead letters the way workers do (LPUSH, newest first); returns them oldest first."""
    letters = [dead_letter(i, queue) for i in range(start, start + n)]
    dead = QueueKeys(queue).dead
    for off in range(0, n, 5000):
        client.lpush(dead, *[d.encode() for d in letters[off : off + 5000]])
    return letters


def seed_worker(
    client: Any, queue: str, wid: str, *, alive: bool = True, held: int = 0, rate: float = 0.0, now: float
) -> None:
    k = QueueKeys(queue)
    client.zadd(k.workers, {wid: now - 1})
    if alive:
        hb = Heartbeat(
            id=wid,
            host="h",
            pid=1,
            started=now - 60,
            ts=now - 1,
            concurrency=4,
            inflight=held,
            rate=rate,
            processed=100,
        )
        client.set(k.worker(wid), hb.encode(), ex=30)
    if held:
        client.lpush(k.processing(wid), *[encode_envelope(i) for i in range(held)])


def now() -> float:
    return time.time()
