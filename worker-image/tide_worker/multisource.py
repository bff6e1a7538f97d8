"""Several list queues consumed by one worker, in strict priority or by weight.

A composite over one ``ListSource`` per queue: each queue keeps its own ``{Q}:...`` keys (its own
processing list, unstarted count, retry set, dead letters, registry and reaper), so every per-queue
guarantee holds as for one queue, and Redis Cluster hash tags hold per queue (one processing list cannot
span hash slots). The runtime sees one source; each ``Delivery`` carries the index of its queue.

Selection per non-blocking fetch of ``count`` messages:

- strict priority (no weights): the queues in the order given, each taking what is left of ``count``;
  a lower queue is read only when the higher ones had fewer than asked.
- weights: ``count`` slots shared out by smooth weighted round robin (nginx's: deterministic, and the
  state carries over from fetch to fetch, so the shares hold over time at any batch size); what a queue
  cannot fill goes to the others in order, so no capacity idles while any queue has messages.

Blocking (every queue was empty): one ``BLMOVE`` per queue in turn, each with a short timeout
(``MULTI_BLOCK``, at most the block timeout), then back to the non-blocking fetch over all of them.

The unstarted count (see ``runtime.Worker._until_uncounted``): the runtime gives one count, the newest
``unstarted`` fetched messages. Fetch order is kept here, so that count splits per queue exactly: a
queue's share is how many of those newest belong to it, which are the leftmost of its processing list.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import Any

from tide_worker.config import WorkerConfig
from tide_worker.listsource import ListSource
from tide_worker.records import DeadLetter
from tide_worker.source import Delivery

MULTI_BLOCK = 0.1  # seconds each queue is blocked on in turn when all are empty


class SmoothWeighted:
    """Smooth weighted round robin: each pick adds every weight to its current value, picks the largest
    (the first on a tie) and takes the total off it. Over any ``sum(weights)`` picks each index gets
    exactly its weight, spread out rather than in runs."""

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.total = sum(self.weights)
        self.current = [0] * len(self.weights)

    def pick(self) -> int:
        best = 0
        for i, w in enumerate(self.weights):
            self.current[i] += w
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return best

    def shares(self, count: int) -> list[int]:
        out = [0] * len(self.weights)
        for _ in range(count):
            out[self.pick()] += 1
        return out


class MultiListSource:
    kind = "list"
    acks_with_fetch = True

    def __init__(self, client: Any, cfg: WorkerConfig) -> None:
        assert len(cfg.queues) > 1
        self.client = client
        self.cfg = cfg
        self.name = ",".join(cfg.queues)
        self.subs = [
            ListSource(client, dataclasses.replace(cfg, queue=q, queues=[], weights=[])) for q in cfg.queues
        ]
        self.weighted = SmoothWeighted(cfg.weights) if cfg.weights else None
        # Queue index of each fetched message not yet known to be started, oldest first.
        self.order: deque[int] = deque()
        self.fetched = 0  # messages fetched so far (the runtime's positions are 1..fetched)
        self.sent: list[int | None] = [None] * len(self.subs)  # last unstarted count sent per queue

    async def setup(self) -> None:
        await self.client.ping()

    # ---- fetching ------------------------------------------------------------------------------

    def _tag(self, index: int, deliveries: list[Delivery]) -> list[Delivery]:
        for d in deliveries:
            d.origin = index
            d.queue = self.subs[index].name
            self.order.append(index)
        self.fetched += len(deliveries)
        return deliveries

    def _split(self, unstarted: int) -> list[int]:
        """The runtime's count of the newest ``unstarted`` fetched, per queue (forgetting the older)."""
        unstarted = max(0, min(unstarted, len(self.order)))
        while len(self.order) > unstarted:
            self.order.popleft()
        per = [0] * len(self.subs)
        for i in self.order:
            per[i] += 1
        return per

    def _plan(self, count: int) -> list[tuple[int, int]]:
        """(queue index, how many) in the order to try; the counts after the first are what is left."""
        if self.weighted is None or count <= 0:
            return [(i, count) for i in range(len(self.subs))]
        shares = self.weighted.shares(count)
        return [(i, shares[i]) for i in range(len(self.subs))]

    def _acks_by_queue(self, acks: Sequence[Delivery]) -> list[list[Delivery]]:
        out: list[list[Delivery]] = [[] for _ in self.subs]
        for d in acks:
            out[d.origin].append(d)
        return out

    async def _fetch(
        self, count: int, acks: Sequence[Delivery], unstarted: int | None, thaw: bool = False
    ) -> list[Delivery]:
        by_queue = self._acks_by_queue(acks)
        per = self._split(unstarted) if unstarted is not None else None
        # A negative count: the first ``credit`` messages this call fetches go to idle lanes at once, so
        # they count as started (as the script does for one queue: count + fetched, 0 at least).
        credit = max(0, -unstarted) if unstarted is not None else 0
        got: list[Delivery] = []
        plan = self._plan(count)
        short = 0  # what earlier queues could not fill (weights), or what is left (priority)
        for i, share in plan:
            sub = self.subs[i]
            want = (count - len(got)) if self.weighted is None else share + short
            want = max(0, min(want, count - len(got)))
            mark = ""
            if per is not None:
                value = per[i]
                if want == 0 and not by_queue[i] and not thaw and self.sent[i] == value:
                    continue  # nothing to fetch, ack or count here
                mark = ("!" if thaw else "") + str(value - (credit if want else 0))
            elif want == 0 and not by_queue[i]:
                continue
            items = await sub._ack_fetch(want, by_queue[i], unstarted=mark)
            fetched = self._tag(i, sub._deliveries(items))
            if per is not None:
                used = min(credit, len(fetched)) if want else 0
                self.sent[i] = max(0, per[i] - (credit if want else 0) + len(fetched))
                credit -= used
            got.extend(fetched)
            if self.weighted is not None:
                short = want - len(fetched)
        if self.weighted is not None and len(got) < count:
            # Weighted, and some queues ran short: the others fill the rest, in order.
            for i in range(len(self.subs)):
                if len(got) >= count:
                    break
                sub = self.subs[i]
                base = self.sent[i] or 0
                mark = "" if per is None else str(base - credit)
                items = await sub._ack_fetch(count - len(got), (), unstarted=mark)
                fetched = self._tag(i, sub._deliveries(items))
                if per is not None:
                    self.sent[i] = max(0, base - credit + len(fetched))
                    credit -= min(credit, len(fetched))
                got.extend(fetched)
        return got

    async def fetch(self, count: int, acks: Sequence[Delivery] = (), block: bool = True) -> list[Delivery]:
        if acks or not block:
            got = await self._fetch(count, acks, None)
            if got or not block:
                return got
        # Blocking: the runtime's counting fetch just found every queue empty, so go straight to the
        # blocking moves (a move here is counted unstarted only once a lane takes it, as for one queue).
        timeout = min(MULTI_BLOCK, self.cfg.block_timeout)
        for i, sub in enumerate(self.subs):
            raw = await sub._block_one(timeout)
            if raw is not None:
                return self._tag(i, [sub._delivery(raw)])
        return []

    async def fetch_counting(self, count: int, acks: Sequence[Delivery], unstarted: int) -> list[Delivery]:
        return await self._fetch(count, acks, unstarted)

    async def set_unstarted(self, unstarted: int, thaw: bool = False) -> None:
        await self._fetch(0, (), unstarted, thaw)

    # ---- settling ------------------------------------------------------------------------------

    async def ack(self, deliveries: list[Delivery], counter: str = "processed") -> None:
        for i, part in enumerate(self._acks_by_queue(deliveries)):
            if part:
                await self.subs[i].ack(part, counter)

    async def retry(self, delivery: Delivery, delay: float) -> bool:
        return await self.subs[delivery.origin].retry(delivery, delay)

    async def dead(self, delivery: Delivery, record: DeadLetter) -> bool:
        return await self.subs[delivery.origin].dead(delivery, record)

    async def requeue(self, deliveries: list[Delivery]) -> int:
        n = 0
        for i, part in enumerate(self._acks_by_queue(deliveries)):
            if part:
                n += await self.subs[i].requeue(part)
        return n

    async def requeue_all(self) -> int:
        n = 0
        for sub in self.subs:
            n += await sub.requeue_all()
        return n

    async def recover(self, held: list[Delivery]) -> int:
        n = 0
        for i, part in enumerate(self._acks_by_queue(held)):
            n += await self.subs[i].recover(part)
        return n

    async def done_already(self, deliveries: list[Delivery]) -> list[bool]:
        flags: dict[int, bool] = {}
        for i, part in enumerate(self._acks_by_queue(deliveries)):
            if part:
                for d, f in zip(part, await self.subs[i].done_already(part), strict=True):
                    flags[id(d)] = f
        return [flags[id(d)] for d in deliveries]

    # ---- registry, maintenance, reaping: each queue's own -----------------------------------------

    async def heartbeat(self, record: bytes) -> None:
        for sub in self.subs:
            await sub.heartbeat(record)

    async def touch(self, deliveries: list[Delivery]) -> None:
        return None

    async def deregister(self) -> bool:
        results = [await sub.deregister() for sub in self.subs]
        return any(results)

    def maintenance_interval(self) -> float:
        return self.cfg.promote_interval

    async def maintain(self) -> None:
        for sub in self.subs:
            await sub.maintain()

    async def reap(self) -> tuple[int, int]:
        back = dead = 0
        for sub in self.subs:
            b, d = await sub.reap()
            back += b
            dead += d
        return back, dead

    async def release(self) -> None:
        for sub in self.subs:
            await sub.release()
