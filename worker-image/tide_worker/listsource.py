"""A list queue: reliable fetch into this worker's processing list, acks by LREM, retries via the retry set."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import redis.exceptions as rexc

from tide_worker import logs
from tide_worker.config import WorkerConfig
from tide_worker.envelope import MalformedMessage, decode
from tide_worker.keys import QueueKeys
from tide_worker.reaper import ListReaper
from tide_worker.records import DeadLetter
from tide_worker.scripts import Scripts
from tide_worker.source import Delivery

PROMOTE_LIMIT = 500


@runtime_checkable
class CountsUnstarted(Protocol):
    """A source that keeps a durable count of held messages no lane started (list queues; streams have
    delivery counts instead)."""

    async def fetch_counting(
        self, count: int, acks: Sequence[Delivery], unstarted: int
    ) -> list[Delivery]: ...
    async def set_unstarted(self, unstarted: int, thaw: bool = False) -> None: ...


class ListSource:
    kind = "list"
    acks_with_fetch = True  # fetch() acknowledges in the same round trip

    def __init__(self, client: Any, cfg: WorkerConfig) -> None:
        assert cfg.queue
        self.client = client
        self.cfg = cfg
        self.name = cfg.queue
        self.keys = QueueKeys(cfg.queue)
        self.proc = self.keys.processing(cfg.worker_id)
        self.unstarted_key = self.keys.unstarted(cfg.worker_id)
        self.scripts = Scripts(client)
        # BLMOVE unless forced off; switched off for good on an "unknown command" reply (Redis < 6.2).
        self.use_blmove = cfg.fetch_command != "brpoplpush"
        # The adaptive fetch takes at most an equal share of the queue per registered worker (the script).
        self.fair = "fair" if cfg.adaptive else ""
        self.reaper = ListReaper(client, self.scripts, cfg)
        self.log = logs.get()

    async def setup(self) -> None:
        await self.client.ping()

    def _delivery(self, raw: bytes, suspect: bool = False) -> Delivery:
        try:
            return Delivery(raw=raw, msg=decode(raw, self.name), suspect=suspect)
        except MalformedMessage as exc:
            return Delivery(raw=raw, msg=None, error=str(exc), suspect=suspect)

    def _deliveries(self, reply: list[Any]) -> list[Delivery]:
        """fetch_batch.lua's reply: the messages, then the 1-based positions of the suspects among them."""
        items = [x for x in reply if isinstance(x, bytes)]
        suspects = {x - 1 for x in reply if isinstance(x, int)}
        return [self._delivery(raw, i in suspects) for i, raw in enumerate(items)]

    async def fetch(self, count: int, acks: Sequence[Delivery] = (), block: bool = True) -> list[Delivery]:
        got = self._deliveries(await self._ack_fetch(count, acks))
        if got:
            return got
        raw = await self._block_one() if block else None
        return [self._delivery(raw)] if raw is not None else []

    async def fetch_counting(self, count: int, acks: Sequence[Delivery], unstarted: int) -> list[Delivery]:
        """A non-blocking fetch that also sets the unstarted count: ``unstarted`` + the messages it fetched.

        ``unstarted`` is how many held messages no lane may start before a later count lands (the
        runtime's ``_until_uncounted``); the reaper counts no interruption for that many leftmost entries.
        """
        return self._deliveries(await self._ack_fetch(count, acks, unstarted=str(unstarted)))

    async def set_unstarted(self, unstarted: int, thaw: bool = False) -> None:
        """Set the unstarted count alone (max(0, ``unstarted``)); ``thaw``: even when a requeue froze it."""
        await self._ack_fetch(0, (), unstarted=("!" if thaw else "") + str(unstarted))

    async def _ack_fetch(
        self, count: int, acks: Sequence[Delivery], counter: str = "processed", unstarted: str = ""
    ) -> Any:
        keys, args = self.fetch_call(count, acks, counter, unstarted)
        return await self.scripts.fetch_batch(keys=keys, args=args)

    def fetch_call(
        self, count: int, acks: Sequence[Delivery], counter: str = "processed", unstarted: str = ""
    ) -> tuple[list[str], list[Any]]:
        """fetch_batch.lua's keys and arguments (also for the direct lane's sync client, direct.py)."""
        keys = [
            self.name,
            self.proc,
            self.keys.stats,
            self.unstarted_key,
            self.keys.workers,
            self.keys.suspects,
        ]
        ttl = self.cfg.dedupe_ttl
        if ttl:
            keys += [self.keys.dedupe(d.message_id) for d in acks]
        args = [count, self.cfg.side, ttl, counter, unstarted, self.fair, *[d.raw for d in acks]]
        return keys, args

    def requeue_call(self, mode: str, deliveries: Sequence[Delivery]) -> tuple[list[str], list[Any]]:
        """requeue_head.lua's keys and arguments: one atomic call; the script puts them back in fetch
        order whatever the order given here (and freezes the unstarted count)."""
        return [self.proc, self.name, self.unstarted_key], [self.cfg.side, mode, *[d.raw for d in deliveries]]

    def block_call(self, timeout: float) -> tuple[str, tuple[Any, ...]] | None:
        """The blocking move's client method and arguments; None: this server and side have none (poll)."""
        if self.use_blmove:
            side = "RIGHT" if self.cfg.side == "right" else "LEFT"
            return "blmove", (self.name, self.proc, timeout, side, "LEFT")
        if self.cfg.side == "right":
            # Servers before 6.2 accept only whole seconds here.
            return "brpoplpush", (self.name, self.proc, max(1, round(timeout)))
        return None  # no blocking left-pop-and-push before BLMOVE: poll the batch fetch instead

    def blmove_refused(self, exc: rexc.ResponseError) -> bool:
        """An "unknown command" reply to BLMOVE (Redis < 6.2): switch to BRPOPLPUSH for good."""
        if "unknown command" not in str(exc).lower():
            return False
        self.use_blmove = False
        self.log.warning("BLMOVE not supported by this server: using BRPOPLPUSH")
        return True

    async def _block_one(self, timeout: float | None = None) -> bytes | None:
        timeout = self.cfg.block_timeout if timeout is None else timeout
        while (call := self.block_call(timeout)) is not None:
            name, args = call
            try:
                result: bytes | None = await getattr(self.client, name)(*args)
                return result
            except rexc.ResponseError as exc:
                if name != "blmove" or not self.blmove_refused(exc):
                    raise
        await asyncio.sleep(min(0.2, timeout))
        return None

    async def ack(self, deliveries: list[Delivery], counter: str = "processed") -> None:
        await self._ack_fetch(0, deliveries, counter)

    async def retry(self, delivery: Delivery, delay: float) -> bool:
        assert delivery.msg is not None
        due = time.time() + delay
        args = [delivery.raw, delivery.msg.retried(), due]
        removed = await self.scripts.retry(keys=[self.proc, self.keys.delayed, self.keys.stats], args=args)
        return bool(removed)

    async def dead(self, delivery: Delivery, record: DeadLetter) -> bool:
        keys = [self.proc, self.keys.dead, self.keys.stats, self.unstarted_key]
        return bool(await self.scripts.dead(keys=keys, args=[delivery.raw, record.encode()]))

    async def _return(self, mode: str, deliveries: list[Delivery]) -> int:
        keys, args = self.requeue_call(mode, deliveries)
        return int(await self.scripts.requeue_head(keys=keys, args=args))

    async def requeue(self, deliveries: list[Delivery]) -> int:
        return await self._return("only", deliveries) if deliveries else 0

    async def requeue_all(self) -> int:
        return await self._return("except", [])

    async def recover(self, held: list[Delivery]) -> int:
        """Return every message in our processing list but ``held`` (e.g. a fetch whose reply was lost)."""
        return await self._return("except", held)

    async def done_already(self, deliveries: list[Delivery]) -> list[bool]:
        keys = [self.keys.dedupe(d.message_id) for d in deliveries]
        flags = await self.scripts.exists_many(keys=keys, args=[])
        return [bool(f) for f in flags]

    async def heartbeat(self, record: bytes) -> None:
        wid = self.cfg.worker_id
        ttl_ms = int(self.cfg.heartbeat_ttl * 1000)
        keys = [self.keys.workers, self.keys.worker(wid)]
        await self.scripts.heartbeat(keys=keys, args=[wid, time.time(), record, ttl_ms])

    async def touch(self, deliveries: list[Delivery]) -> None:
        return None  # a processing list needs no visibility extension: the heartbeat covers it

    async def deregister(self) -> bool:
        wid = self.cfg.worker_id
        keys = [self.proc, self.keys.workers, self.keys.worker(wid), self.unstarted_key]
        return bool(await self.scripts.deregister(keys=keys, args=[wid]))

    def maintenance_interval(self) -> float:
        return self.cfg.promote_interval

    async def maintain(self) -> None:
        """Promote due retries to the producer end of the queue (a limited batch per call)."""
        args = [time.time(), PROMOTE_LIMIT, self.cfg.side]
        while True:
            moved = int(await self.scripts.promote_due(keys=[self.keys.delayed, self.name], args=args))
            if moved < PROMOTE_LIMIT:
                return

    async def reap(self) -> tuple[int, int]:
        return await self.reaper.run_once()

    async def release(self) -> None:
        await self.scripts.release(keys=[self.keys.reaper_lease], args=[self.cfg.worker_id])
