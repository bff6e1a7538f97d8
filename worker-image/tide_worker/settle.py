"""What becomes of a message once its handler ran: ack, retry after a delay, or dead-letter, and why.

A pure function of the outcome (the exception or None), the attempt number and the settings, with the
jittered backoff handed in, so every rule is a table-driven test (tests/worker/test_settle.py); the
runtime only carries the decision out. The rules, in order:

1. No exception: ``ack``.
2. ``Reject``: dead-lettered at once (``rejected``, its reason as the error), whatever the attempt.
3. The last attempt (``attempt >= max_attempts``): dead-lettered as ``timeout`` (``HandlerTimeout``) or
   ``failed`` (any other exception, ``RetryAfter`` and BaseException kinds such as ``KeyboardInterrupt``
   included), with ``repr(exc)`` as the error.
4. Otherwise ``retry``: after ``RetryAfter.seconds``, or the backoff for ``attempt - 1`` earlier failures.

A fetched message whose attempts are used up before it runs is dead-lettered by ``exhausted``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tide_worker.errors import Reject, RetryAfter

TRACEBACK_FRAMES = 8
TRACEBACK_CHARS = 4000


class HandlerTimeout(Exception):
    """The handler ran past ``--handler-timeout``."""


@dataclass(frozen=True)
class Settlement:
    action: Literal["ack", "retry", "dead"]
    attempt: int  # this run's number: the dead-letter record's attempts
    delay: float = 0.0  # retry: seconds until the message is due again
    reason: str = ""  # dead: rejected, failed, timeout, malformed, poison
    error: str = ""  # dead: the record's error text
    traceback: str = ""  # dead: the record's traceback


def traceback_summary(exc: BaseException) -> str:
    """The last frames of a traceback, bounded, for the dead-letter record."""
    frames = traceback.format_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    text = "".join(frames) + "".join(traceback.format_exception_only(type(exc), exc))
    return text[-TRACEBACK_CHARS:]


def attempts_before(envelope_attempts: int, deliveries: int) -> int:
    """Runs a fetched message had before this one: its envelope's count, or a stream's redeliveries."""
    return max(envelope_attempts, deliveries - 1)


def decide(
    exc: BaseException | None, attempt: int, max_attempts: int, backoff: Callable[[int], float]
) -> Settlement:
    """The settlement of run number ``attempt``; ``backoff(n)`` is the (jittered) delay after n failures.

    ``backoff`` is called only when the retry takes the backoff delay, so randomness is drawn as before.
    """
    if exc is None:
        return Settlement("ack", attempt)
    if isinstance(exc, Reject):
        return Settlement(
            "dead", attempt, reason="rejected", error=exc.reason, traceback=traceback_summary(exc)
        )
    if attempt >= max_attempts:
        reason = "timeout" if isinstance(exc, HandlerTimeout) else "failed"
        return Settlement("dead", attempt, reason=reason, error=repr(exc), traceback=traceback_summary(exc))
    delay = exc.seconds if isinstance(exc, RetryAfter) else backoff(attempt - 1)
    return Settlement("retry", attempt, delay=delay)


def unencodable(exc: BaseException, encode_error: Exception, attempt: int) -> Settlement:
    """A list message due for a retry that cannot be written again (say, a body nested too deep)."""
    error = f"cannot be encoded for a retry ({encode_error!r}) after {exc!r}"
    return Settlement("dead", attempt, reason="malformed", error=error, traceback=traceback_summary(exc))


def exhausted(envelope_attempts: int, deliveries: int, max_attempts: int) -> Settlement | None:
    """Dead-letter a fetched message whose attempts are used up before it runs; None: it runs."""
    before = attempts_before(envelope_attempts, deliveries)
    if before < max_attempts:
        return None
    if deliveries - 1 >= max_attempts:  # a stream entry delivered again and again, never settled
        error = f"delivered {deliveries} times without finishing, past max attempts {max_attempts}"
        return Settlement("dead", before, reason="poison", error=error)
    error = f"its envelope counts {envelope_attempts} attempts already, max attempts {max_attempts}"
    return Settlement("dead", before, reason="failed", error=error)
