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
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()


def plain_id(raw: bytes) -> str:
    """Stable id of a message that carries none (same bytes, same id)."""
    return "sha1:" + hashlib.sha1(raw).hexdigest()


def decode(raw: bytes | str, queue: str = "") -> Message:
    """Decode one message; raise MalformedMessage with the reason when it cannot be consumed."""
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"undecodable: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text[:1] == "{" and '"v"' in text:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "v" in obj and ("id" in obj or "body" in obj):
            return _from_envelope(obj, raw, queue)
    return Message(
        id=plain_id(raw), body=text, attempts=0, enqueued_at=None, raw=raw, queue=queue, enveloped=False
    )


def _from_envelope(obj: dict[str, Any], raw: bytes, queue: str) -> Message:
    version = obj.get("v")
    if version != ENVELOPE_VERSION:
        raise MalformedMessage(f"wrong shape: unsupported envelope version {version!r}")
    msg_id = obj.get("id")
    if not isinstance(msg_id, str) or not msg_id:
        raise MalformedMessage("wrong shape: envelope without a string 'id'")
    if "body" not in obj:
        raise MalformedMessage("wrong shape: envelope without 'body'")
    attempts = obj.get("a", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise MalformedMessage(f"wrong shape: attempts {attempts!r} is not a non-negative integer")
    ts = obj.get("ts")
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
        raise MalformedMessage(f"wrong shape: timestamp {ts!r} is not a number")
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


def message_id_of(raw: bytes) -> str:
    """The id a message will be known by, or its byte hash when it cannot be decoded."""
    try:
        return decode(raw).id
    except MalformedMessage:
        return plain_id(raw)
