"""Generated messages (hypothesis): whatever the bytes, decoding gives a Message or MalformedMessage, and
a real worker handles or dead-letters each with a reason, loses none and stays up."""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tide_worker.envelope import MalformedMessage, Message, decode
from tide_worker.keys import QueueKeys
from tide_worker.records import DeadLetter

from .conftest import wait_until

K = QueueKeys("q")
MAX_ATTEMPTS = 5
WORKER_RECURSION_LIMIT = 1000  # Python's default, which the worker process keeps (pytest raises it)
FIELDS = ("v", "id", "ts", "a", "body", "h")
ODD_NUMBERS = (
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.0", "1.0", "1E2",
    "123456789012345678901234567890", "9" * 4301, "-" + "1" * 5000, "4294967296", "2147483648",
)  # fmt: skip

# Unicode with lone surrogates (JSON escapes them) and the rest of the planes.
odd_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12)


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def value_texts(draw: st.DrawFn) -> str:
    """The JSON text of one field value: a generated value, an odd number literal, or deep nesting."""
    kind = draw(st.sampled_from(["value", "value", "number", "deep"]))
    if kind == "number":
        return draw(st.sampled_from(ODD_NUMBERS))
    if kind == "deep":
        # Shallow or far past the decoder's limit; never near it, where the outcome would depend on
        # how deep the caller's stack already is.
        depth = draw(st.integers(0, 400) | st.integers(1500, 6000))
        return draw(st.sampled_from([_deep(depth), '{"x":' * depth + "1" + "}" * depth]))
    return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """An envelope-looking object: a valid one with some fields dropped or replaced, keys in any order."""
    fields = {"v": "1", "id": json.dumps(draw(odd_text.filter(bool))), "ts": "1700000000.5", "a": "0"}
    fields["body"] = draw(value_texts())
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            fields[name] = draw(value_texts())
        else:
            fields.pop(name, None)
    fields["v"] = fields.get("v", "1")  # keep it looking like an envelope most of the time
    names = draw(st.permutations(list(fields)))
    text = "{" + ",".join(f'"{n}":{fields[n]}' for n in names) + "}"
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate written raw is not UTF-8


messages = st.one_of(
    st.binary(max_size=64),
    odd_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    value_texts().map(str.encode),
    envelopes(),
)


def outcome(raw: bytes) -> str:
    """What the worker must do with ``raw`` (decoded in this process, the same way)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(WORKER_RECURSION_LIMIT)  # how deep JSON may nest depends on it
    try:
        msg = decode(raw, "q")
    except MalformedMessage:
        return "malformed"
    finally:
        sys.setrecursionlimit(limit)
    return "failed" if msg.attempts >= MAX_ATTEMPTS else "processed"


@pytest.mark.fuzz
@given(raw=messages)
def test_decode_returns_a_message_or_raises_malformed(raw: bytes) -> None:
    try:
        msg = decode(raw, "q")
    except MalformedMessage as exc:
        assert str(exc)  # the reason stored with the dead letter
        return
    assert isinstance(msg, Message) and isinstance(msg.id, str) and msg.id
    assert msg.attempts >= 0 and msg.raw == raw
    # A retry writes it again: that must encode, and decode back to the same message, one attempt on.
    again = decode(msg.retried(), "q")
    assert (again.id, again.attempts) == (msg.id, msg.attempts + 1)
    assert json.dumps(again.body, allow_nan=True) == json.dumps(msg.body, allow_nan=True)


def _settled(r: Any, processed_before: int, dead_before: int, n: int) -> bool:
    processed = int(r.hget(K.stats, "processed") or 0) - processed_before
    dead = r.llen(K.dead) - dead_before
    busy = r.llen("q") + sum(r.llen(k) for k in r.scan_iter(match="{q}:processing:*"))
    return processed + dead == n and busy == 0


@pytest.mark.fuzz
def test_worker_handles_or_dead_letters_every_generated_message(r, spawn) -> None:
    args = ["--queue", "q", "--handler", "tests.worker.handlers:noop", "--batch-size", "8"]
    w = spawn(*args, "--max-attempts", str(MAX_ATTEMPTS), "--block-timeout", "0.5")
    budget = max(5, settings.default.max_examples // 6)  # one worker for all; fewer, larger examples

    @settings(settings.default, max_examples=budget)
    @given(batch=st.lists(messages, min_size=1, max_size=25))
    def run(batch: list[bytes]) -> None:
        processed_before = int(r.hget(K.stats, "processed") or 0)
        dead_before = r.llen(K.dead)
        for raw in batch:
            r.lpush("q", raw)
        wait_until(lambda: _settled(r, processed_before, dead_before, len(batch)), what="all settled")
        added = r.llen(K.dead) - dead_before  # newest first
        new_dead = [DeadLetter.decode(x) for x in r.lrange(K.dead, 0, added - 1)] if added else []
        assert all(dl.error for dl in new_dead)
        got = Counter((dl.raw, dl.reason) for dl in new_dead)
        expected = Counter((raw, outcome(raw)) for raw in batch if outcome(raw) != "processed")
        assert got == expected
        assert w.proc.poll() is None, w.logs()[-3000:]

    run()
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.logs()[-3000:]
