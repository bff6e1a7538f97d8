"""Records workers write and tools read: dead letters and heartbeats (JSON objects; a reader takes the
fields it knows and refuses a value of the wrong type, so fields can be added without breaking readers)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


def _fields(cls: type[R], data: bytes | str) -> R:
    """A record from its JSON, or ValueError: whatever is stored under a record's key (a foreign value,
    JSON nested past the decoder's limit, a field of the wrong type) makes no tool reading it crash."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError("record JSON nested too deep") from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("record is not a JSON object")
    known: dict[str, Any] = {}
    for name, f in cls.__dataclass_fields__.items():  # type: ignore[attr-defined]
        if name not in obj:
            continue
        value = obj[name]
        if f.type == "str" and not isinstance(value, str):
            raise ValueError(f"record field {name!r} is not a string")
        if f.type in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"record field {name!r} is not a finite number")
            if f.type == "int":
                if value != int(value):
                    raise ValueError(f"record field {name!r} is not an integer")
                value = int(value)  # Lua's cjson writes some integers as floats
        known[name] = value
    try:
        return cls(**known)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"record incomplete: {exc}") from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (say, in a handler's Reject reason): escaped instead
        return json.dumps(obj, separators=(",", ":")).encode()


def clean_text(text: str) -> str:
    """``text`` with lone surrogates escaped, so it can be written to Redis (UTF-8) and logs."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def raw_to_text(raw: bytes) -> tuple[str, str]:
    """(text, encoding) for storing arbitrary message bytes in JSON: utf-8 when possible, else base64."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def text_to_raw(text: str, encoding: str) -> bytes:
    return base64.b64decode(text, validate=True) if encoding == "base64" else text.encode("utf-8")


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
        return _dumps(asdict(self))

    def stream_fields(self) -> list[str | int | float]:
        """The record as field/value pairs of a dead-letter stream entry (``XADD``), one per field."""
        out: list[str | int | float] = []
        for name, value in asdict(self).items():
            out += [name, value if isinstance(value, str | int | float) else str(value)]
        return out

    @classmethod
    def from_stream_fields(cls, fields: Mapping[Any, Any], stream: str) -> DeadLetter:
        """The record of a dead-letter stream entry (its values come back as text), or ValueError. A
        field missing but ``message`` takes its default (``queue``: the stream)."""
        obj = {_text(f): _text(v) for f, v in fields.items()}
        if "message" not in obj:
            raise ValueError("stream entry without a 'message' field")
        known: dict[str, Any] = {f: obj[f] for f in cls.__dataclass_fields__ if f in obj}
        known["attempts"] = int(known.get("attempts", 0) or 0)
        known["time"] = float(known.get("time", 0) or 0)
        known.setdefault("encoding", "utf-8")
        known.setdefault("reason", "")
        known.setdefault("error", "")
        known.setdefault("queue", stream)
        return cls(**known).checked()

    @classmethod
    def decode(cls, data: bytes | str) -> DeadLetter:
        """The record, or ValueError when ``data`` is not one."""
        return _fields(cls, data).checked()

    def checked(self) -> DeadLetter:
        """``self`` when its message can be turned back into bytes, else ValueError: a record with a
        corrupt payload is shown as unreadable and left in place, never requeued as something else."""
        if self.encoding not in ("utf-8", "base64"):
            raise ValueError(f"record encoding {self.encoding!r} is neither utf-8 nor base64")
        if not math.isfinite(self.time):
            raise ValueError("record time is not a finite number")
        try:
            self.raw  # noqa: B018 (decoded for the check only)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError(f"record message cannot be decoded as {self.encoding}: {exc}") from None
        return self


@dataclass
class Heartbeat:
    """The value of ``{Q}:worker:<id>``, refreshed every few seconds with a TTL.

    ``rate`` is messages finished per second over the last ``rate_window`` seconds; the operator sizes
    for a drain-time objective from it. ``pod`` and ``namespace`` name the worker's pod (downward API;
    empty outside Kubernetes) and ``oldest_started`` is when the oldest running message started (unix
    seconds, 0 when none runs): from them and ``inflight`` the operator sets the pod's deletion cost
    before a scale-down, so idle pods go first. ``idle_since`` is when the worker last finished its work
    with nothing left running (unix seconds, its start if it never ran anything; 0 while it runs or holds
    a message): a pod idle long enough goes before the scale-down window ends (``idle_for``).
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
    pod: str = ""
    namespace: str = ""
    oldest_started: float = 0.0
    idle_since: float = 0.0

    def idle_for(self) -> float:
        """Seconds the worker had been idle when it wrote this (0 while busy): the worker's own clock on
        both sides, so no skew; a lower bound, as it may have been idle since. lua/list_backlog.lua in the
        operator computes the same."""
        return max(0.0, self.ts - self.idle_since) if self.idle_since > 0 else 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Heartbeat:
        """The record, or ValueError when ``data`` is not one."""
        return _fields(cls, data)
