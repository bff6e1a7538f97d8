"""The list reaper: one worker at a time (a lease) returns dead workers' processing lists to the queue.

A worker is dead when its heartbeat key has expired. Candidates are the registry's members and, less
often, processing lists found by SCAN whose owner is not registered (orphans). The reap script checks
the heartbeat again, counts an interruption per message that had started (the worker's unstarted count
says how many had not) and dead-letters poison pills.
"""

from __future__ import annotations

import time
from typing import Any

from tide_worker import logs
from tide_worker.config import WorkerConfig
from tide_worker.keys import QueueKeys
from tide_worker.scripts import Scripts

SCAN_EVERY = 15  # passes between orphan scans (SCAN walks the whole keyspace)
INTERRUPTS_TTL = 7 * 24 * 3600  # the interrupt counts of a queue expire a week after its last reap


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ListReaper:
    def __init__(self, client: Any, scripts: Scripts, cfg: WorkerConfig) -> None:
        assert cfg.queue
        self.client = client
        self.scripts = scripts
        self.cfg = cfg
        self.keys = QueueKeys(cfg.queue)
        self.passes = 0
        self.log = logs.get()

    @property
    def lease_ms(self) -> int:
        # Long enough to cover a pass, short enough that a dead holder delays reaping by little.
        return int(max(2.0 * self.cfg.reaper_interval, 1.0) * 1000)

    async def run_once(self) -> tuple[int, int]:
        """One pass; returns (messages returned to the queue, messages dead-lettered as poison)."""
        wid = self.cfg.worker_id
        if not await self.scripts.lease(keys=[self.keys.reaper_lease], args=[wid, self.lease_ms]):
            return 0, 0
        self.passes += 1
        members = [_text(m) for m in await self.client.zrange(self.keys.workers, 0, -1)]
        candidates = [m for m in members if m != wid]
        if self.passes % SCAN_EVERY == 1:
            known = set(members)
            async for key in self.client.scan_iter(match=self.keys.processing_pattern, count=1000):
                other = self.keys.worker_id_from_processing(_text(key))
                if other != wid and other not in known:
                    candidates.append(other)
                    known.add(other)
        if not candidates:
            return 0, 0
        flags = await self.scripts.exists_many(keys=[self.keys.worker(m) for m in candidates], args=[])
        requeued = dead = 0
        for other, alive in zip(candidates, flags, strict=True):
            if alive:
                continue
            back, poisoned = await self.reap_worker(other)
            requeued += back
            dead += poisoned
        return requeued, dead

    async def reap_worker(self, other: str) -> tuple[int, int]:
        keys = [
            self.keys.processing(other),
            self.keys.ready,
            self.keys.interrupts,
            self.keys.dead,
            self.keys.workers,
            self.keys.worker(other),
            self.keys.stats,
            self.keys.unstarted(other),
            self.keys.suspects,
        ]
        args = [other, self.cfg.max_interrupts, self.cfg.side, time.time(), self.cfg.queue, INTERRUPTS_TTL]
        requeued, dead = (int(x) for x in await self.scripts.reap(keys=keys, args=args))
        if requeued > 0 or dead > 0:
            self.log.warning(
                "reaped a dead worker",
                extra=logs.kv(dead_worker=other, requeued=requeued, poison=dead),
            )
        return max(requeued, 0), dead
