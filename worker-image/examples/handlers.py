"""Example handlers for the Tide worker image: ``TIDE_HANDLER=handlers:resize`` (or ``handlers:notify``).

Raise any exception to retry with backoff, ``Reject`` to dead-letter at once, ``RetryAfter(seconds)``
to retry after a delay you choose. Handlers may be plain functions (run in threads) or coroutines.
"""

from __future__ import annotations

import asyncio
import logging

from tide_worker import Message, Reject, RetryAfter

log = logging.getLogger("handlers")


def resize(msg: Message) -> None:
    """A sync handler: the body is whatever the producer sent (here a dict with an image URL)."""
    body = msg.body if isinstance(msg.body, dict) else {}
    url = body.get("url")
    if not url:
        raise Reject("message has no 'url'")
    log.info("resizing %s (attempt %d)", url, msg.attempts + 1)


async def notify(msg: Message) -> None:
    """An async handler: back off politely when the downstream service asks for it."""
    if msg.body == "rate-limited":
        raise RetryAfter(30)
    await asyncio.sleep(0.01)
