"""The no-op handlers every system in the worker benchmark runs: each does nothing, identically.

Completion is observed from Redis through each system's own ack signal (see worker_bench.py), so the
handlers need no side effect of their own; Celery's alone takes a ``last`` flag, see its app module.
"""

from __future__ import annotations

from typing import Any

from bench.latency_record import record


def noop(msg: Any) -> None:
    """Tide (``--handler bench.handlers:noop``) and the raw loop."""
    return None


def rq_noop() -> None:
    """RQ job function."""
    return None


async def anoop(msg: Any) -> None:
    """Tide's native form: an async handler runs on the event loop, with no thread hop."""
    return None


# --- the wait-objective bench (bench/wait_objective.py): 50 ms jobs that record their queue wait -------

WAIT_KEY = "bench:wait:"  # hash per phase: bucket (50 ms wide) -> messages that waited that long
WAIT_BUCKET = 0.05
FIRST_KEY = "bench:wait-first"  # hash: pod -> unix time its worker started its first message
_waits: dict[tuple[str, int], int] = {}
_flushed = [0.0]
_first: list[float] = []  # this process's first message, until written


async def wait50(msg: Any) -> None:
    """A 50 ms job (an awaited call) that counts its own queue wait, enqueue time to start, by phase."""
    import asyncio
    import os
    import time

    import redis.asyncio as aredis

    now = time.time()
    first = not _first
    if first:
        _first.append(now)
    if msg.enqueued_at is not None and isinstance(msg.body, dict):
        key = (str(msg.body.get("p", "")), int(max(0.0, now - msg.enqueued_at) / WAIT_BUCKET))
        _waits[key] = _waits.get(key, 0) + 1
    if first or (now - _flushed[0] >= 0.5 and _waits):
        _flushed[0] = now
        batch = dict(_waits)
        _waits.clear()
        client = aredis.Redis.from_url(os.environ["TIDE_REDIS_URL"])
        try:
            pipe = client.pipeline(transaction=False)
            if first:  # the pod's first message: the end of its start (bench/wait_objective.py)
                pipe.hsetnx(FIRST_KEY, os.environ.get("TIDE_POD_NAME", ""), repr(now))
            for (phase, bucket), n in batch.items():
                pipe.hincrby(WAIT_KEY + phase, str(bucket), n)
            await pipe.execute()
        finally:
            await client.aclose()
    await asyncio.sleep(0.05)


def lat(msg: Any) -> None:
    """Tide, latency benchmark: the producer put its enqueue time in the body."""
    record(msg.body["t"])


def rq_lat(t: float) -> None:
    record(t)
