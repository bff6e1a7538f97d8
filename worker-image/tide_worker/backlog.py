"""What a queue's backlog is: the one definition the operator scales on and ``tide stats`` shows.

A list's backlog is ready + in flight (every processing list) + retries already due; a stream's is the
consumer group's lag + its pending entries. Retries not yet due are reported but are not work for now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backlog:
    """One reading of a source. Lists fill the first five fields; streams the last three."""

    ready: int = 0
    inflight: int = 0
    retries_due: int = 0
    retries_waiting: int = 0
    next_retry_at: float | None = None
    stream_lag: int = 0
    stream_pending: int = 0
    lag_estimated: bool = False

    @property
    def total(self) -> int:
        """What workers still have to do: retries not yet due are not work for now."""
        return self.ready + self.inflight + self.retries_due + self.stream_lag + self.stream_pending

    @property
    def busy(self) -> int:
        """Messages held by workers (or orphaned by dead ones): never scale to zero under them."""
        return self.inflight + self.stream_pending

    def describe(self) -> str:
        if self.stream_lag or self.stream_pending or self.lag_estimated:
            est = " estimated" if self.lag_estimated else ""
            return f"lag {self.stream_lag}{est}, pending {self.stream_pending}"
        return f"ready {self.ready}, in-flight {self.inflight}, retries due {self.retries_due}"
