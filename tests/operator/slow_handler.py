"""A handler for integration tests: takes a little time per message so draining is observable."""

from __future__ import annotations

import time
from typing import Any


def handle(message: Any) -> None:
    time.sleep(0.02)
