"""arq app for the worker benchmark: Redis from BENCH_REDIS_URL, a no-op job and a latency job.

``arq bench.arq_app.WorkerSettings`` runs it at arq's defaults (max_jobs 10, poll_delay 0.5 s);
BENCH_ARQ_MAX_JOBS and BENCH_ARQ_POLL_DELAY set the tuned mode.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings

from bench.latency_record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def lat(ctx: dict[str, Any], t: float) -> None:
    record(t)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, lat]
    redis_settings = RedisSettings.from_dsn(URL)
    # Only what the tuned mode sets is passed; the rest stays arq's default.
    if "BENCH_ARQ_MAX_JOBS" in os.environ:
        max_jobs = int(os.environ["BENCH_ARQ_MAX_JOBS"])
    if "BENCH_ARQ_POLL_DELAY" in os.environ:
        poll_delay = float(os.environ["BENCH_ARQ_POLL_DELAY"])
