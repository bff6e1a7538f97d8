"""A handler for integration tests: takes a little time per message so draining is observable."""

from __future__ import annotations

import asyncio
from typing import Any


async def handle(message: Any) -> None:
    await asyncio.sleep(0.02)


async def paced(message: Any) -> None:
    """0.1 s per message: one worker at concurrency 1 finishes at most 10 messages/s."""
    await asyncio.sleep(0.1)


def held(message: Any) -> None:
    """A job of ``{"hold": seconds}``: records in Redis which pod started it (``<queue>:held:started``) and
    which finished it (``<queue>:held:done``), so a test sees a job interrupted by a scale-down (started twice, or
    started and never done). A sync handler: it runs in a thread, as long jobs do."""
    import os
    import time

    import redis

    body = message.body if isinstance(message.body, dict) else {}
    seconds = float(body.get("hold", 0))
    r = redis.Redis.from_url(os.environ["TIDE_REDIS_URL"])
    pod = os.environ.get("TIDE_POD_NAME", "")
    queue = os.environ.get("TIDE_QUEUE", "")
    r.rpush(f"{queue}:held:started", f"{body.get('id', '')}|{pod}|{time.time()}")
    time.sleep(seconds)
    r.rpush(f"{queue}:held:done", f"{body.get('id', '')}|{pod}|{time.time()}")
    r.close()
