"""The message envelope: what producers write and workers decode.

A Tide producer writes compact JSON ``{"v": 1, "id": ..., "ts": ..., "a": 0, "body": ...}``. Anything
else that is valid UTF-8 (a plain string pushed by another program, or JSON that is not an envelope) is
consumed as the body itself, with an id derived from its bytes. Bytes that are not UTF-8, and JSON that
claims to be an envelope but is malformed, are rejected with a reason and go to the dead letters.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ENVELOPE_VERSION = 1
# Attempts past this are no count a worker wrote (it stops at --max-attempts): the number is corrupt.
MAX_ENVELOPE_ATTEMPTS = 2**31 - 1
MAX_TIME = 1e15  # seconds since 1970: any larger timestamp (or NaN, Infinity) is corrupt


class MalformedMessage(ValueError):
    """A message the worker cannot decode; its text is the reason stored with the dead letter."""


@dataclass
class Message:
    """What a handler receives."""

    id: str
    body: Any
    attempts: int
    enqueued_at: float | None
    raw: bytes
    queue: str = ""
    enveloped: bool = True
    headers: dict[str, Any] = field(default_factory=dict)

    def retried(self) -> bytes:
        """The encoded message for its next attempt (plain strings get an envelope to carry the count)."""
        return encode_envelope(
            self.body,
            message_id=self.id,
            attempts=self.attempts + 1,
            ts=self.enqueued_at,
            headers=self.headers,
        )


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\\ud800") has no UTF-8 form: escaped, it round-trips exactly.
        return json.dumps(obj, separators=(",", ":")).encode()


def new_id() -> str:
    return uuid.uuid4().hex


def encode_envelope(
    body: Any,
    *,
    message_id: str | None = None,
    attempts: int = 0,
    ts: float | None = None,
    headers: dict[str, Any] | None = None,
) -> bytes:
    env: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": message_id or new_id(),
        "ts": round(time.time() if ts is None else ts, 6),
        "a": attempts,
        "body": body,
    }
    if headers:
        env["h"] = headers
    return _dumps(env)


def plain_id(raw: bytes) -> str:
    """Stable id of a message that carries none (same bytes, same id)."""
    return "sha1:" + hashlib.sha1(raw).hexdigest()


def decode(raw: bytes | str, queue: str = "") -> Message:
    """Decode one message; raise MalformedMessage with the reason when it cannot be consumed.

    Nothing else escapes: whatever goes wrong while decoding makes the message malformed (a message that
    crashed the decoder would otherwise crash every worker that takes it, and never leave the queue).
    """
    try:
        return _decode(raw, queue)
    except MalformedMessage:
        raise
    except RecursionError:
        raise MalformedMessage("undecodable: JSON nested too deep for the decoder") from None
    except Exception as exc:  # see the docstring
        raise MalformedMessage(f"undecodable: {type(exc).__name__}: {str(exc)[:200]}") from None


def _decode(raw: bytes | str, queue: str) -> Message:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # a lone surrogate then fails as not UTF-8 below
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"undecodable: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text[:1] == "{" and '"v"' in text:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # not JSON: a plain string
        except ValueError as exc:  # valid JSON the decoder refuses (an integer of over 4300 digits)
            raise MalformedMessage(f"out of range: {exc}") from None
        if isinstance(obj, dict) and "v" in obj and ("id" in obj or "body" in obj):
            return _from_envelope(obj, raw, queue)
    return Message(
        id=plain_id(raw), body=text, attempts=0, enqueued_at=None, raw=raw, queue=queue, enveloped=False
    )


def enqueued_time(raw: bytes | str) -> float | None:
    """When a message was enqueued, by the rules of :func:`decode`: its envelope's ``ts``; None for a plain
    string, an envelope without ``ts``, and a malformed message (none of them carries a time anyone can
    trust). The operator's ``list_backlog.lua`` applies the same rule to the head of a list (a golden test,
    ``tests/operator/test_backlog_contract.py``, runs both on the same messages)."""
    try:
        return decode(raw).enqueued_at
    except MalformedMessage:
        return None


def _from_envelope(obj: dict[str, Any], raw: bytes, queue: str) -> Message:
    version = obj.get("v")
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise MalformedMessage(f"wrong shape: unsupported envelope version {_short(version)}")
    msg_id = obj.get("id")
    if not isinstance(msg_id, str) or not msg_id:
        raise MalformedMessage("wrong shape: envelope without a string 'id'")
    if not _encodable(msg_id):
        raise MalformedMessage("wrong shape: envelope 'id' is not valid Unicode (a lone surrogate)")
    if "body" not in obj:
        raise MalformedMessage("wrong shape: envelope without 'body'")
    attempts = obj.get("a", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise MalformedMessage(f"wrong shape: attempts {_short(attempts)} is not a non-negative integer")
    if attempts > MAX_ENVELOPE_ATTEMPTS:
        raise MalformedMessage(f"out of range: attempts {_short(attempts)} (at most {MAX_ENVELOPE_ATTEMPTS})")
    ts = obj.get("ts")
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
        raise MalformedMessage(f"wrong shape: timestamp {_short(ts)} is not a number")
    if ts is not None and not (abs(ts) < MAX_TIME):  # NaN compares false too
        raise MalformedMessage(f"out of range: timestamp {_short(ts)} is not a finite time")
    headers = obj.get("h") or {}
    if not isinstance(headers, dict):
        raise MalformedMessage("wrong shape: headers 'h' must be an object")
    return Message(
        id=msg_id,
        body=obj["body"],
        attempts=attempts,
        enqueued_at=float(ts) if ts is not None else None,
        raw=raw,
        queue=queue,
        enveloped=True,
        headers=headers,
    )


def _short(value: Any) -> str:
    """A value for a reason text: bounded (a corrupt field may be huge), never raising."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
