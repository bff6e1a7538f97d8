"""Handlers the real `tide worker` runs in the ops end-to-end tests."""

from __future__ import annotations

import os
from typing import Any


def fail_while_flagged(msg: Any) -> None:
    """Fails while the file named by the body's ``flag`` exists: remove it to "fix the bug"."""
    body = msg.body
    if isinstance(body, dict) and body.get("flag") and os.path.exists(body["flag"]):
        raise ValueError(f"boom: {body['flag']} exists")
