"""Records workers write and tools read: dead letters and heartbeats (JSON, versioned by their keys)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any


def raw_to_text(raw: bytes) -> tuple[str, str]:
    """(text, encoding) for storing arbitrary message bytes in JSON: utf-8 when possible, else base64."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def text_to_raw(text: str, encoding: str) -> bytes:
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


@dataclass
class DeadLetter:
    """One entry of ``{Q}:dead``: the message exactly as it was consumed, and why it died.

    ``reason`` is one of ``failed`` (max attempts), ``rejected`` (the handler raised Reject),
    ``malformed`` (undecodable or wrong shape), ``poison`` (interrupted by worker deaths too often),
    ``timeout`` (failed by the handler timeout on its last attempt).
    """

    message: str
    encoding: str
    reason: str
    error: str
    queue: str
    message_id: str = ""
    attempts: int = 0
    worker: str = ""
    time: float = field(default_factory=time.time)
    traceback: str = ""

    @classmethod
    def for_raw(cls, raw: bytes, **kw: Any) -> DeadLetter:
        text, encoding = raw_to_text(raw)
        return cls(message=text, encoding=encoding, **kw)

    @property
    def raw(self) -> bytes:
        return text_to_raw(self.message, self.encoding)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> DeadLetter:
        obj = json.loads(data)
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)


@dataclass
class Heartbeat:
    """The value of ``{Q}:worker:<id>``, refreshed every few seconds with a TTL.

    ``rate`` is messages finished per second over the last ``rate_window`` seconds; the operator sizes
    for a drain-time objective from it.
    """

    id: str
    host: str
    pid: int
    started: float
    ts: float
    concurrency: int
    inflight: int = 0
    processed: int = 0
    failed: int = 0
    rate: float = 0.0
    rate_window: float = 0.0
    version: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Heartbeat:
        obj = json.loads(data)
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)
