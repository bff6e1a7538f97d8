"""A stream consumed by a consumer group: XREADGROUP, XACK, XAUTOCLAIM, delivery counts for dead letters.

Retries leave the entry pending: its idle time is set so that it becomes claimable after the backoff
delay (XCLAIM ... IDLE), and XAUTOCLAIM, run by every live worker, redelivers it. The delay is
therefore capped at ``--claim-idle``. The delivery count is the attempt count: past ``--max-attempts``
an entry goes to ``{S}:dead`` (a stream) with the fields of a DeadLetter record, and is acked.
A killed consumer's entries are claimed by live workers once idle past ``--claim-idle``; running
entries are kept fresh by re-claiming them at each heartbeat, so long handlers are not claimed away.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rexc

from tide_worker import logs
from tide_worker.config import WorkerConfig
from tide_worker.envelope import MalformedMessage, Message, decode
from tide_worker.keys import StreamKeys
from tide_worker.records import DeadLetter
from tide_worker.scripts import Scripts
from tide_worker.source import Delivery

STREAM_FIELD = b"data"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamSource:
    kind = "stream"
    acks_with_fetch = False  # XREADGROUP blocks: acks go on their own

    def __init__(self, client: Any, cfg: WorkerConfig) -> None:
        assert cfg.stream and cfg.group
        self.client = client
        self.cfg = cfg
        self.name = cfg.stream
        self.group = cfg.group
        self.keys = StreamKeys(cfg.stream, cfg.group)
        self.scripts = Scripts(client)
        self.claimed: list[Delivery] = []
        self.claim_ms = int(cfg.claim_idle * 1000)
        self.log = logs.get()

    async def setup(self) -> None:
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
            self.log.info("created consumer group", extra=logs.kv(stream=self.name, group=self.group))
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _delivery(
        self, entry_id: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int
    ) -> Delivery:
        eid = _text(entry_id)
        fields = fields or {}
        if STREAM_FIELD in fields:
            raw = fields[STREAM_FIELD]
            try:
                msg = decode(raw, self.name)
            except MalformedMessage as exc:
                return Delivery(raw=raw, msg=None, error=str(exc), entry_id=eid, deliveries=deliveries)
        else:
            try:
                body = {_text(k): _text(v) for k, v in fields.items()}
            except UnicodeDecodeError as exc:
                raw = repr(fields).encode()
                return Delivery(
                    raw=raw, msg=None, error=f"undecodable: {exc}", entry_id=eid, deliveries=deliveries
                )
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            msg = Message(
                id=eid,
                body=body,
                attempts=0,
                enqueued_at=int(eid.split("-", 1)[0]) / 1000.0,
                raw=raw,
                queue=self.name,
                enveloped=False,
            )
        msg.attempts = max(msg.attempts, deliveries - 1)
        return Delivery(raw=raw, msg=msg, entry_id=eid, deliveries=deliveries)

    async def fetch(self, count: int, acks: Sequence[Delivery] = (), block: bool = True) -> list[Delivery]:
        if acks:  # not used by the runtime (acks_with_fetch is False), but honoured
            await self.ack(list(acks))
        if self.claimed:
            out, self.claimed = self.claimed[:count], self.claimed[count:]
            return out
        wait = int(self.cfg.block_timeout * 1000) if block else None
        reply = await self.client.xreadgroup(
            self.group, self.cfg.worker_id, {self.name: ">"}, count=count, block=wait
        )
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append(self._delivery(entry_id, fields, 1))
        return out

    async def ack(self, deliveries: list[Delivery], counter: str = "processed") -> None:
        keys = [self.name, self.keys.stats]
        ttl = self.cfg.dedupe_ttl
        if ttl:
            keys += [self.keys.dedupe(d.message_id) for d in deliveries]
        args = [self.group, ttl, counter, *[d.entry_id for d in deliveries]]
        await self.scripts.stream_ack(keys=keys, args=args)

    async def retry(self, delivery: Delivery, delay: float) -> bool:
        # Leave it pending, idle enough to be claimed again once the delay has passed.
        idle = max(0, self.claim_ms - int(delay * 1000))
        claimed = await self.client.xclaim(
            self.name, self.group, self.cfg.worker_id, 0, [delivery.entry_id], idle=idle, justid=True
        )
        return bool(claimed)

    async def dead(self, delivery: Delivery, record: DeadLetter) -> bool:
        fields: list[Any] = [*record.stream_fields(), "stream_id", delivery.entry_id]
        keys = [self.name, self.keys.dead, self.keys.stats]
        return bool(await self.scripts.stream_dead(keys=keys, args=[self.group, delivery.entry_id, *fields]))

    async def _make_claimable(self, ids: list[str], counts: list[int]) -> int:
        """Hand pending entries back: idle past the claim limit, delivery count as before this delivery."""
        n = 0
        for eid, count in zip(ids, counts, strict=True):
            got = await self.client.xclaim(
                self.name,
                self.group,
                self.cfg.worker_id,
                0,
                [eid],
                idle=self.claim_ms,
                retrycount=max(0, count - 1),
                justid=True,
            )
            n += len(got)
        return n

    async def requeue(self, deliveries: list[Delivery]) -> int:
        return await self._make_claimable(
            [d.entry_id for d in deliveries], [d.deliveries for d in deliveries]
        )

    async def requeue_all(self) -> int:
        self.claimed.clear()
        pending = await self.client.xpending_range(
            self.name, self.group, min="-", max="+", count=10000, consumername=self.cfg.worker_id
        )
        ids = [_text(p["message_id"]) for p in pending]
        counts = [int(p["times_delivered"]) for p in pending]
        return await self._make_claimable(ids, counts)

    async def recover(self, held: list[Delivery]) -> int:
        """Make claimable our pending entries that we do not hold (a read whose reply was lost)."""
        known = {d.entry_id for d in held} | {d.entry_id for d in self.claimed}
        pending = await self.client.xpending_range(
            self.name, self.group, min="-", max="+", count=10000, consumername=self.cfg.worker_id
        )
        lost = [(_text(p["message_id"]), int(p["times_delivered"])) for p in pending]
        lost = [(eid, n) for eid, n in lost if eid not in known]
        if not lost:
            return 0
        return await self._make_claimable([e for e, _ in lost], [n for _, n in lost])

    async def done_already(self, deliveries: list[Delivery]) -> list[bool]:
        flags = await self.scripts.exists_many(
            keys=[self.keys.dedupe(d.message_id) for d in deliveries], args=[]
        )
        return [bool(f) for f in flags]

    async def heartbeat(self, record: bytes) -> None:
        wid = self.cfg.worker_id
        keys = [self.keys.workers, self.keys.worker(wid)]
        await self.scripts.heartbeat(
            keys=keys, args=[wid, time.time(), record, int(self.cfg.heartbeat_ttl * 1000)]
        )

    async def touch(self, deliveries: list[Delivery]) -> None:
        """Reset the idle time of running entries so no other consumer claims them."""
        ids = [d.entry_id for d in deliveries]
        if ids:
            await self.client.xclaim(self.name, self.group, self.cfg.worker_id, 0, ids, justid=True)

    async def deregister(self) -> bool:
        await self.client.zrem(self.keys.workers, self.cfg.worker_id)
        await self.client.delete(self.keys.worker(self.cfg.worker_id))
        return True

    def maintenance_interval(self) -> float:
        return max(0.2, min(self.cfg.claim_idle / 4, 2.0)) + random.uniform(0, 0.1)

    async def maintain(self) -> None:
        """Claim entries idle past the limit (a dead consumer's, or retries whose delay has passed)."""
        if self.claimed:
            return
        reply = await self.client.xautoclaim(
            self.name, self.group, self.cfg.worker_id, self.claim_ms, "0-0", count=self.cfg.fetch_max
        )
        entries = reply[1] if len(reply) > 1 else []
        entries = [(eid, fields) for eid, fields in entries if fields is not None]
        if not entries:
            return
        ids = [_text(eid) for eid, _ in entries]
        pending = await self.client.xpending_range(
            self.name,
            self.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) * 2,
            consumername=self.cfg.worker_id,
        )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        for eid, fields in entries:
            self.claimed.append(self._delivery(eid, fields, counts.get(_text(eid), 1)))

    async def reap(self) -> tuple[int, int]:
        """Under the lease: forget consumers that are gone (no heartbeat, nothing pending)."""
        wid = self.cfg.worker_id
        lease_ms = int(max(2.0 * self.cfg.reaper_interval, 1.0) * 1000)
        if not await self.scripts.lease(keys=[self.keys.reaper_lease], args=[wid, lease_ms]):
            return 0, 0
        consumers = await self.client.xinfo_consumers(self.name, self.group)
        idle_limit = self.claim_ms
        for c in consumers:
            name = _text(c["name"])
            if name == wid or int(c["pending"]) > 0 or int(c["idle"]) < idle_limit:
                continue
            if await self.client.exists(self.keys.worker(name)):
                continue
            await self.client.xgroup_delconsumer(self.name, self.group, name)
            await self.client.zrem(self.keys.workers, name)
            self.log.info("removed a gone consumer", extra=logs.kv(consumer=name))
        return 0, 0

    async def release(self) -> None:
        await self.scripts.release(keys=[self.keys.reaper_lease], args=[self.cfg.worker_id])
