"""Sharding the QueueConsumers across active operator replicas: the pure part (no I/O).

A fixed number of shards (``TIDE_SHARDS``); a QueueConsumer belongs to shard ``shard_of(namespace, name)``
(a stable hash, the same in every replica and release). Each shard is one ``coordination.k8s.io`` Lease
in the operator's namespace, and so is each replica's membership slot; ``tide_operator.sharding`` reads
and writes them, this module decides:

- how many replicas are alive (``live_replicas``: holders of unexpired leases, the caller included),
- how many shards a replica may hold (``fair_share``: ceil(shards / live)), and
- what it does this round (``plan``: keep what it holds up to its share, release the extras so a new
  replica gets its share, take free or expired shards up to its share).

Times are the holder's own clock: ``expires`` is the ``renewTime`` it wrote plus ``leaseDurationSeconds``.
A holder stops its loops ``stop_margin`` before that (counted on its monotonic clock from the start of the
renew that succeeded), so any other replica that takes the shard once it expired finds them stopped, as
long as clocks differ by less than the margin (kopf's peering assumes the same of its ``lastseen``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_LIFETIME = 15.0


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of the QueueConsumer ``namespace/name``: the same in every process (not Python's salted
    ``hash``), spread evenly."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def fair_share(shards: int, live: int) -> int:
    """The most shards one of ``live`` replicas holds: ceil(shards / live) (every shard finds a holder)."""
    return math.ceil(shards / max(1, live))


def renew_period(lifetime: float) -> float:
    """How often a holder renews its leases: three chances within one lifetime."""
    return lifetime / 3


def stop_margin(lifetime: float) -> float:
    """How long before its lease expires a holder that could not renew stops the shard's loops: one renew
    period, of which up to ``stop_grace`` goes to letting a poll in progress end."""
    return lifetime / 3


def stop_grace(lifetime: float) -> float:
    """How long a stopped loop may take to end its poll before it is cancelled, on a lost lease."""
    return max(0.5, stop_margin(lifetime) - 1.0)


@dataclass(frozen=True)
class Lease:
    """What a replica reads of one Lease."""

    name: str
    holder: str  # "" when released or never held
    expires: float  # wall-clock seconds (epoch): renewTime + leaseDurationSeconds; 0 without a renewTime
    resource_version: str = ""
    transitions: int = 0

    def held_by_other(self, me: str, now: float) -> bool:
        return bool(self.holder) and self.holder != me and self.expires > now

    def free(self, now: float, me: str = "") -> bool:
        """Takeable (by ``me``): released, expired, or still naming ``me`` (a lease this process gave up
        when a renew came too late, or one of the same pod's previous container, which is gone)."""
        return not self.holder or self.expires <= now or (bool(me) and self.holder == me)


def parse_time(value: Any) -> float | None:
    """A Lease's MicroTime (``2026-12-07T00:20:58.123456Z``) as epoch seconds; None when absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def format_time(epoch: float) -> str:
    """Epoch seconds as a Lease MicroTime."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_of(obj: Mapping[str, Any]) -> Lease:
    """A Lease object from the API as a ``Lease``: a lease without a holder, renewTime or duration is free."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    renewed = parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds")
    expires = renewed + duration if renewed is not None and isinstance(duration, int | float) else 0.0
    return Lease(
        name=str(meta.get("name", "")),
        holder=str(holder),
        expires=expires if holder else 0.0,
        resource_version=str(meta.get("resourceVersion", "")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def live_replicas(leases: Iterable[Lease], me: str, now: float) -> int:
    """The replicas alive: distinct holders of unexpired leases (membership slots and shards), and ``me``."""
    return len({lease.holder for lease in leases if lease.held_by_other(me, now)} | {me})


@dataclass(frozen=True)
class Plan:
    acquire: tuple[int, ...]  # free or expired shards to take, in this order
    release: tuple[int, ...]  # held shards beyond the share, to give back


def _rotation(me: str, shards: int) -> int:
    # replicas try the free shards from different starting points, so two of them rarely race for one
    return shard_of("", me, shards)


def plan(shards: Mapping[int, Lease], held: Iterable[int], live: int, me: str, now: float) -> Plan:
    """This round's moves for ``me``, holding ``held``, with ``live`` replicas alive (``live_replicas``).

    ``shards`` has the lease of every shard that exists (a missing one is free: it is created). Above its
    share, a replica releases its highest shards and takes none; below, it takes free or expired shards
    (starting from a point of its own) until it has its share."""
    count = len(shards)
    mine = sorted(set(held))
    share = fair_share(count, live)
    if len(mine) > share:
        return Plan(acquire=(), release=tuple(mine[share:][::-1]))
    start = _rotation(me, count) if count else 0
    order = [(start + i) % count for i in range(count)]
    free = [i for i in order if i not in mine and shards[i].free(now, me)]
    return Plan(acquire=tuple(free[: share - len(mine)]), release=())


def member_slot(slots: Mapping[int, Lease], me: str, now: float) -> int | None:
    """The membership slot ``me`` holds (unexpired), else the first free one from its own starting point;
    None when every slot is held by another live replica (it then serves nothing: more replicas than
    shards)."""
    for i, lease in sorted(slots.items()):
        if lease.holder == me and lease.expires > now:
            return i
    count = len(slots)
    start = _rotation(me, count) if count else 0
    for k in range(count):
        i = (start + k) % count
        if slots[i].free(now) or slots[i].holder == me:
            return i
    return None
