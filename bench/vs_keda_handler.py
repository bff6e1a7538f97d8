"""The handler of bench/vs_keda.py: each run is recorded in Redis, from the worker's side, for the figures.

``vk:starts`` gets ``"<i> <pod> <start> <enqueued_at> <attempt>"`` when the handler starts and ``vk:dones``
gets ``"<i> <pod> <end>"`` when it returns: the wait is start - enqueued_at, and a start without a done from
the same pod is a run that was interrupted (its worker stopped before it finished).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

STARTS = "vk:starts"
DONES = "vk:dones"

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
    time.sleep(float(os.environ.get("VK_WORK_SECONDS", "0.02")))  # like a call to another service
    _redis().rpush(DONES, f"{i} {pod} {time.time():.6f}")
