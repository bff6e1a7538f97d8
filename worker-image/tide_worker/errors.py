"""Exceptions a handler raises to steer what happens to its message (any other exception retries it)."""

from __future__ import annotations


class Reject(Exception):
    """Dead-letter the message now, without further attempts (reason ``rejected``)."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class RetryAfter(Exception):
    """Retry the message after ``seconds`` instead of the backoff delay; still counts as an attempt."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        if seconds < 0:
            raise ValueError(f"RetryAfter needs seconds >= 0, not {seconds}")
        super().__init__(reason or f"retry after {seconds:g} s")
        self.seconds = float(seconds)
