"""A handler for integration tests: takes a little time per message so draining is observable."""

from __future__ import annotations

import asyncio
from typing import Any


async def handle(message: Any) -> None:
    await asyncio.sleep(0.02)


async def paced(message: Any) -> None:
    """0.1 s per message: one worker at concurrency 1 finishes at most 10 messages/s."""
    await asyncio.sleep(0.1)
