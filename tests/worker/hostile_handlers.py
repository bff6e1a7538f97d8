"""Handlers that misbehave, for `tide worker` subprocesses: ``--handler tests.worker.hostile_handlers:<name>``.

Like ``handlers.py``, they append what they ran to the Redis list named by TIDE_TEST_LOG.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from tide_worker import Message

from .handlers import _record


def hang_some(msg: Message) -> None:
    """Bodies starting with 'hang' block for good (no timeout can end them); others are recorded."""
    if str(msg.body).startswith("hang"):
        threading.Event().wait()
    _record(msg)


def _raise_for(msg: Message) -> None:
    if msg.body == "kbd":
        raise KeyboardInterrupt
    if msg.body == "exit":
        raise SystemExit(3)


def base_exceptions(msg: Message) -> None:
    """'kbd' raises KeyboardInterrupt, 'exit' raises SystemExit; others are recorded."""
    _raise_for(msg)
    _record(msg)


async def async_base_exceptions(msg: Message) -> None:
    await asyncio.sleep(0)
    _raise_for(msg)
    _record(msg)


async def _record_later(msg: Message) -> None:
    await asyncio.sleep(0.01)
    _record(msg)


def returns_coroutine(msg: Message) -> Coroutine[Any, Any, None]:
    """A plain function wrapping a coroutine function: the work happens when the result is awaited."""
    return _record_later(msg)


class _Later:
    def __init__(self, msg: Message) -> None:
        self.msg = msg

    def __await__(self) -> Generator[Any, None, None]:
        yield from asyncio.sleep(0.01).__await__()
        _record(self.msg)


def returns_awaitable(msg: Message) -> _Later:
    """A plain function returning an awaitable that is not a coroutine."""
    return _Later(msg)
