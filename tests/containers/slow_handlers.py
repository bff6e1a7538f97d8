"""A handler mounted into the worker container: slow enough that a SIGTERM finds messages in flight."""

from __future__ import annotations

import time

from tide_worker import Message


def handle(msg: Message) -> None:
    time.sleep(0.2)
