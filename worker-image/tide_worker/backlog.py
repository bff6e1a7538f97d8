"""What a queue's backlog is: the one definition the operator scales on and ``tide stats`` shows.

A list's backlog is ready + in flight (every processing list) + retries already due; a stream's is the
consumer group's lag + its pending entries. Retries not yet due are reported but are not work for now.

Pure, no I/O: the readers (``tide stats`` in :mod:`tide_worker.ops`, the operator's
``tide_operator.redis_reader``) fetch raw counts their own way and build the ``Backlog`` here, so the two
agree in every case.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    # seconds the oldest waiting message has waited (None: nothing waits, or it cannot be told): a list's
    # message at the consuming end, a stream's first entry after the group's last delivered id
    oldest_age: float | None = None

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


# --- the computation from raw counts: the one rule set both halves apply ------------------------------


def list_backlog(
    ready: int,
    processing: Iterable[int],
    retries_total: int,
    retries_due: int,
    next_retry_at: float | None = None,
    oldest_age: float | None = None,
) -> Backlog:
    """A list queue's backlog from its raw counts.

    ``processing`` holds the length of every processing list: of registered workers *and* of orphans
    (lists whose owner is not registered: it died before registering, or its entry was removed). Their
    messages are still to be done, by the reaper handing them back, so they count as in flight.
    ``oldest_age`` is the age of the ready message at the consuming end (kept only while one is ready).
    """
    return Backlog(
        ready=int(ready),
        inflight=sum(int(n) for n in processing),
        retries_due=int(retries_due),
        retries_waiting=max(0, int(retries_total) - int(retries_due)),
        next_retry_at=next_retry_at,
        oldest_age=None if int(ready) == 0 else oldest_age,
    )


def age(since: float | None, now: float) -> float | None:
    """Seconds from ``since`` to ``now``, never negative (clocks of producers and readers differ)."""
    return None if since is None else max(0.0, float(now) - float(since))


def entry_time(entry_id: str) -> float:
    """The time a stream entry was added: its id's first part is milliseconds since 1970."""
    return stream_id(entry_id)[0] / 1000.0


def sum_backlogs(parts: Iterable[Backlog]) -> Backlog:
    """The backlog of several list queues consumed by the same workers: the sum of each part (the
    earliest next retry, the oldest waiting message of any)."""
    parts = list(parts)
    nexts = [b.next_retry_at for b in parts if b.next_retry_at is not None]
    ages = [b.oldest_age for b in parts if b.oldest_age is not None]
    return Backlog(
        ready=sum(b.ready for b in parts),
        inflight=sum(b.inflight for b in parts),
        retries_due=sum(b.retries_due for b in parts),
        retries_waiting=sum(b.retries_waiting for b in parts),
        next_retry_at=min(nexts) if nexts else None,
        oldest_age=max(ages) if ages else None,  # the wait objective holds for every list
    )


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def estimate_lag(
    length: int,
    entries_added: int | None,
    entries_read: int | None,
    last_generated_id: str | None,
    last_delivered_id: str | None,
) -> int:
    """The lag of a group Redis reports as nil (deletions or trimming past its position made it unknowable).

    Entries added minus entries read, capped by the length (the whole length when either is unknown); never
    0 while entries exist past the group's last delivered id, and 0 when the group has delivered the last
    entry ever generated.
    """
    estimate = length
    if entries_added is not None and entries_read is not None:
        estimate = min(length, max(0, int(entries_added) - int(entries_read)))
    behind = (
        last_generated_id is not None
        and last_delivered_id is not None
        and stream_id(last_generated_id) > stream_id(last_delivered_id)
    )
    if not behind:
        return 0
    return max(1, estimate) if length > 0 else estimate


@dataclass(frozen=True)
class GroupInfo:
    """What ``XINFO GROUPS`` says of one consumer group (``lag`` None when Redis cannot tell)."""

    pending: int
    lag: int | None
    entries_read: int | None
    last_delivered_id: str | None


def stream_backlog(
    length: int,
    group: GroupInfo | None,
    entries_added: int | None = None,
    last_generated_id: str | None = None,
    oldest_age: float | None = None,
) -> Backlog:
    """A stream's backlog for one consumer group.

    A missing group counts the whole stream (workers create it at id 0 and will consume all of it); that
    lag is an estimate, as is a nil lag (see :func:`estimate_lag`). A missing stream has length 0.
    """
    if group is None:
        return Backlog(
            stream_lag=int(length), lag_estimated=length > 0, oldest_age=oldest_age if length else None
        )
    if group.lag is not None:
        lag = int(group.lag)
        return Backlog(
            stream_lag=lag, stream_pending=int(group.pending), oldest_age=oldest_age if lag else None
        )
    lag = estimate_lag(length, entries_added, group.entries_read, last_generated_id, group.last_delivered_id)
    return Backlog(
        stream_lag=lag,
        stream_pending=int(group.pending),
        lag_estimated=True,
        oldest_age=oldest_age if lag else None,
    )
