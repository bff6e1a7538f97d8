"""The Leases of the shards: which shards this replica serves, kept by reading and writing
``coordination.k8s.io`` Leases in the operator's namespace (``tide_operator.shard`` decides what to take).

Two kinds of Lease, labelled ``tide.dev/shard-set=<prefix>``:

- ``<prefix>-shard-<i>``, one per shard: its holder runs the loops of the shard's QueueConsumers;
- ``<prefix>-member-<j>``, one slot per replica (as many slots as shards): a replica that holds no shard
  yet is counted alive through it, so the replicas already serving release their extras to it.

Every write is a PUT at the ``resourceVersion`` last read (a POST for a lease not there yet): the API
server refuses the second of two writers (409), so two replicas never both hold a shard. A holder renews
every ``renew_period`` (lifetime / 3). Counting from the start of the last renew that succeeded, the
watchdog stops a shard's loops ``stop_margin`` before its lease can expire, and cancels the ones still
busy ``stop_grace`` later, so a replica whose renewals fail (API server unreachable, the process stalled)
has stopped writing before any other replica may take the shard. A released shard is released only once
its loops have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tide_operator.kube import Conflict, Kube, KubeError, NotFound
from tide_operator.shard import (
    Lease,
    format_time,
    lease_of,
    live_replicas,
    member_slot,
    plan,
    renew_period,
    stop_margin,
)

log = logging.getLogger("tide_operator")

LABEL = "tide.dev/shard-set"
# How long a replica waits after joining before it takes shards (others starting with it join meanwhile).
JOIN_SECONDS = 2.0


@dataclass
class Held:
    """A lease this replica holds: what its next renew writes, and until when it may act on it."""

    resource_version: str
    acquired: str  # acquireTime, kept across renewals
    transitions: int
    deadline: (
        float  # monotonic: no other replica may take it before this (start of the last renew + lifetime)
    )
    stop_at: float  # monotonic: its loops stop here unless renewed (deadline - stop_margin)


class Sharder:
    """Holds this replica's share of the shards; ``gain(i)`` starts shard i's loops, ``lose(i, deadline)``
    stops them (and returns once they ended, or were cancelled before ``deadline``)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        prefix: str,
        shards: int,
        identity: str,
        lifetime: float,
        gain: Callable[[int], None],
        lose: Callable[[int, float], Awaitable[None]],
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.prefix = prefix
        self.shards = shards
        self.identity = identity
        self.lifetime = int(lifetime)
        self.period = renew_period(self.lifetime)
        self.margin = stop_margin(self.lifetime)
        self.gain = gain
        self.lose = lose
        self.held: dict[int, Held] = {}
        # shard -> monotonic time until which its loops may write (the stop time of its last renew)
        self.valid_until: dict[int, float] = {}
        self.member: tuple[int, Held] | None = None
        self.live = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._releasing: list[asyncio.Task[None]] = []
        self._last_error = ""
        self._counted = False

    def may_write(self, i: int) -> bool:
        """Whether the loops of shard ``i`` may still write (``kube.WRITE_FENCE``): its lease renewed
        recently enough that no other replica can take it before the stop margin."""
        return time.monotonic() < self.valid_until.get(i, 0.0)

    def _hold(self, i: int, held: Held) -> None:
        self.held[i] = held
        self.valid_until[i] = held.stop_at

    def _drop(self, i: int) -> None:
        self.valid_until.pop(i, None)
        self.held.pop(i, None)

    def shard_name(self, i: int) -> str:
        return f"{self.prefix}-shard-{i}"

    def member_name(self, j: int) -> str:
        return f"{self.prefix}-member-{j}"

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="tide: shard leases"),
            asyncio.create_task(self._watchdog(), name="tide: shard watchdog"),
        ]

    async def close(self) -> None:
        """Stop the loops of every shard held, then release its lease (and the membership slot), so other
        replicas take them at their next round instead of after the lifetime."""
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._releasing, return_exceptions=True)
        held, self.held = self.held, {}
        await asyncio.gather(*(self.lose(i, h.deadline) for i, h in held.items()))
        self.valid_until.clear()
        names = [(self.shard_name(i), h) for i, h in held.items()]
        if self.member is not None:
            names.append((self.member_name(self.member[0]), self.member[1]))
        results = await asyncio.gather(*(self._release(n, h) for n, h in names), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            log.warning(f"shard leases not released ({errors[0]!r}): they expire in {self.lifetime}s")

    # --- the rounds ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                wait = await self.round()
                self._last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server unreachable: the watchdog stops what expires
                if repr(exc) != self._last_error:
                    log.warning(f"shard leases: round failed: {exc!r}")
                    self._last_error = repr(exc)
                wait = self.period / 3
            # counted from the round's start: a round that waited on the API server renews no later
            await asyncio.sleep(max(0.05, started + wait - time.monotonic()))

    async def round(self) -> float:
        """Renew, release and acquire once; returns the seconds until the next round."""
        snapshot = list(self.held.items())  # the watchdog may drop some while the renewals are out
        renewed = await asyncio.gather(
            *(self._renew(self.shard_name(i), h) for i, h in snapshot), return_exceptions=True
        )
        failed = None
        for (i, old), new in zip(snapshot, renewed, strict=True):
            if self.held.get(i) is not old:
                continue  # the watchdog gave it up meanwhile
            if isinstance(new, BaseException):  # kept until its stop time (the watchdog)
                failed = new
            elif new is None:
                self._drop(i)
                log.warning(f"shard {i}: lease written by another replica; stopping its loops now")
                await self.lose(i, 0.0)  # past any deadline: cancelled at once
            else:
                self._hold(i, new)
        if failed is not None:
            raise failed
        # then the others' leases (renewing first: a slow list never delays a renew)
        items = await self._api(self.kube.list_leases(self.namespace, f"{LABEL}={self.prefix}"))
        now = time.time()
        found = {lease.name: lease for lease in map(lease_of, items)}
        shards = {
            i: found.get(self.shard_name(i)) or Lease(self.shard_name(i), "", 0.0) for i in range(self.shards)
        }
        slots = {
            j: found.get(self.member_name(j)) or Lease(self.member_name(j), "", 0.0)
            for j in range(self.shards)
        }
        await self._keep_membership(slots, now)
        if not self._counted:
            # the first round only joins (a membership slot): replicas started together see each other at
            # their next round before taking shards, instead of one taking all and handing half back
            self._counted = True
            return min(self.period, JOIN_SECONDS)

        self.live = live_replicas([*shards.values(), *slots.values()], self.identity, now)
        moves = plan(shards, self.held, self.live, self.identity, now)
        for i in moves.release:
            held = self.held.pop(i, None)
            if held is not None:  # in the background: this round goes on renewing the others
                self._releasing = [t for t in self._releasing if not t.done()]
                self._releasing.append(asyncio.create_task(self._give_back(i, held)))
        for i in moves.acquire:
            taken = await self._acquire(shards[i])
            if taken is not None:
                self._hold(i, taken)
                log.info(f"shard {i}: acquired ({len(self.held)} held, {self.live} alive)")
                self.gain(i)
        wait = self.period
        if len(self.held) < -(-self.shards // self.live):
            # short of its share: look again just after the next lease of another replica expires
            pending = [s.expires - now for s in shards.values() if s.holder and s.holder != self.identity]
            if pending:
                wait = min(wait, max(0.05, min(pending) + 0.05))
        return wait

    async def _give_back(self, i: int, held: Held) -> None:
        """Release a shard beyond this replica's share: its loops end first, then the lease is freed."""
        log.info(f"shard {i}: releasing it for another replica ({self.live} alive)")
        await self.lose(i, held.deadline)  # its loops may write until they end (within the lease)
        self.valid_until.pop(i, None)
        try:
            await self._release(self.shard_name(i), held)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning(f"shard {i}: release failed ({exc!r}): it expires in {self.lifetime}s")

    async def _keep_membership(self, slots: dict[int, Lease], now: float) -> None:
        if self.member is not None:
            j, held = self.member
            new = await self._renew(self.member_name(j), held)
            self.member = None if new is None else (j, new)
            if new is not None:
                return
        j_free = member_slot(slots, self.identity, now)
        if j_free is not None:
            taken = await self._acquire(slots[j_free])
            if taken is not None:
                self.member = (j_free, taken)

    async def _watchdog(self) -> None:
        """Stops the loops of a shard whose lease was not renewed in time, before anyone may take it."""
        while True:
            now = time.monotonic()
            late = [(i, h) for i, h in self.held.items() if now >= h.stop_at]
            for i, _ in late:
                self._drop(i)
            if late:
                log.warning(
                    f"shards {sorted(i for i, _ in late)}: leases not renewed within "
                    f"{self.lifetime - self.margin:.0f}s; stopping their loops before they expire"
                )
                await asyncio.gather(*(self.lose(i, h.deadline) for i, h in late))
            await asyncio.sleep(0.2)

    # --- one lease -------------------------------------------------------------------------------------

    async def _api(self, call: Awaitable[dict[str, Any]] | Awaitable[list[dict[str, Any]]]) -> Any:
        # an API server slowed down (bursts on 1,000 resources on two busy cores) may take seconds: wait
        # as long as a renew could still count; the watchdog stops the loops in time regardless
        return await asyncio.wait_for(call, timeout=self.lifetime - self.margin)

    def _body(self, name: str, resource_version: str, spec: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": {LABEL: self.prefix}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _spec(self, acquired: str, renewed: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lifetime,
            "acquireTime": acquired,
            "renewTime": format_time(renewed),
            "leaseTransitions": transitions,
        }

    def _held(self, obj: dict[str, Any], started: float, acquired: str, transitions: int) -> Held:
        deadline = started + self.lifetime
        return Held(
            resource_version=str((obj.get("metadata") or {}).get("resourceVersion", "")),
            acquired=acquired,
            transitions=transitions,
            deadline=deadline,
            stop_at=deadline - self.margin,
        )

    async def _renew(self, name: str, held: Held) -> Held | None:
        """The renewed lease, or None when another replica wrote it (Conflict) or it is gone. Other
        errors propagate: the lease is kept until the watchdog's stop time."""
        started, wall = time.monotonic(), time.time()
        body = self._body(name, held.resource_version, self._spec(held.acquired, wall, held.transitions))
        try:
            obj = await self._api(self.kube.replace_lease(self.namespace, body))
        except (Conflict, NotFound):
            return None
        return self._held(obj, started, held.acquired, held.transitions)

    async def _acquire(self, lease: Lease) -> Held | None:
        """Take a free or expired lease (create it when missing); None when another replica was first."""
        started, wall = time.monotonic(), time.time()
        acquired = format_time(wall)
        transitions = lease.transitions + (1 if lease.resource_version else 0)
        body = self._body(lease.name, lease.resource_version, self._spec(acquired, wall, transitions))
        try:
            if lease.resource_version:
                obj = await self._api(self.kube.replace_lease(self.namespace, body))
            else:
                obj = await self._api(self.kube.create_lease(self.namespace, body))
        except (Conflict, NotFound):
            return None
        return self._held(obj, started, acquired, transitions)

    async def _release(self, name: str, held: Held) -> None:
        body = self._body(name, held.resource_version, {"leaseTransitions": held.transitions})
        with contextlib.suppress(Conflict, NotFound):  # taken or gone already: nothing to give back
            await self._api(self.kube.replace_lease(self.namespace, body))
