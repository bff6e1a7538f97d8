"""Table-driven tests of the pure settle decision: each row is (exception, attempt, max attempts) ->
(action, delay, reason, error). The backoff is a fake recording what it was asked, so rows are exact."""

from __future__ import annotations

import asyncio
import random
import traceback
from typing import Any

import pytest
from tide_worker.config import backoff_delay
from tide_worker.errors import Reject, RetryAfter
from tide_worker.settle import HandlerTimeout, Settlement, decide, exhausted, traceback_summary, unencodable


class Gone(Reject):
    """A handler's own Reject subclass: still a rejection."""


def fake_backoff(calls: list[int]) -> Any:
    def backoff(failures: int) -> float:
        calls.append(failures)
        return 100.0 + failures

    return backoff


TIMEOUT = HandlerTimeout("handler ran past its timeout of 2 s")

ROWS: list[tuple[str, BaseException | None, int, int, str, float, str, str]] = [
    # id, exception, attempt, max attempts, action, delay, reason, error
    ("ok-first", None, 1, 3, "ack", 0.0, "", ""),
    ("ok-last", None, 3, 3, "ack", 0.0, "", ""),
    ("ok-past-max", None, 7, 3, "ack", 0.0, "", ""),
    ("error-first-backs-off-0", ValueError("boom"), 1, 3, "retry", 100.0, "", ""),
    ("error-second-backs-off-1", ValueError("boom"), 2, 3, "retry", 101.0, "", ""),
    ("error-last-fails", ValueError("boom"), 3, 3, "dead", 0.0, "failed", "ValueError('boom')"),
    ("error-past-max-fails", ValueError("boom"), 4, 3, "dead", 0.0, "failed", "ValueError('boom')"),
    ("max-1-fails-at-once", RuntimeError("x"), 1, 1, "dead", 0.0, "failed", "RuntimeError('x')"),
    ("retry-after-its-seconds", RetryAfter(2.5), 1, 3, "retry", 2.5, "", ""),
    ("retry-after-zero", RetryAfter(0), 2, 3, "retry", 0.0, "", ""),
    ("retry-after-last-fails", RetryAfter(9), 3, 3, "dead", 0.0, "failed", "RetryAfter('retry after 9 s')"),
    ("reject-first", Reject("bad input"), 1, 3, "dead", 0.0, "rejected", "bad input"),
    ("reject-default-reason", Reject(), 2, 3, "dead", 0.0, "rejected", "rejected by handler"),
    ("reject-last-is-rejected", Reject("no"), 3, 3, "dead", 0.0, "rejected", "no"),
    ("reject-subclass", Gone("gone"), 1, 5, "dead", 0.0, "rejected", "gone"),
    ("timeout-first-retries", TIMEOUT, 1, 3, "retry", 100.0, "", ""),
    ("timeout-last", TIMEOUT, 3, 3, "dead", 0.0, "timeout", f"{TIMEOUT!r}"),
    # BaseException kinds fail like any error (the runtime catches them from the handler).
    ("keyboard-interrupt-retries", KeyboardInterrupt(), 1, 2, "retry", 100.0, "", ""),
    ("keyboard-interrupt-last", KeyboardInterrupt(), 2, 2, "dead", 0.0, "failed", "KeyboardInterrupt()"),
    ("system-exit-last", SystemExit(3), 1, 1, "dead", 0.0, "failed", "SystemExit(3)"),
    ("handler-cancelled-retries", asyncio.CancelledError(), 2, 4, "retry", 101.0, "", ""),
    ("handler-cancelled-last", asyncio.CancelledError(), 4, 4, "dead", 0.0, "failed", "CancelledError()"),
]


@pytest.mark.parametrize(
    "exc,attempt,most,action,delay,reason,error", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_decide(
    exc: BaseException | None, attempt: int, most: int, action: str, delay: float, reason: str, error: str
) -> None:
    calls: list[int] = []
    s = decide(exc, attempt, most, fake_backoff(calls))
    assert (s.action, s.delay, s.reason, s.error, s.attempt) == (action, delay, reason, error, attempt)
    # The backoff (and its randomness) is drawn only for a retry that takes it, with the earlier failures.
    uses_backoff = action == "retry" and not isinstance(exc, RetryAfter)
    assert calls == ([attempt - 1] if uses_backoff else [])
    if action == "dead":
        assert exc is not None
        assert s.traceback == "".join(traceback.format_exception_only(type(exc), exc))  # never raised here
    else:
        assert s.traceback == ""


def test_dead_letter_carries_the_bounded_traceback_of_the_raised_exception() -> None:
    try:
        raise ValueError("deep")
    except ValueError as exc:
        s = decide(exc, 1, 1, fake_backoff([]))
        assert s.traceback == traceback_summary(exc)
    assert "test_settle.py" in s.traceback and s.traceback.endswith("ValueError: deep\n")


@pytest.mark.parametrize("attempt", [1, 2, 5, 40])
def test_backoff_is_full_jitter_under_the_ceiling_and_reproducible(attempt: int) -> None:
    base, cap = 0.5, 30.0

    def backoff(failures: int, rng: random.Random) -> float:
        return backoff_delay(failures, base, cap, rng)

    first = decide(ValueError(), attempt, 100, lambda n: backoff(n, random.Random(7)))
    again = decide(ValueError(), attempt, 100, lambda n: backoff(n, random.Random(7)))
    assert first == again and first.action == "retry"
    assert 0.0 <= first.delay <= min(cap, base * 2 ** (attempt - 1))


def test_a_retry_that_cannot_be_encoded_is_malformed() -> None:
    s = unencodable(ValueError("boom"), RecursionError("too deep"), 2)
    assert s == Settlement(
        "dead",
        2,
        reason="malformed",
        error="cannot be encoded for a retry (RecursionError('too deep')) after ValueError('boom')",
        traceback="ValueError: boom\n",
    )


EXHAUSTED: list[tuple[str, int, int, int, tuple[str, int, str] | None]] = [
    # id, envelope attempts, deliveries, max attempts, (reason, attempts, error) or None: it runs
    ("fresh", 0, 1, 3, None),
    ("envelope-one-left", 2, 1, 3, None),
    ("stream-redelivered-one-left", 0, 3, 3, None),
    ("envelope-used-up", 3, 1, 3, ("failed", 3, "its envelope counts 3 attempts already, max attempts 3")),
    ("envelope-past-max", 9, 1, 3, ("failed", 9, "its envelope counts 9 attempts already, max attempts 3")),
    ("stream-poison", 0, 4, 3, ("poison", 3, "delivered 4 times without finishing, past max attempts 3")),
    (
        "stream-poison-wins",
        5,
        4,
        3,
        ("poison", 5, "delivered 4 times without finishing, past max attempts 3"),
    ),
    (
        "envelope-over-deliveries",
        3,
        2,
        3,
        ("failed", 3, "its envelope counts 3 attempts already, max attempts 3"),
    ),
]


@pytest.mark.parametrize(
    "envelope,deliveries,most,expected", [r[1:] for r in EXHAUSTED], ids=[r[0] for r in EXHAUSTED]
)
def test_exhausted(envelope: int, deliveries: int, most: int, expected: tuple[str, int, str] | None) -> None:
    s = exhausted(envelope, deliveries, most)
    if expected is None:
        assert s is None
        return
    assert s is not None
    assert (s.action, s.reason, s.attempt, s.error, s.traceback) == ("dead", *expected, "")
