"""Backlog readers: one pipelined round trip per poll, asyncio, clients shared across resources.

Every resource that shares a client (same server, credentials and TLS settings) reads through that client's
``ReadBatcher``: the daemons of one polling tick each enqueue their commands, and the batcher sends whatever
is queued as one non-transactional pipeline and hands each reader its own slice of the replies (an error
reply stays in its slice, so one bad key fails only its resource). A thousand resources on one server cost
one round trip per tick instead of a thousand. On Redis Cluster, redis-py splits the pipeline by node. On
one server, the list readings of a batch also share calls of the list script (up to ``MAX_QUEUES_PER_CALL``
queues a call, each read under its own ``pcall``, an error reply kept per queue).

A list reading is ``LLEN Q``, the registry ``{Q}:workers``, the due and waiting retries of ``{Q}:delayed``,
for every worker the registry named last time its processing list and heartbeat, and the processing lists
of orphans (owners not registered). The registry is cached, so the steady state is one round trip; a
second one is spent only when workers joined. Orphans are found by SCAN, which walks the whole keyspace:
one walk per server serves every queue on it, at most every ``ORPHAN_SCAN_SECONDS`` and in the background
(only a server's first reading waits for it), as the worker's reaper scans only every 15th pass. A stream
reading is ``XINFO GROUPS``, ``XINFO STREAM`` (length, last id, entries added), the registry and the
heartbeats. Key names come from ``tide_worker.keys`` only; the backlog is computed from the raw counts by
``tide_worker.backlog``, as ``tide stats`` computes it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry  # an async client: the sync Retry is converted with a warning
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from tide_worker import envelope
from tide_worker.backlog import (
    Backlog,
    GroupInfo,
    age,
    entry_time,
    list_backlog,
    stream_backlog,
    stream_id,
    sum_backlogs,
)
from tide_worker.connection import RedisSettings, async_client
from tide_worker.keys import QueueKeys, StreamKeys, hash_tag
from tide_worker.records import Heartbeat
from tide_worker.scripts import script

from tide_operator import metrics
from tide_operator.spec import Source

AsyncClient = aredis.Redis | AsyncRedisCluster

# The operator's reads must fail fast: an outage is a condition to report, not a call to wait out.
READ_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
# Commands in one batched pipeline; a larger queue goes out in several (a reply buffer stays bounded).
MAX_BATCH_COMMANDS = 10_000
# List queues read by one call of list_backlog.lua (one server, not Cluster): the call runs as one script,
# so this bounds how long it holds the server (a few hundred O(1) reads, well under a millisecond).
MAX_QUEUES_PER_CALL = 250
# Connections per server: the batcher keeps one pipeline in flight; the rest serve unbatched readers.
MAX_CONNECTIONS = 8

Stage = Callable[[Any], None]  # adds one reader's commands to a pipeline

# Orphaned processing lists (a worker died before registering, or its registry entry was removed) are
# found by SCAN and cached: a list orphaned since the last walk is counted within this many seconds.
ORPHAN_SCAN_SECONDS = 15.0
SCAN_COUNT = 1000
PROCESSING_LISTS = "*:processing:*"  # every queue's processing lists (QueueKeys.processing)

# One command per list reading instead of 5 + 2 per worker: Python's cost per pipelined command (building,
# packing, a timer per reply) is what 1,000 resources spend their CPU on, so the reads run server-side.
# Every key is in KEYS (the worker keys of the registry as cached), all under the queue's hash tag;
# the script is lua/list_backlog.lua, read once at import by the worker's loader.
LIST_BACKLOG_LUA = script("list_backlog", "tide_operator").text
LIST_BACKLOG_SHA = script("list_backlog", "tide_operator").sha
# the envelope's limits, passed to the script so that it decodes a head's timestamp by the same rule
ENVELOPE_ARGS = (
    str(envelope.ENVELOPE_VERSION),
    str(envelope.MAX_ENVELOPE_ATTEMPTS),
    repr(envelope.MAX_TIME),
)
MANY_PREFIX = ("*", *ENVELOPE_ARGS)  # ARGV of a call reading many queues, before each queue's four


@dataclass(frozen=True)
class Credentials:
    """What the operator resolved from Secrets for one resource."""

    username: str | None = None
    password: str | None = None
    ca_pem: str | None = None
    sentinel_password: str | None = None  # spec.redis.sentinel.passwordSecretRef


@dataclass(frozen=True)
class Reading:
    backlog: Backlog
    rates: tuple[float, ...]  # messages/s of each worker with a live heartbeat
    workers: int  # registered workers
    # spec.source.lists: each list's key and backlog (``backlog`` is their sum)
    parts: tuple[tuple[str, Backlog], ...] = ()
    idle: tuple[float, ...] = ()  # seconds each of those workers had been idle (Heartbeat.idle_for)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClientPool:
    """One client (and its connection pool) per (url, cluster, credentials, TLS settings). A
    ``redis+sentinel://`` url (spec.redis.sentinel) gives a client whose every new connection asks the
    sentinels for the master (``tide_worker.connection``, the workers' own)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], AsyncClient] = {}
        self._batchers: dict[int, ReadBatcher] = {}

    @staticmethod
    def _key(url: str, cluster: bool, creds: Credentials, insecure: bool) -> tuple[Any, ...]:
        ca = hashlib.sha256(creds.ca_pem.encode()).hexdigest() if creds.ca_pem else None
        return (url, cluster, creds.username, creds.password, creds.sentinel_password, ca, insecure)

    def get(self, url: str, cluster: bool, creds: Credentials, insecure: bool = False) -> AsyncClient:
        key = self._key(url, cluster, creds, insecure)
        client = self._clients.get(key)
        if client is None:
            extra: dict[str, Any] = {
                "socket_timeout": READ_TIMEOUT,
                "socket_connect_timeout": CONNECT_TIMEOUT,
                "retry": Retry(NoBackoff(), 0),
                "max_connections": MAX_CONNECTIONS,
            }
            settings = RedisSettings(
                url=url,
                cluster=cluster,
                username=creds.username,
                password=creds.password,
                ca_data=creds.ca_pem,
                sentinel_password=creds.sentinel_password,
                tls_insecure=insecure,
                client_name="tide-operator",
                # a burst's concurrent readers wait for one of the MAX_CONNECTIONS, not fail as unreachable
                pool_timeout=READ_TIMEOUT,
                extra=extra,
            )
            client = async_client(settings)
            self._clients[key] = client
            self._batchers[id(client)] = ReadBatcher(client)
        return client

    def batcher(self, client: AsyncClient) -> ReadBatcher:
        """The batcher every reader of ``client`` shares."""
        batcher = self._batchers.get(id(client))
        if batcher is None:
            batcher = self._batchers[id(client)] = ReadBatcher(client)
        return batcher

    def __len__(self) -> int:
        return len(self._clients)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        self._batchers.clear()


class Ticker:
    """Wakes every waiter of the same grid point together.

    A poll waits until the next point of its grid: multiples of its interval on the event loop's clock,
    shifted by the resource's phase. A resource's phase is one of ``SLOTS`` per interval, so 10,000
    resources polling every second wake in 50 groups of about 200, 20 ms apart: each group's reads of one
    server coalesce into one pipeline, and a burst's read or a keyspace event waits behind one group's CPU
    work (about 14 ms here), not behind a tenth of all polls (10 groups of 1,000: 73 ms). Measured with
    ``bench/operator/poll_cost.py --wake 40`` at 10,000 resources, the operator's share of a wake-up p99:
    110 ms with 10 groups, 16.5 with 50, 20-37 with 100; CPU per poll 58-64, 63 and 65-71 us (smaller
    pipelines cost a little more each). A slow poll skips a grid point instead of drifting; a backoff
    ``delay`` is honoured to within one interval."""

    SLOTS = 50

    def __init__(self) -> None:
        self._ticks: dict[tuple[float, float, int], asyncio.Future[None]] = {}

    @classmethod
    def phase(cls, key: str) -> float:
        """The phase of a resource, as a fraction of the interval: a hash of its name, so it is stable
        across restarts and uncorrelated with naming patterns (every tenth queue is not one group)."""
        return (zlib.crc32(key.encode()) % cls.SLOTS) / cls.SLOTS

    async def wait(self, delay: float, interval: float, phase: float = 0.0) -> None:
        # shielded: a cancelled daemon must not cancel the tick the others wait for
        await asyncio.shield(self.tick(delay, interval, phase))

    def tick(self, delay: float, interval: float, phase: float = 0.0) -> asyncio.Future[None]:
        """The grid point ``wait`` waits for, as the future every waiter of that point shares (never cancel
        it; the waker of ``tide_operator.wake`` adds a callback to it instead of a task per sleep)."""
        loop = asyncio.get_running_loop()
        interval = max(interval, 0.01)
        offset = phase * interval
        now = loop.time()
        n = math.ceil((now - offset + max(0.0, delay - interval)) / interval)
        if n * interval + offset <= now:
            n += 1
        key = (interval, offset, n)
        tick = self._ticks.get(key)
        if tick is None:
            tick = self._ticks[key] = loop.create_future()
            loop.call_at(n * interval + offset, self._fire, key)
        return tick

    def _fire(self, key: tuple[float, float, int]) -> None:
        tick = self._ticks.pop(key, None)
        if tick is not None and not tick.done():
            tick.set_result(None)


class ProcessingScan:
    """Processing lists found by SCAN, grouped by hash tag (every queue's keys carry one).

    The batcher of a server holds one matching every queue's lists, so one walk of the keyspace serves all
    the queues read through it; a reader without a batcher keeps one matching only its own queue. The first
    ``lists`` call waits for a walk (a reading must not miss what is already orphaned); afterwards a stale
    cache is refreshed in the background while readers use it.
    """

    def __init__(self, client: AsyncClient, pattern: str = PROCESSING_LISTS) -> None:
        self.client = client
        self.pattern = pattern
        self.every = ORPHAN_SCAN_SECONDS
        self.generation = 0  # completed walks: readers recompute their orphans when it moves
        self.refused: str | None = None  # why Redis refused the last walk (then orphans are not counted)
        self._by_tag: dict[str, tuple[str, ...]] | None = None
        self._started = -math.inf
        self._task: asyncio.Task[None] | None = None

    def due(self) -> bool:
        """Whether a reader must call ``refresh`` (cheap: it is on the per-poll path of every list)."""
        return self._by_tag is None or asyncio.get_running_loop().time() - self._started >= self.every

    async def refresh(self) -> None:
        """Start a walk when one is due and none runs; wait for it only when nothing was ever found."""
        running = self._task is not None and not self._task.done()
        now = asyncio.get_running_loop().time()
        if not running and (self._by_tag is None or now - self._started >= self.every):
            self._started = now
            self._task = asyncio.create_task(self._walk())
            self._task.add_done_callback(_retrieve)
        if self._by_tag is None:
            assert self._task is not None
            await asyncio.shield(self._task)  # a failed first walk fails the reading; the next retries

    def lists(self, tag: str) -> tuple[str, ...]:
        """The processing-list keys of hash tag ``tag`` as the last complete walk found them."""
        return self._by_tag.get(tag, ()) if self._by_tag is not None else ()

    async def _walk(self) -> None:
        found: dict[str, list[str]] = {}
        try:
            async for key in self.client.scan_iter(match=self.pattern, count=SCAN_COUNT):
                name = _text(key)
                tag = hash_tag(name)
                if tag is not None:
                    found.setdefault(tag, []).append(name)
        except ResponseError as exc:
            # refused (an ACL user without SCAN): readings go on without orphans rather than fail; an
            # outage (a connection error) fails the first reading like any read
            self.refused = str(exc)
            if self._by_tag is not None:
                return
        else:
            self.refused = None
        self._by_tag = {tag: tuple(keys) for tag, keys in found.items()}
        self.generation += 1

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    # a failed background walk keeps the previous cache; its error is met by the next reading, not logged
    if not task.cancelled():
        task.exception()


class _ListRead:
    """One list queue's reading queued in a batch: its script keys and arguments (``ListReader.read``)."""

    __slots__ = ("args", "keys")

    def __init__(self, keys: Sequence[str], args: tuple[str, str, str, str]) -> None:
        self.keys = keys
        self.args = args  # how many keys, now, registered workers, side

    def __call__(self, pipe: Any) -> None:
        """As a stage of its own (on Cluster, or retried alone): the script for this queue only."""
        k = self.keys
        _, now, nworkers, side = self.args
        # execute_command: a cluster pipeline blocks the evalsha method, not the command
        pipe.execute_command("EVALSHA", LIST_BACKLOG_SHA, len(k), *k, now, nworkers, side, *ENVELOPE_ARGS)


class _SharedCall:
    """List readings gathered into one call of ``list_backlog.lua`` (its many-queues form)."""

    __slots__ = ("argv", "futures", "index", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.argv: list[str] = list(MANY_PREFIX)
        self.futures: list[asyncio.Future[list[Any]]] = []
        self.index = -1  # its command's place in the pipeline

    def add(self, read: _ListRead, future: asyncio.Future[list[Any]]) -> None:
        self.keys.extend(read.keys)
        self.argv.extend(read.args)
        self.futures.append(future)

    def send(self, pipe: Any) -> _SharedCall:
        self.index = len(pipe)
        pipe.execute_command("EVALSHA", LIST_BACKLOG_SHA, len(self.keys), *self.keys, *self.argv)
        return self

    def resolve(self, reply: Any) -> int:
        """Each queue its own reply (``[reply]``); a failed call (NOSCRIPT after a restart) fails every
        queue of it with its error. Returns how many readings were served."""
        each = [reply] * len(self.futures) if isinstance(reply, Exception) else reply
        served = 0
        for future, one in zip(self.futures, each, strict=True):
            if not future.done():
                served += 1
                future.set_result([one])
        return served


class ReadBatcher:
    """Coalesces the reads of every resource sharing one client into one pipeline per round trip.

    ``execute(stage)`` queues a reader's commands and waits. The drain task, created by the first request
    after an idle moment, first runs after every daemon woken by the same tick has queued its request (they
    all run in the current event-loop iteration), sends the queue as one pipeline, and resolves each request
    with its slice of the replies. Requests arriving while a pipeline is in flight go in the next one.

    List readings (a ``_ListRead`` stage, from ``ListReader.read``) on one server go further: up to ``max_queues`` queues share one call of
    ``list_backlog.lua``, which reads each queue under its own ``pcall`` and replies per queue (an error
    reply stays that queue's). Python's cost per command (packing, a timer and a parse per reply) is paid
    per call, not per queue: what 10,000 idle resources spent a third of their CPU on. On Cluster every
    queue keeps a call of its own (its keys live in its own slot), and redis-py routes each to its node.
    """

    def __init__(
        self,
        client: AsyncClient,
        max_commands: int = MAX_BATCH_COMMANDS,
        max_queues: int = MAX_QUEUES_PER_CALL,
    ) -> None:
        self.client = client
        self.max_commands = max_commands
        self.max_queues = max_queues
        self.cluster = isinstance(client, AsyncRedisCluster)
        self._queue: collections.deque[tuple[Stage, asyncio.Future[list[Any]]]] = collections.deque()
        self._drain: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[Any] | None = None
        self.scan = ProcessingScan(client)  # orphan processing lists of every queue on this server
        self.round_trips = 0  # pipelines sent
        self.requests = 0  # reads served

    async def execute(self, stage: Stage) -> list[Any]:
        """This request's replies, in order; error replies come back as exception objects."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((stage, future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._queue:
            pipe = self.client.pipeline(transaction=False)
            batch: list[tuple[Stage, asyncio.Future[list[Any]], int, int]] = []
            calls: list[_SharedCall] = []  # list readings gathered into shared script calls
            call = _SharedCall()
            while self._queue:
                stage, future = self._queue[0]
                shared = isinstance(stage, _ListRead) and not self.cluster
                # the pipeline is full when its commands, the open script call counted, reach the bound;
                # a list reading still joins an open call that has room
                if len(pipe) + bool(call.futures) >= self.max_commands and not (shared and call.futures):
                    break
                self._queue.popleft()
                if future.done():  # cancelled while queued
                    continue
                if shared:
                    assert isinstance(stage, _ListRead)
                    call.add(stage, future)
                    if len(call.futures) >= self.max_queues:
                        calls.append(call.send(pipe))
                        call = _SharedCall()
                    continue
                start = len(pipe)
                try:
                    stage(pipe)
                except Exception as exc:  # a reader's own bug fails its request, not the batch
                    if not future.done():
                        future.set_exception(exc)
                batch.append((stage, future, start, len(pipe)))
            if call.futures:
                calls.append(call.send(pipe))
            try:
                replies = await pipe.execute(raise_on_error=False) if len(pipe) else []
            except Exception as exc:
                live = [(stage, f) for stage, f, _, _ in batch if not f.done()]
                await self._failed(live, exc, [f for c in calls for f in c.futures if not f.done()])
                continue
            finally:
                self.round_trips += 1
                metrics.REDIS_ROUND_TRIPS.inc()
            for _, future, start, end in batch:
                if not future.done():
                    self.requests += 1
                    future.set_result(replies[start:end])
            for c in calls:
                self.requests += c.resolve(replies[c.index])

    async def _failed(
        self,
        live: list[tuple[Stage, asyncio.Future[list[Any]]]],
        exc: Exception,
        lists: Sequence[asyncio.Future[list[Any]]] = (),
    ) -> None:
        """The whole pipeline failed (connection lost, timeout). On one server every request shares that
        fate (``lists``: the list readings of its shared script calls); on a Cluster, one unreachable node
        must not fail the resources whose keys live on the others, so each request is retried in a
        pipeline of its own."""
        for future in lists:
            future.set_exception(exc)
        if not self.cluster or len(live) < 2:
            for _, future in live:
                future.set_exception(exc)
            return

        async def alone(stage: Stage, future: asyncio.Future[list[Any]]) -> None:
            pipe = self.client.pipeline(transaction=False)
            try:
                stage(pipe)
                replies = await pipe.execute(raise_on_error=False)
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
                return
            if not future.done():
                future.set_result(replies)

        await asyncio.gather(*(alone(stage, future) for stage, future in live))

    async def load_script(self) -> None:
        """Load the list script once for every reader that met NOSCRIPT in the same batch."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        await self.client.script_load(LIST_BACKLOG_LUA)

    async def close(self) -> None:
        self.scan.close()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()


Figures = tuple[float, float]  # a live worker's rate and idle seconds (Heartbeat.rate, Heartbeat.idle_for)


def _figures(raw: Any) -> Figures | None:
    """The figures of a heartbeat, read by ``Heartbeat`` (lua/list_backlog.lua applies the same rules)."""
    if raw is None:
        return None
    try:
        hb = Heartbeat.decode(raw)
    except ValueError:
        return None  # not a heartbeat: it says nothing about throughput
    return hb.rate, hb.idle_for()


def _script_figures(raw: Any) -> Figures | None:
    """The figures list_backlog.lua returns for a heartbeat: ``"<rate> <idle>"``, or None."""
    if raw is None:
        return None
    rate, idle = _text(raw).split()
    return float(rate), float(idle)


def _reading(backlog: Backlog, figures: Sequence[Figures | None], workers: int) -> Reading:
    live = [f for f in figures if f is not None]
    return Reading(backlog, tuple(r for r, _ in live), workers, idle=tuple(i for _, i in live))


class _Reader:
    """Sends a reader's commands through the shared batcher, or in a pipeline of its own without one."""

    client: AsyncClient
    keys: QueueKeys | StreamKeys
    batcher: ReadBatcher | None
    round_trips: int

    async def _execute(self, stage: Stage) -> list[Any]:
        self.round_trips += 1
        if self.batcher is not None:
            return await self.batcher.execute(stage)
        pipe = self.client.pipeline(transaction=False)
        stage(pipe)
        return list(await pipe.execute(raise_on_error=False))

    async def heartbeats(self) -> list[Heartbeat]:
        """The live heartbeats of the registered workers (two round trips; read before a scale-down
        only). A value that is not a heartbeat is left out."""
        keys = self.keys
        ids = [_text(w) for w in await self.client.zrange(keys.workers, 0, -1)]
        out: list[Heartbeat] = []
        if not ids:
            return out
        for raw in await self.client.mget([keys.worker(w) for w in ids]):
            if raw is None:
                continue
            try:
                out.append(Heartbeat.decode(raw))
            except ValueError:
                continue
        return out


async def held_heartbeats(client: AsyncClient, lists: Sequence[QueueKeys]) -> list[Heartbeat]:
    """The live heartbeats of the workers registered on ``lists[0]``, each with ``inflight`` replaced by
    what its processing lists hold now (summed over ``lists``), read in one round trip after the registry.

    Before a scale-down the heartbeat's own count is not enough: it is up to a third of the heartbeat TTL
    old (3.3 s at the default), and with a short scale-down window a scale-down comes soon after a job
    ends, so the worker that just finished could still look busy and one that just took a message idle. A worker whose processing
    lists are empty is idle (``oldest_started`` 0); one holding messages its heartbeat does not know of
    yet counts them (the cost rule then weighs them as just started)."""
    first = lists[0]
    ids = [_text(w) for w in await client.zrange(first.workers, 0, -1)]
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    pipe.mget([first.worker(w) for w in ids])
    for keys in lists:
        for w in ids:
            pipe.llen(keys.processing(w))
    replies = await pipe.execute()
    out: list[Heartbeat] = []
    for i, raw in enumerate(replies[0]):
        if raw is None:
            continue
        try:
            hb = Heartbeat.decode(raw)
        except ValueError:
            continue
        held = sum(int(replies[1 + j * len(ids) + i]) for j in range(len(lists)))
        out.append(replace(hb, inflight=held, oldest_started=hb.oldest_started if held else 0.0))
    return out


def _raise_first(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


@dataclass
class ListReader(_Reader):
    client: AsyncClient
    keys: QueueKeys
    workers: tuple[str, ...] = field(default=())
    round_trips: int = 0  # for tests and metrics: how many round trips reads took
    batcher: ReadBatcher | None = None
    side: str = "right"  # the end workers take from: its message is the oldest
    # a head without a timestamp (a plain string): its hash and when this reader first saw it there
    _head_seen: tuple[str, float] | None = field(default=None, repr=False)
    _keys: list[str] = field(default_factory=list, repr=False)
    _keys_for: tuple[tuple[str, ...], tuple[str, ...]] | None = field(default=None, repr=False)
    _scan: ProcessingScan | None = field(default=None, repr=False)
    _scan_generation: int = field(default=-1, repr=False)
    _known: set[str] = field(default_factory=set, repr=False)  # owners of processing lists seen
    _orphans: tuple[str, ...] = field(default=(), repr=False)
    _orphans_for: tuple[str, ...] | None = field(default=None, repr=False)

    async def heartbeats(self) -> list[Heartbeat]:
        """The live heartbeats, each with what the worker holds now (``held_heartbeats``)."""
        return await held_heartbeats(self.client, [self.keys])

    async def _orphan_candidates(self) -> tuple[str, ...]:
        """Owners of processing lists that the cached registry does not name: what the last SCAN found,
        plus every worker seen registered since (one that left the registry may still hold messages).
        A candidate whose list is gone reads as 0 until the next walk drops it."""
        k = self.keys
        scan = self._scan
        if scan is None:
            scan = self.batcher.scan if self.batcher else ProcessingScan(self.client, k.processing_pattern)
            self._scan = scan
        if scan.due():
            await scan.refresh()
        if scan.generation != self._scan_generation:
            self._scan_generation = scan.generation
            self._known = set()
            for key in scan.lists(hash_tag(k.prefix) or ""):
                try:
                    self._known.add(k.worker_id_from_processing(key))
                except ValueError:  # another queue under the same hash tag
                    continue
            self._known.update(self.workers)
            self._orphans_for = None
        if self._orphans_for is not self.workers:  # a new tuple only when the registry changed
            self._orphans = tuple(sorted(self._known.difference(self.workers)))
            self._orphans_for = self.workers
        return self._orphans

    async def read(self, now: float) -> Reading:
        k = self.keys
        cached = self.workers
        orphans = await self._orphan_candidates()
        if self._keys_for != (cached, orphans):  # key names are rebuilt only when these changed
            keys = [k.ready, k.workers, k.delayed]
            for w in cached:
                keys += (k.processing(w), k.worker(w))
            keys += (k.processing(w) for w in orphans)
            self._keys, self._keys_for = keys, (cached, orphans)
        keys = self._keys
        nworkers = str(len(cached))

        read = _ListRead(keys, (str(len(keys)), repr(now), nworkers, self.side))
        reply = await self._execute(read)
        if isinstance(reply[0], NoScriptError):  # a restarted or failed-over server: load, then again
            await (self.batcher.load_script() if self.batcher else self.client.script_load(LIST_BACKLOG_LUA))
            reply = await self._execute(read)
        res = _raise_first(reply)[0]
        ready, registry_raw, due, delayed, nxt, head = res[:6]
        per_worker: dict[str, tuple[Any, Figures | None]] = {
            w: (res[6 + 2 * i], _script_figures(res[7 + 2 * i])) for i, w in enumerate(cached)
        }
        held: dict[str, int] = {w: int(n) for w, (n, _) in per_worker.items()}
        held.update(zip(orphans, map(int, res[6 + 2 * len(cached) :]), strict=True))
        registry = tuple(_text(w) for w in registry_raw)
        new = [w for w in registry if w not in per_worker]
        if new:

            def stage_new(pipe: Any) -> None:
                for w in new:
                    pipe.llen(k.processing(w))
                    pipe.get(k.worker(w))

            extra = _raise_first(await self._execute(stage_new))
            for i, w in enumerate(new):
                per_worker[w] = (extra[2 * i], _figures(extra[2 * i + 1]))
                held[w] = int(extra[2 * i])
        if registry != cached:  # else keep the cached tuple: its identity says the orphans are current
            self.workers = registry
            self._known.update(registry)
        live = [per_worker[w] for w in registry]
        # every processing list read, each once: registered workers', orphans', and those of workers that
        # left the registry since the last reading (they still hold their messages until reaped)
        backlog = list_backlog(
            ready,
            held.values(),
            retries_total=delayed,
            retries_due=due,
            next_retry_at=float(nxt[1]) if nxt else None,
            oldest_age=self._head_age(head, now),
        )
        return _reading(backlog, [f for _, f in live], len(registry))

    def _head_age(self, head: Any, now: float) -> float | None:
        """The age of the message at the consuming end: from its envelope's time, or, for one that carries
        none, since this reader first saw it there (the memory is reset when the head changes)."""
        if head is None:
            self._head_seen = None
            return None
        text = _text(head)
        if text.startswith("t:"):
            self._head_seen = None
            return age(float(text[2:]), now)
        if self._head_seen is None or self._head_seen[0] != text:
            self._head_seen = (text, now)
        return age(self._head_seen[1], now)


def _field(info: dict[Any, Any], name: str) -> Any:
    return info.get(name, info.get(name.encode()))


@dataclass
class StreamReader(_Reader):
    client: AsyncClient
    keys: StreamKeys
    workers: tuple[str, ...] = field(default=())
    round_trips: int = 0
    batcher: ReadBatcher | None = None
    # the group's last delivered id as the last reading saw it ("-": no group, the stream's first entry)
    _position: str = field(default="-", repr=False)

    async def heartbeats(self) -> list[Heartbeat]:
        """The live heartbeats, each with ``inflight`` from the group's pending entries per consumer
        (``XPENDING``'s summary, in the round trip of the ``MGET``), for the reason ``held_heartbeats``
        gives. Entries a consumer holds for a retry not yet due count too (a busy-looking pod is kept,
        never the other way). Without a group, the heartbeats' own counts."""
        k = self.keys
        ids = [_text(w) for w in await self.client.zrange(k.workers, 0, -1)]
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([k.worker(w) for w in ids])
        pipe.execute_command("XPENDING", k.stream, k.group)
        raw, summary = await pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise raw
        held = None if isinstance(summary, Exception) else _pending_by_consumer(summary)
        out: list[Heartbeat] = []
        for w, value in zip(ids, raw, strict=True):
            if value is None:
                continue
            try:
                hb = Heartbeat.decode(value)
            except ValueError:
                continue
            if held is not None:
                n = held.get(w, 0)
                hb = replace(hb, inflight=n, oldest_started=hb.oldest_started if n else 0.0)
            out.append(hb)
        return out

    async def read(self, now: float) -> Reading:
        k = self.keys
        cached = self.workers
        position = self._position

        def stage(pipe: Any) -> None:
            pipe.xinfo_groups(k.stream)
            pipe.xinfo_stream(k.stream)
            pipe.zrange(k.workers, 0, -1)
            # the oldest undelivered entry, after the group's position as last seen (same round trip)
            start = position if position == "-" else "(" + position
            pipe.xrange(k.stream, start, "+", count=1)
            for w in cached:
                pipe.get(k.worker(w))

        res = await self._execute(stage)
        groups_raw, stream_raw, registry_raw, first_raw = res[:4]
        heartbeats = dict(zip(cached, res[4:], strict=True))
        for item in (groups_raw, stream_raw, registry_raw, first_raw):
            if isinstance(item, ResponseError) and "no such key" not in str(item).lower():
                raise item
            if isinstance(item, Exception) and not isinstance(item, ResponseError):
                raise item
        registry = tuple(_text(w) for w in registry_raw) if isinstance(registry_raw, list) else ()
        new = [w for w in registry if w not in heartbeats]
        if new:

            def stage_new(pipe: Any) -> None:
                for w in new:
                    pipe.get(k.worker(w))

            heartbeats.update(zip(new, _raise_first(await self._execute(stage_new)), strict=True))
        self.workers = registry
        figures = [_figures(heartbeats[w]) for w in registry]
        if isinstance(stream_raw, ResponseError):  # no stream yet: nothing to do
            self._position = "-"
            return _reading(stream_backlog(0, None), figures, len(registry))
        first = first_raw[0][0] if isinstance(first_raw, list) and first_raw else None
        stream = _pairs(stream_raw)
        length = int(_field(stream, "length") or 0)
        group = None
        for g in groups_raw if isinstance(groups_raw, list) else []:
            info = _pairs(g)
            if _text(_field(info, "name")) == k.group:
                group = info
                break
        if group is None:
            self._position = "-"
            oldest = None if first is None or position != "-" else age(entry_time(_text(first)), now)
            return _reading(stream_backlog(length, None, oldest_age=oldest), figures, len(registry))
        delivered = _text_or_none(_field(group, "last-delivered-id")) or "0-0"
        self._position = delivered
        backlog = stream_backlog(
            length,
            GroupInfo(
                pending=int(_field(group, "pending") or 0),
                lag=_int_or_none(_field(group, "lag")),
                entries_read=_int_or_none(_field(group, "entries-read")),
                last_delivered_id=_text_or_none(_field(group, "last-delivered-id")),
            ),
            entries_added=_int_or_none(_field(stream, "entries-added")),
            last_generated_id=_text_or_none(_field(stream, "last-generated-id")),
            oldest_age=_oldest(first, position, delivered, now),
        )
        return _reading(backlog, figures, len(registry))


def _oldest(first: Any, position: str, delivered: str, now: float) -> float | None:
    """The age of the group's oldest undelivered entry, read after ``position`` (its last delivered id as the
    previous reading saw it) in this reading's round trip, while ``delivered`` is where the group is now.

    When the group has not moved, the entry read is the oldest undelivered one. When it moved on, the entry
    read may have been delivered since: then the oldest undelivered entry is newer than ``delivered``, so
    ``now - time(delivered)`` bounds its age from above and is used (exact again at the next reading)."""
    if position != "-" and stream_id(position) == stream_id(delivered):
        return None if first is None else age(entry_time(_text(first)), now)
    if first is not None and stream_id(_text(first)) > stream_id(delivered):
        return age(entry_time(_text(first)), now)
    return age(entry_time(delivered), now)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _pending_by_consumer(summary: Any) -> dict[str, int]:
    """``XPENDING key group``: [count, min, max, [[consumer, count], ...]] (nil consumers when none), or
    as redis-py parses it, ``{"pending": ..., "consumers": [{"name": ..., "pending": ...}]}``."""
    if isinstance(summary, dict):
        return {_text(c["name"]): int(c["pending"]) for c in summary.get("consumers") or ()}
    consumers = summary[3] if isinstance(summary, list | tuple) and len(summary) > 3 else None
    return {_text(name): int(n) for name, n in consumers or ()}


def _pairs(raw: Any) -> dict[Any, Any]:
    """XINFO replies come as flat key/value lists (RESP2) or maps (RESP3)."""
    if isinstance(raw, dict):
        return raw
    return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


@dataclass
class MultiListReader:
    """spec.source.lists: one ListReader per list, read at once (through a batcher: one pipeline for
    all of them, as their requests queue in the same event-loop iteration); the backlog is the sum.

    Every worker consumes every list and heartbeats on each (the same record), so the rates and the
    worker count come from the first list alone: summing them would count each worker once per list.
    """

    readers: list[ListReader]

    @property
    def round_trips(self) -> int:
        return sum(r.round_trips for r in self.readers)

    async def read(self, now: float) -> Reading:
        readings = await asyncio.gather(*(r.read(now) for r in self.readers))
        parts = tuple((r.keys.ready, x.backlog) for r, x in zip(self.readers, readings, strict=True))
        first = readings[0]
        return Reading(sum_backlogs(b for _, b in parts), first.rates, first.workers, parts, first.idle)

    async def heartbeats(self) -> list[Heartbeat]:
        """Every worker heartbeats on each list with the same record: the first list's are all of them;
        what each holds is the sum of its processing lists."""
        return await held_heartbeats(self.readers[0].client, [r.keys for r in self.readers])


def make_reader(
    client: AsyncClient, source: Source, batcher: ReadBatcher | None = None
) -> ListReader | StreamReader | MultiListReader:
    """A reader of ``source``; pass the client's shared ``ClientPool.batcher`` to coalesce its reads."""
    if len(source.lists) > 1:
        return MultiListReader(
            [ListReader(client, QueueKeys(k), batcher=batcher, side=source.side) for k in source.keys]
        )
    if source.kind == "list":
        return ListReader(client, QueueKeys(source.key), batcher=batcher, side=source.side)
    return StreamReader(client, StreamKeys(source.key, source.group), batcher=batcher)
