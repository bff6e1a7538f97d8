"""Celery app for the worker benchmark: Redis broker from BENCH_REDIS_URL, no result backend.

The no-op task takes ``last``: the final message of a run sets a key, the completion signal (with
acks_late=False Celery acks on receipt, so an empty queue does not mean the work is done; the solo pool
runs messages in the order it receives them, so the last one finishing means all have).
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from bench.latency_record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "4")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_done = redis.Redis.from_url(URL)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(last: bool = False) -> None:
    if last:
        _done.set("bench:celery:done", 1)


@app.task(name="bench.lat")  # type: ignore[untyped-decorator]
def lat(t: float) -> None:
    record(t)
