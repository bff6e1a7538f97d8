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


def lat(msg: Any) -> None:
    """Tide, latency benchmark: the producer put its enqueue time in the body."""
    record(msg.body["t"])


def rq_lat(t: float) -> None:
    record(t)
