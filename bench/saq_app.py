"""SAQ app for the worker benchmark: Redis from BENCH_REDIS_URL, a no-op job and a latency job.

``saq bench.saq_app.settings`` runs one worker at SAQ's default concurrency (10) unless
BENCH_SAQ_CONCURRENCY sets the tuned mode.
"""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from bench.latency_record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
queue = Queue.from_url(URL, name="bench")


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def lat(ctx: dict[str, Any], *, t: float) -> None:
    record(t)


settings: dict[str, Any] = {"queue": queue, "functions": [noop, lat]}
if "BENCH_SAQ_CONCURRENCY" in os.environ:
    settings["concurrency"] = int(os.environ["BENCH_SAQ_CONCURRENCY"])
