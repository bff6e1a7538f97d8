"""A handler for integration tests: takes a little time per message so draining is observable."""

from __future__ import annotations

import asyncio
from typing import Any


async def handle(message: Any) -> None:
    await asyncio.sleep(0.02)
