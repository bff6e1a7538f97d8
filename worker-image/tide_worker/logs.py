"""JSON logs: one object per line on stderr (ts, level, msg, worker, queue and any extra fields)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "tide.worker"


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **self.static,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(level: str = "INFO", **static: Any) -> logging.Logger:
    """Configure the worker logger (idempotent: replaces its handler)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(static))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def kv(**fields: Any) -> dict[str, Any]:
    """``logger.info("...", extra=kv(key=value))``."""
    return {"fields": fields}


class RateLimited:
    """Log a repeating condition (a lost connection) once, then at most every ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def should(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self.every:
            self._last[key] = now
            return True
        return False

    def reset(self, key: str) -> bool:
        """Forget ``key``; True when it had been logged (so recovery is worth a line)."""
        return self._last.pop(key, None) is not None
