"""The handler of bench/vs_keda.py: each run is recorded in Redis, from the worker's side, for the figures.

``vk:starts`` gets ``"<i> <pod> <start> <enqueued_at> <attempt>"`` when the handler starts and ``vk:dones``
gets ``"<i> <pod> <end>"`` when it returns (and ``vk:done-ids`` the number): the wait is start - enqueued_at, and a start without a done from
the same pod is a run that was interrupted (its worker stopped before it finished).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

STARTS = "vk:starts"
DONES = "vk:dones"
DONE_IDS = "vk:done-ids"  # set of the message numbers that finished at least once

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("TIDE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _client


def handle(msg: Any) -> None:
    started = time.time()
    i = msg.body["i"]
    pod = os.environ.get("POD_NAME", "?")
    _redis().rpush(STARTS, f"{i} {pod} {started:.6f} {msg.enqueued_at or 0:.6f} {msg.attempts}")
    # like a call to another service (flash), or a long job (the body says how long)
    time.sleep(float(msg.body.get("work", os.environ.get("VK_WORK_SECONDS", "0.02"))))
    pipe = _redis().pipeline(transaction=False)
    pipe.rpush(DONES, f"{i} {pod} {time.time():.6f}")
    pipe.sadd(DONE_IDS, i)
    pipe.execute()
