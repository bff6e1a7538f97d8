"""Backlog readers: one pipelined round trip per poll, asyncio, pools shared across resources.

A list reading is ``LLEN Q``, the registry ``{Q}:workers``, the due and waiting retries of ``{Q}:delayed``,
and, for every worker the registry named last time, its processing list and heartbeat. The registry is
cached, so the steady state is one round trip; a second one is spent only when workers joined. A stream
reading is ``XINFO GROUPS``, ``XINFO STREAM`` (length, last id, entries added), the registry and the
heartbeats. Key names come from ``tide_worker.keys`` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry
from tide_worker.connection import RedisSettings, async_client
from tide_worker.keys import QueueKeys, StreamKeys

from tide_operator.policy import Backlog
from tide_operator.spec import Source

AsyncClient = aredis.Redis | AsyncRedisCluster

# The operator's reads must fail fast: an outage is a condition to report, not a call to wait out.
READ_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
# Reads of one server in flight at once: a thousand resources on one server queue here instead of
# exhausting the pool ("Too many connections") at the same instant.
MAX_CONCURRENT_READS = 32


@dataclass(frozen=True)
class Credentials:
    """What the operator resolved from Secrets for one resource."""

    username: str | None = None
    password: str | None = None
    ca_pem: str | None = None


@dataclass(frozen=True)
class Reading:
    backlog: Backlog
    rates: tuple[float, ...]  # messages/s of each worker with a live heartbeat
    workers: int  # registered workers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClientPool:
    """One client (and its connection pool) per (url, cluster, credentials, TLS settings)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], AsyncClient] = {}
        self._gates: dict[int, asyncio.Semaphore] = {}

    @staticmethod
    def _key(url: str, cluster: bool, creds: Credentials, insecure: bool) -> tuple[Any, ...]:
        ca = hashlib.sha256(creds.ca_pem.encode()).hexdigest() if creds.ca_pem else None
        return (url, cluster, creds.username, creds.password, ca, insecure)

    def get(self, url: str, cluster: bool, creds: Credentials, insecure: bool = False) -> AsyncClient:
        key = self._key(url, cluster, creds, insecure)
        client = self._clients.get(key)
        if client is None:
            extra: dict[str, Any] = {
                "socket_timeout": READ_TIMEOUT,
                "socket_connect_timeout": CONNECT_TIMEOUT,
                "retry": Retry(NoBackoff(), 0),
                "max_connections": MAX_CONCURRENT_READS * 2,
            }
            if creds.ca_pem:
                extra["ssl_ca_data"] = creds.ca_pem
            settings = RedisSettings(
                url=url,
                cluster=cluster,
                username=creds.username,
                password=creds.password,
                tls_insecure=insecure,
                client_name="tide-operator",
                extra=extra,
            )
            client = async_client(settings)
            self._clients[key] = client
            self._gates[id(client)] = asyncio.Semaphore(MAX_CONCURRENT_READS)
        return client

    def gate(self, client: AsyncClient) -> asyncio.Semaphore:
        return self._gates.setdefault(id(client), asyncio.Semaphore(MAX_CONCURRENT_READS))

    def __len__(self) -> int:
        return len(self._clients)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _rates(heartbeats: Sequence[Any]) -> tuple[float, ...]:
    out = []
    for raw in heartbeats:
        if raw is None:
            continue
        try:
            out.append(float(json.loads(raw).get("rate", 0.0)))
        except (ValueError, TypeError, AttributeError):
            continue  # a malformed heartbeat says nothing about throughput
    return tuple(out)


class _GatedRead:
    """``read`` waits for the per-server gate (when set) that caps concurrent reads on one pool."""

    gate: asyncio.Semaphore | None

    async def read(self, now: float) -> Reading:
        if self.gate is None:
            return await self._read(now)
        async with self.gate:
            return await self._read(now)

    async def _read(self, now: float) -> Reading:
        raise NotImplementedError


@dataclass
class ListReader(_GatedRead):
    client: AsyncClient
    keys: QueueKeys
    workers: tuple[str, ...] = field(default=())
    round_trips: int = 0  # for tests and metrics: how many round trips reads took
    gate: asyncio.Semaphore | None = None

    async def _read(self, now: float) -> Reading:
        k = self.keys
        cached = self.workers
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.ready)
        pipe.zrange(k.workers, 0, -1)
        pipe.zcount(k.delayed, "-inf", now)
        pipe.zcard(k.delayed)
        pipe.zrangebyscore(k.delayed, f"({now}", "+inf", start=0, num=1, withscores=True)
        for w in cached:
            pipe.llen(k.processing(w))
            pipe.get(k.worker(w))
        res = await pipe.execute()
        self.round_trips += 1
        ready, registry_raw, due, delayed, nxt = res[:5]
        per_worker = {w: (res[5 + 2 * i], res[6 + 2 * i]) for i, w in enumerate(cached)}
        registry = tuple(_text(w) for w in registry_raw)
        new = [w for w in registry if w not in per_worker]
        if new:
            pipe = self.client.pipeline(transaction=False)
            for w in new:
                pipe.llen(k.processing(w))
                pipe.get(k.worker(w))
            extra = await pipe.execute()
            self.round_trips += 1
            for i, w in enumerate(new):
                per_worker[w] = (extra[2 * i], extra[2 * i + 1])
        self.workers = registry
        live = [per_worker[w] for w in registry]
        backlog = Backlog(
            ready=int(ready),
            inflight=sum(int(n) for n, _ in live),
            retries_due=int(due),
            retries_waiting=int(delayed) - int(due),
            next_retry_at=float(nxt[0][1]) if nxt else None,
        )
        return Reading(backlog, _rates([hb for _, hb in live]), len(registry))


def _field(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))


def _id_tuple(value: Any) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


@dataclass
class StreamReader(_GatedRead):
    client: AsyncClient
    keys: StreamKeys
    workers: tuple[str, ...] = field(default=())
    round_trips: int = 0
    gate: asyncio.Semaphore | None = None

    async def _read(self, now: float) -> Reading:
        k = self.keys
        cached = self.workers
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_groups(k.stream)
        pipe.xinfo_stream(k.stream)
        pipe.zrange(k.workers, 0, -1)
        for w in cached:
            pipe.get(k.worker(w))
        res = await pipe.execute(raise_on_error=False)
        self.round_trips += 1
        groups_raw, stream_raw, registry_raw = res[:3]
        heartbeats = dict(zip(cached, res[3:], strict=True))
        for item in (groups_raw, stream_raw, registry_raw):
            if isinstance(item, ResponseError) and "no such key" not in str(item).lower():
                raise item
            if isinstance(item, Exception) and not isinstance(item, ResponseError):
                raise item
        registry = tuple(_text(w) for w in registry_raw) if isinstance(registry_raw, list) else ()
        new = [w for w in registry if w not in heartbeats]
        if new:
            pipe = self.client.pipeline(transaction=False)
            for w in new:
                pipe.get(k.worker(w))
            heartbeats.update(zip(new, await pipe.execute(), strict=True))
            self.round_trips += 1
        self.workers = registry
        rates = _rates([heartbeats[w] for w in registry])
        if isinstance(stream_raw, ResponseError):  # no stream yet: nothing to do
            return Reading(Backlog(), rates, len(registry))
        stream = _pairs(stream_raw)
        length = int(_field(stream, "length") or 0)
        group = None
        for g in groups_raw if isinstance(groups_raw, list) else []:
            info = _pairs(g)
            if _text(_field(info, "name")) == k.group:
                group = info
                break
        if group is None:
            # workers create the group at id 0: the whole stream is what they will consume
            return Reading(Backlog(stream_lag=length), rates, len(registry))
        pending = int(_field(group, "pending") or 0)
        lag = _field(group, "lag")
        estimated = False
        if lag is None:
            estimated = True
            lag = _estimate_lag(stream, group, length)
        return Reading(
            Backlog(stream_lag=int(lag), stream_pending=pending, lag_estimated=estimated),
            rates,
            len(registry),
        )


def _pairs(raw: Any) -> dict[Any, Any]:
    """XINFO replies come as flat key/value lists (RESP2) or maps (RESP3)."""
    if isinstance(raw, dict):
        return raw
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def _estimate_lag(stream: dict[Any, Any], group: dict[Any, Any], length: int) -> int:
    """Redis says nil when deletions or trimming make the lag unknowable. Estimate it from the length and
    the entries read, and never report zero while entries exist past the group's last delivered id."""
    added = _field(stream, "entries-added")
    read = _field(group, "entries-read")
    estimate = length
    if added is not None and read is not None:
        estimate = min(length, max(0, int(added) - int(read)))
    last_generated = _field(stream, "last-generated-id")
    last_delivered = _field(group, "last-delivered-id")
    behind = (
        last_generated is not None
        and last_delivered is not None
        and _id_tuple(last_generated) > _id_tuple(last_delivered)
    )
    if behind and length > 0:
        return max(1, estimate)
    return estimate if behind else 0


def make_reader(
    client: AsyncClient, source: Source, gate: asyncio.Semaphore | None = None
) -> ListReader | StreamReader:
    if source.kind == "list":
        return ListReader(client, QueueKeys(source.key), gate=gate)
    return StreamReader(client, StreamKeys(source.key, source.group), gate=gate)
