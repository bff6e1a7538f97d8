"""The asyncio engine of ``tide worker``: fetch, run handlers with bounded concurrency, settle, shut down.

Flow: the fetcher moves up to ``batch_size`` messages at a time into this worker's custody (the
processing list, or the stream's pending entries) and queues them; ``concurrency`` lanes take them and
run the handler; successes are acked in batches by the acker (one script call for all that finished
meanwhile); failures are retried or dead-lettered one by one, as ``settle.decide`` says. Side loops keep
the heartbeat, promote due retries and reap dead workers. Every Redis call goes through ``_redis``, which
waits out a lost connection with capped, jittered backoff instead of failing.

Sync handlers run in threads, a chunk of messages per thread hop (so batching pays off), and a watchdog
enforces the per-message timeout: a stuck thread cannot be killed, so it is abandoned (and counted, and
replaced by ``threads.DaemonPool`` within its bound), its message failed, and the chunk's unstarted
messages go back to the lane.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.exceptions as rexc

from tide_worker import __version__, direct, logs
from tide_worker import environment as E
from tide_worker.config import WorkerConfig, backoff_delay
from tide_worker.connection import (
    AUTH_ERRORS,
    SENTINEL_ERRORS,
    RedisSettings,
    async_client,
    refusal_hint,
    sync_client,
)
from tide_worker.direct import DirectLane
from tide_worker.handler import Handler
from tide_worker.listsource import CountsUnstarted, ListSource
from tide_worker.metrics import HealthServer, LoopWatch, Metrics
from tide_worker.records import DeadLetter, Heartbeat, clean_text
from tide_worker.settle import HandlerTimeout, attempts_before, decide, exhausted, unencodable
from tide_worker.source import Delivery, Source
from tide_worker.threads import DaemonPool, PoolTask, spare_threads

T = TypeVar("T")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (rexc.ConnectionError, rexc.TimeoutError, OSError)
RECONNECT_CAP = 5.0
# Redis refused the credentials or an ACL permission, or (at startup) Sentinel gave no master for the
# name: fix the configuration
EXIT_REFUSED = 3
RATE_WINDOW = 30.0
# The adaptive fetch (--batch-size auto): "soon" is this long. A lane takes a chunk of what it runs
# within it (SOON / the measured handler time, 1 to batch max / concurrency), and a fetch takes what the
# lanes can start within it: a chunk per idle lane now, plus concurrency x SOON / the handler time.
SOON = 0.01
HANDLER_TIME_WEIGHT = 0.1  # of each new handler run in the moving average of the handler time


class Stopped(Exception):
    """Raised inside ``_redis`` when the hard deadline passed while Redis was unreachable."""


STOP_OR_REFUSED: tuple[type[BaseException], ...] = (Stopped, *AUTH_ERRORS)


@dataclass(eq=False)  # hashed by identity: the set of running chunks
class ChunkRun:
    """Messages one thread runs back to back; shared with the lane's watchdog under ``lock``."""

    deliveries: list[Delivery]
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0
    started_at: float | None = None  # monotonic start of the running message
    outcomes: list[tuple[Delivery, BaseException | None, float]] = field(default_factory=list)
    abandoned: bool = False  # the watchdog gave up on the thread: discard what it does next
    halted: bool = False  # shutting down: start nothing new
    loop: asyncio.AbstractEventLoop | None = None  # awaits what a sync handler returns
    waiting: concurrent.futures.Future[Any] | None = None  # that await, cancelled on abandonment


class RateMeter:
    """Messages finished per second over a sliding window, from samples taken at each heartbeat."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, finished: int) -> tuple[float, float]:
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        span = now - t0
        return ((finished - n0) / span if span > 0 else 0.0), span


class Worker:
    def __init__(self, cfg: WorkerConfig, handler: Handler, client: Any = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.handler = handler
        self.log = logs.get()
        self._own_client = client is None
        settings = RedisSettings.from_env(
            url=cfg.redis_url,
            cluster=cfg.cluster,
            block_timeout=cfg.block_timeout,
            client_name=f"tide-worker:{cfg.worker_id}",
        )
        if client is None:
            client = async_client(settings)
        self.client = client
        self.source: Source = self._make_source()
        self.loop: asyncio.AbstractEventLoop | None = None  # set by run(); the direct lane's thread uses it
        # A sync handler at concurrency 1 on one list: its thread fetches and acks itself (direct.py).
        self.direct: DirectLane | None = None
        if self._own_client and isinstance(self.source, ListSource) and direct.fits(cfg, handler):
            self.direct = DirectLane(self, self.source, sync_client(settings, retries=0))
        self.metrics = Metrics(cfg.source_name)
        self.watch = LoopWatch()
        self.http: HealthServer | None = None
        self.connected = False
        self.stopping = False
        self.hard_deadline = float("inf")  # monotonic; past it, give up on Redis and exit
        self.grace_deadline = float("inf")
        self.started = time.time()
        self.last_busy = self.started  # when running last fell to 0 (the heartbeat's idle_since)
        self.host = os.environ.get("POD_NAME") or socket.gethostname()
        self.processed = 0
        self.failed = 0
        self.running = 0
        self.rate = RateMeter()
        self.ready: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self.space = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.acks: list[Delivery] = []
        self.acker_done = False
        self.serving = False  # set once connected and consuming: a stop before that exits at once
        self.closing = False
        self.ack_event = asyncio.Event()
        self.fetch_done = asyncio.Event()  # clear while a non-blocking fetch is in flight
        self.fetch_done.set()
        self.idle_lanes = 0  # lanes waiting for a message
        self.runs: set[ChunkRun] = set()
        self.unstarted: list[Delivery] = []  # taken back from running chunks by a stop request
        self.drained = False
        self.held: dict[int, Delivery] = {}  # fetched and not yet settled (acked, retried, dead, requeued)
        self.fetch_lost = False
        self.active: dict[int, Delivery] = {}  # running deliveries by id(), for stream visibility
        self.held_since: dict[int, float] = {}  # when each running delivery started (unix seconds)
        self.abandoned_threads = 0  # stuck sync handler threads (the pool's count, mirrored for the gauge)
        # Sync handlers run in threads, except with no timeout, when they run inline (no thread hop per
        # chunk; a handler that blocks long then delays heartbeats, so keep those short).
        threaded = not handler.is_async and cfg.handler_timeout > 0
        self.pool = DaemonPool(cfg.concurrency, spare_threads(cfg.concurrency)) if threaded else None
        self._unhealthy_logged = False
        self._backoff_logged = logs.RateLimited(30.0)
        # Each lane takes up to this many ready messages at once: one thread hop and one ack batch for all.
        # Adaptive: one message per chunk until a handler run was measured, then what a lane runs within
        # SOON (_adapt_chunk): a slow handler's messages start one at a time, each counted exactly.
        self.chunk_size = 1 if cfg.adaptive else max(1, cfg.fetch_max // cfg.concurrency)
        # Positions up to this one came in a fetch with a suspect (a message a reap counted interrupted):
        # lanes take those one at a time, so a pill's next death counts it alone (fetch_batch.lua).
        self.alone_until = 0
        # The adaptive fetch's measure of a handler run, seconds (an exponential moving average); None
        # until a run finished.
        self.handler_time: float | None = None
        # The unstarted count (list queues; see _until_uncounted). Fetched messages get positions 1, 2, ...
        # in fetch order; lanes take them in that order. Each count sent carries a cut: positions above it
        # are counted unstarted, and a lane starts position p only once a count with cut >= p has landed.
        self.counting = self.source if isinstance(self.source, CountsUnstarted) else None
        self.positions: dict[int, int] = {}  # ready delivery id() -> its position
        self.fetched_pos = 0  # positions given so far
        self.taken_pos = 0  # the highest position a lane has taken
        self.cut_sent = 0  # cuts only grow: a later count never covers what an earlier one let start
        self.cut_landed = 0
        self.count_lock = asyncio.Lock()  # one count in flight at a time, so they land in order
        self.count_landed = asyncio.Event()  # set and replaced when a count lands or fails
        # The last count landed and left Redis's unstarted count at 0 (every held message counts as
        # started): a message a blocking fetch moves then counts as started too, with no count to send.
        self.counted_none = False

    def _make_source(self) -> Source:
        if self.cfg.queues:
            from tide_worker.multisource import MultiListSource

            return MultiListSource(self.client, self.cfg)
        if self.cfg.queue:
            from tide_worker.listsource import ListSource

            return ListSource(self.client, self.cfg)
        from tide_worker.streamsource import StreamSource

        return StreamSource(self.client, self.cfg)

    # ---- connection handling -------------------------------------------------------------------

    async def _redis(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call, waiting out connection loss with capped exponential backoff + jitter."""
        delay = 0.1
        while True:
            try:
                result = await call()
            except AUTH_ERRORS:
                raise  # a refusal, not an outage: waiting does not fix a password
            except CONNECTION_ERRORS as exc:
                if isinstance(exc, SENTINEL_ERRORS) and not self.serving:
                    # Never had a master: a wrong name, no sentinel reachable or their password refused.
                    # Once serving, the same error is the gap of a failover and is waited out.
                    raise
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancellation into a connection error: keep it a cancellation.
                    raise asyncio.CancelledError from exc
                self._disconnected(what, exc)
                if time.monotonic() >= self.hard_deadline or (self.stopping and not self.serving):
                    raise Stopped(what) from exc
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(RECONNECT_CAP, delay * 2)
                continue
            self._reconnected()
            return result

    def _disconnected(self, what: str, exc: BaseException) -> None:
        self.connected = False
        self.metrics.connected.set(0)
        if self._backoff_logged.should("redis"):
            self.log.error(
                "lost the connection to Redis; reconnecting", extra=logs.kv(op=what, error=repr(exc))
            )

    def _reconnected(self) -> None:
        if not self.connected:
            self.connected = True
            self.metrics.connected.set(1)
            if self._backoff_logged.reset("redis"):
                self.log.info("reconnected to Redis")

    # ---- life cycle ----------------------------------------------------------------------------

    def request_stop(self, fast: bool = False) -> None:
        """First call: graceful shutdown within the grace period. Second (or ``fast``): right away."""
        loop_now = time.monotonic()
        if self.stopping or fast:
            self.log.warning("second stop request: requeueing everything now")
            self.grace_deadline = loop_now
        else:
            self.grace_deadline = loop_now + self.cfg.shutdown_grace
            self.log.info("stopping: finishing in-flight work", extra=logs.kv(grace=self.cfg.shutdown_grace))
        self.stopping = True
        # Give Redis until a little past the grace period; without it, leave the rest to the reaper.
        self.hard_deadline = self.grace_deadline + max(5.0, self.cfg.block_timeout + 1)
        for run in list(self.runs):
            with run.lock:
                run.halted = True
                # Not started yet: returned with the prefetched ones, in fetch order, at shutdown.
                self.unstarted.extend(run.deliveries[run.next_index :])
                del run.deliveries[run.next_index :]
        if self.direct is not None:
            self.direct.halt()  # its thread returns its own unstarted messages
        self.stop_event.set()

    def live(self) -> bool:
        # Too many stuck handler threads: restarting the pod frees them, and its messages come back.
        return self.watch.alive() and (self.pool is None or self.pool.healthy())

    def is_ready(self) -> bool:
        return self.connected and not self.stopping

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        if self.cfg.metrics_port >= 0:
            self.http = HealthServer(self.metrics, self.live, self.is_ready, self.cfg.metrics_port).start()
        self.log.info(
            "worker starting",
            extra=logs.kv(
                source=self.source.kind,
                handler=self.handler.name,
                concurrency=self.cfg.concurrency,
                batch=self.cfg.batch_size or f"auto:{self.cfg.batch_max}",
                metrics_port=self.http.port if self.http else None,
            ),
        )
        try:
            await self._redis("setup", self.source.setup)
            await self._redis("heartbeat", self._heartbeat_once)
        except (*STOP_OR_REFUSED, *SENTINEL_ERRORS) as exc:
            if self.http:
                self.http.stop()
            if self._own_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()
            if isinstance(exc, Stopped):
                self.log.warning("stopped before Redis could be reached")
                return 0
            self.log.error(refusal_hint(exc))
            return EXIT_REFUSED
        self.serving = True
        side = [
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(
                self._every(self.source.maintenance_interval, self.source.maintain, "maintain")
            ),
            asyncio.create_task(self._every(self._reap_interval, self._reap, "reap"), name="reaper"),
        ]
        if self.direct is not None:
            serving = [asyncio.create_task(self._serve_direct(), name="direct-lane")]
        else:
            acker = asyncio.create_task(self._acker(), name="acker")
            lanes = [
                asyncio.create_task(self._lane(i), name=f"lane-{i}") for i in range(self.cfg.concurrency)
            ]
            fetcher = asyncio.create_task(self._fetcher(), name="fetcher")
            serving = [fetcher, acker, *lanes]
        crashed: BaseException | None = None
        waiter = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait([waiter, *serving], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                crashed = task.exception()
                if isinstance(crashed, AUTH_ERRORS):  # credentials or ACL changed under a running worker
                    self.log.error(refusal_hint(crashed))
                else:
                    self.log.error("internal task failed", exc_info=crashed)
        if not self.stopping:
            self.request_stop()
        waiter.cancel()
        try:
            if self.direct is not None:
                await self._shutdown_direct(serving[0])
            else:
                await self._shutdown(fetcher, lanes, acker)
        finally:
            self.closing = True
            for task in side:
                task.cancel()
            await asyncio.wait(side, timeout=2.0)
            if self.pool:
                self.pool.shutdown()
            if self.http:
                self.http.stop()
            if self._own_client:
                with contextlib.suppress(Exception):
                    await self.client.aclose()
            if self.direct is not None:
                with contextlib.suppress(Exception):
                    self.direct.client.close()
        if isinstance(crashed, AUTH_ERRORS):
            return EXIT_REFUSED
        return 1 if crashed is not None else 0

    async def _shutdown(
        self, fetcher: asyncio.Task[None], lanes: list[asyncio.Task[None]], acker: asyncio.Task[None]
    ) -> None:
        fetcher.cancel()  # leaves the loop either way: it checks self.stopping
        await asyncio.wait([fetcher], timeout=self.cfg.block_timeout + 7)
        unstarted: list[Delivery] = self.unstarted
        self.unstarted = []
        self.drained = True
        while not self.ready.empty():
            item = self.ready.get_nowait()
            if item is not None:
                unstarted.append(item)
        try:
            n = await self._redis("requeue", lambda: self._return_unstarted(unstarted, fetcher.done()))
            self._settled(unstarted)
            if n:
                self.metrics.requeued.inc(n)
                self.log.info("returned unstarted messages to the queue", extra=logs.kv(count=n))
            for _ in lanes:
                self.ready.put_nowait(None)
            pending = await self._within_grace(set(lanes))
            if pending:
                for run in list(self.runs):
                    with run.lock:
                        run.abandoned = True
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=2.0)
                self.log.warning(
                    "grace period over: requeueing unfinished messages", extra=logs.kv(lanes=len(pending))
                )
            self.acker_done = True
            self.ack_event.set()
            await asyncio.wait([acker], timeout=max(1.0, self.hard_deadline - time.monotonic()))
            if not acker.done():
                acker.cancel()  # an interrupted batch goes back to self.acks; acking twice is harmless
                await asyncio.wait([acker], timeout=1.0)
            await self._flush_acks()
            await self._hand_back_and_deregister()
        except STOP_OR_REFUSED as exc:
            self._unreachable_at_shutdown(exc)

    async def _within_grace(self, pending: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Wait for the tasks until the grace deadline (a second signal moves it); those still running."""
        while pending and time.monotonic() < self.grace_deadline:
            step = min(0.2, max(0.0, self.grace_deadline - time.monotonic()))
            _, pending = await asyncio.wait(pending, timeout=step)
        return pending

    async def _hand_back_and_deregister(self) -> None:
        """The end of either shutdown: what the processing list still holds goes back to the queue, then
        this worker leaves the registry and gives up its lease."""
        n = await self._redis("requeue", self.source.requeue_all)
        if n:
            self.metrics.requeued.inc(n)
            self.log.info("returned unfinished messages to the queue", extra=logs.kv(count=n))
        await self._redis("deregister", self.source.deregister)
        await self._redis("release", self.source.release)
        self.log.info("worker stopped", extra=logs.kv(processed=self.processed, failed=self.failed))

    def _unreachable_at_shutdown(self, exc: BaseException) -> None:
        self.log.error(
            "Redis unreachable at shutdown: the reaper will return what is left",
            extra=logs.kv(op=str(exc) if isinstance(exc, Stopped) else refusal_hint(exc)),
        )

    async def _return_unstarted(self, unstarted: list[Delivery], fetch_over: bool) -> int:
        """Every lane's unstarted messages go back in one call; the source restores their fetch order."""
        if not fetch_over:
            # A fetch may still deliver what it moved: return only what we know is unstarted.
            return await self.source.requeue(unstarted)
        # Everything in custody but the started messages, so a fetch cancelled mid-reply goes back too.
        out = {id(d) for d in unstarted}
        return await self.source.recover([d for d in self.held.values() if id(d) not in out])

    async def _give_back(self, deliveries: list[Delivery]) -> None:
        """Unstarted messages found while stopping: with the rest if not yet returned, else at once."""
        if not self.drained:
            self.unstarted.extend(deliveries)
            return
        n = await self._redis("requeue", lambda: self.source.requeue(deliveries))
        self._settled(deliveries)
        self.metrics.requeued.inc(n)

    # ---- loops ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while not self.closing:
            self.watch.tick()
            await asyncio.sleep(1.0)

    async def _every(
        self, interval: Callable[[], float], call: Callable[[], Awaitable[Any]], what: str
    ) -> None:
        while not self.closing:
            await asyncio.sleep(interval())
            try:
                await self._redis(what, call)
            except asyncio.CancelledError:
                raise
            except Stopped:
                return
            except Exception:
                self.log.exception(f"{what} failed")

    def _reap_interval(self) -> float:
        return self.cfg.reaper_interval + random.uniform(0, self.cfg.reaper_interval / 4)

    async def _reap(self) -> None:
        requeued, poisoned = await self.source.reap()
        if requeued:
            self.metrics.reaped.inc(requeued)
        for _ in range(poisoned):
            self.metrics.dead("poison")

    async def _heartbeat_once(self) -> None:
        now = time.time()
        rate, window = self.rate.sample(now, self.processed + self.failed)
        oldest = self._oldest_started()
        record = Heartbeat(
            id=self.cfg.worker_id,
            host=self.host,
            pid=os.getpid(),
            started=self.started,
            ts=now,
            concurrency=self.cfg.concurrency,
            inflight=self.running,
            processed=self.processed,
            failed=self.failed,
            rate=round(rate, 3),
            rate_window=round(window, 3),
            version=__version__,
            pod=os.environ.get(E.POD_NAME, ""),
            namespace=os.environ.get(E.POD_NAMESPACE, ""),
            oldest_started=oldest,
            idle_since=self.last_busy if self.running == 0 and oldest == 0 else 0.0,
        )
        await self.source.heartbeat(record.encode())
        if self.active:
            await self.source.touch(list(self.active.values()))

    def _oldest_started(self) -> float:
        if self.direct is not None:
            return self.direct.oldest_started()
        return min(self.held_since.values(), default=0.0)

    async def _heartbeat_loop(self) -> None:
        while not self.closing:
            await asyncio.sleep(self.cfg.heartbeat_ttl / 3)
            try:
                await self._redis("heartbeat", self._heartbeat_once)
            except asyncio.CancelledError:
                raise
            except Stopped:
                return
            except Exception:
                self.log.exception("heartbeat failed")

    def _fetch_room(self) -> int:
        """How many messages the next fetch may take (<= 0: none, wait for a lane to take some)."""
        if not self.cfg.adaptive:
            # Messages an idle lane is about to take do not count: fetching the next ones now, with the
            # acks that are waiting, saves a round trip per message at small batch sizes.
            queued = max(0, self.ready.qsize() - self.idle_lanes * self.chunk_size)
            return self.cfg.fetch_max - queued
        # Adaptive: what the lanes can start soon, less what already waits for them: a chunk per idle
        # lane at once, plus what the busy lanes finish within SOON (concurrency x SOON / handler time,
        # none until a run was measured), at most a chunk more per lane. The script then also leaves the
        # other workers their share of the queue (fetch_batch.lua, "fair"), so a shallow queue is taken
        # one message at a time.
        t = self.handler_time
        conc, chunk = self.cfg.concurrency, self.chunk_size
        busy = 0.0 if t is None else min(conc * chunk, conc * SOON / max(t, 1e-6))
        return min(self.cfg.fetch_max, int(self.idle_lanes * chunk + busy)) - self.ready.qsize()

    def _adapt_chunk(self) -> None:
        """The adaptive chunk: what one lane runs within SOON at the measured handler time. Lists only:
        there the unstarted count spares a crash's untouched messages and suspects run alone after it;
        a stream counts a delivery for every entry a dead consumer held, so its chunks stay at one."""
        t = self.handler_time
        if self.cfg.adaptive and t is not None and self.counting is not None:
            cap = max(1, self.cfg.fetch_max // self.cfg.concurrency)
            self.chunk_size = max(1, min(cap, int(SOON / max(t, 1e-6))))

    async def _fetcher(self) -> None:
        while not self.stopping:
            room = self._fetch_room()
            if room <= 0:
                self.space.clear()
                await self.space.wait()
                continue
            # Acks ride along with the fetch when the source can (one round trip for both).
            acks: list[Delivery] = []
            if self.acks and self.source.acks_with_fetch:
                acks, self.acks = self.acks, []
            self.fetch_done.clear()
            try:
                deliveries = await self._redis("fetch", lambda n=room, a=acks: self._fetch(n, a, False))  # type: ignore[misc]
            except BaseException:
                if acks:  # not acked: back to the acker
                    self.acks[:0] = acks
                    self.ack_event.set()
                raise
            finally:
                self.fetch_done.set()
            self._settled(acks)
            if not deliveries:  # nothing ready: block server-side (the acker acks meanwhile)
                # Adaptive: one message (a blocking fetch's moves are not counted unstarted).
                n = 1 if self.cfg.adaptive else room
                deliveries = await self._redis("fetch", lambda n=n: self._fetch(n, [], True))  # type: ignore[misc]
                blocked = len(deliveries) == 1
            else:
                blocked = False
            bad: list[tuple[Delivery, str, str]] = []
            if any(d.suspect for d in deliveries):
                self.alone_until = self.fetched_pos + len(deliveries)
            for d in deliveries:  # no await until all are held and queued: a stop sees them all
                self.held[id(d)] = d
                self.fetched_pos += 1
                self.positions[id(d)] = self.fetched_pos
                unfit = self._unfit(d)
                if unfit is None:
                    self.ready.put_nowait(d)
                    continue
                bad.append((d, *unfit))
                del self.positions[id(d)]  # never taken by a lane (their count is fixed by dead.lua)
            if blocked and self.counted_none and not self.count_lock.locked() and not self.fetch_lost:
                # Redis counts nothing unstarted and the move did not change that: the message already
                # counts as started there, as a count covering it alone would say. The lane starts it at
                # once (no round trip at light load), before this task sends its next fetch.
                self.cut_landed = max(self.cut_landed, self.fetched_pos)
                self.cut_sent = max(self.cut_sent, self.cut_landed)
                if self.idle_lanes:
                    await asyncio.sleep(0)
            if self.fetch_lost:
                # A fetch failed mid-call: it may have moved messages whose reply never came.
                self.fetch_lost = False
                async with self.count_lock:  # the requeue froze the count: thaw it, no count in flight
                    try:
                        back = await self._redis(
                            "recover", lambda: self.source.recover(list(self.held.values()))
                        )
                        if self.counting is not None:
                            await self._redis("count", lambda: self._send_count(thaw=True))
                    finally:
                        self._count_notify()
                if back:
                    self.log.warning(
                        "returned messages a lost fetch reply left behind", extra=logs.kv(count=back)
                    )
            for d, reason, error in bad:
                await self._dead_letter(d, reason, error, "", 0 if d.msg is None else self._attempts(d))

    def _unfit(self, d: Delivery) -> tuple[str, str] | None:
        """Why a fetched message is dead-lettered unrun (its reason and error), or None: it runs."""
        if d.msg is None:
            return "malformed", d.error
        used = exhausted(d.msg.attempts, d.deliveries, self.cfg.max_attempts)
        if used is not None:  # a stream's delivery count (a crash on the last attempt), or an envelope's
            return used.reason, used.error
        return None

    async def _fetch(self, count: int, acks: list[Delivery], block: bool) -> list[Delivery]:
        try:
            if block or self.counting is None:
                return await self.source.fetch(count, acks, block)
            async with self.count_lock:  # a non-blocking fetch also sends the unstarted count
                return await self._send_count(count, acks)
        except CONNECTION_ERRORS:
            self.fetch_lost = True
            raise

    async def _send_count(
        self, count: int = 0, acks: list[Delivery] | None = None, thaw: bool = False
    ) -> list[Delivery]:
        """Send the unstarted count (with a fetch of ``count`` when > 0); hold ``count_lock`` to call.

        The cut is past every taken position and the chunks idle lanes are about to take, so none of
        those is counted; the count is the positions above the cut (the newest fetched, the leftmost in
        the processing list), plus what this call fetches. Redis may so count too few, never too many.
        """
        assert self.counting is not None
        # What an idle lane may start at once without another count. Adaptive: one message. Its chunk is
        # taken from messages already fetched, so whether they came with a suspect (_take_chunk: then one
        # per take) is known before the count covering them is sent; crediting a whole chunk here would
        # also credit what this very fetch brings, suspects included, and count them again at the
        # suspect's next death. A fixed --batch-size keeps its chunk (its documented trade).
        per_lane = 1 if self.cfg.adaptive or self.taken_pos < self.alone_until else self.chunk_size
        cut = max(self.cut_sent, self.taken_pos + self.idle_lanes * per_lane)
        self.cut_sent = cut
        self.counted_none = False
        fetched = self.fetched_pos  # a blocking fetch may add positions while this call is out
        sent = fetched - cut
        try:
            if count > 0:
                got = await self.counting.fetch_counting(count, acks or [], sent)
            else:
                await self.counting.set_unstarted(sent, thaw)
                got = []
            self.counted_none = sent + len(got) <= 0
            self.cut_landed = max(self.cut_landed, cut)
            return got
        finally:
            self._count_notify()

    def _count_notify(self) -> None:
        """Wake the lanes waiting on a count in flight: it landed or failed."""
        self.count_landed.set()
        self.count_landed = asyncio.Event()

    async def _until_uncounted(self, chunk: list[Delivery]) -> None:
        """Start a taken chunk only once Redis no longer counts it unstarted: a count whose cut is past
        it has landed. Else a crash would let a poison pill go back uncounted and crash-loop forever.

        The fetcher's next non-blocking fetch, which the take wakes, usually carries that count; when
        none is coming (the fetcher blocks or has no room), the lane sends the count itself.
        """
        top = 0
        for d in chunk:
            top = max(top, self.positions.pop(id(d), 0))
        self.taken_pos = max(self.taken_pos, top)
        while self.counting is not None and self.cut_landed < top and not self.stopping:
            if self.count_lock.locked():  # a count in flight: if it does not cover us, the next may
                await self.count_landed.wait()
                continue
            await asyncio.sleep(0)  # the fetcher, woken by the take, sends its fetch first
            if self.count_lock.locked() or self.cut_landed >= top:
                continue
            async with self.count_lock:
                await self._redis("count", self._send_count)

    def _settled(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            self.held.pop(id(d), None)

    async def _take_chunk(self, size: int) -> list[Delivery] | None:
        self.idle_lanes += 1
        if self.cfg.adaptive:
            self.space.set()  # an idle lane is room for the adaptive fetch even when nothing is ready
        try:
            first = await self.ready.get()
        finally:
            self.idle_lanes -= 1
        if first is None:
            return None
        chunk = [first]
        pos = self.positions.get(id(first))
        if pos is not None and pos <= self.alone_until:
            size = 1  # fetched with a suspect (or before one): one message per take, each counted first
        while len(chunk) < size and not self.ready.empty():
            item = self.ready.get_nowait()
            if item is None:  # a stop marker: put it back for the next take
                self.ready.put_nowait(None)
                break
            chunk.append(item)
        self.space.set()
        return chunk

    async def _lane(self, index: int) -> None:
        while True:
            chunk = await self._take_chunk(self.chunk_size)
            if chunk is None:
                return
            await self._until_uncounted(chunk)  # before anything starts or leaves the list
            if self.cfg.dedupe_ttl and not self.stopping:
                chunk = await self._skip_done(chunk)
                if not chunk:
                    continue
            if self.stopping:  # checked after the last await: nothing new starts once stopping
                await self._give_back(chunk)
                continue
            if self.pool:
                await self._run_sync_chunk(chunk)
            else:
                await self._run_in_loop(chunk)

    async def _skip_done(self, chunk: list[Delivery]) -> list[Delivery]:
        flags = await self._redis("dedupe", lambda: self.source.done_already(chunk))
        done = [d for d, f in zip(chunk, flags, strict=True) if f]
        if done:
            self.metrics.deduped.inc(len(done))
            await self._redis("ack", lambda: self.source.ack(done, "deduped"))
            self._settled(done)
        return [d for d, f in zip(chunk, flags, strict=True) if not f]

    # ---- running handlers ----------------------------------------------------------------------

    async def _run_in_loop(self, chunk: list[Delivery]) -> None:
        """Async handlers (awaited one after another), or sync ones inline when there is no timeout."""
        timeout = self.cfg.handler_timeout or None
        func = self.handler.func
        is_async = self.handler.is_async
        n = len(chunk)
        self.running += n
        self.metrics.in_flight.inc(n)
        now = time.time()
        for d in chunk:
            self.active[id(d)] = d
            self.held_since[id(d)] = now
        outcomes: list[tuple[Delivery, BaseException | None, float]] = []
        run = ChunkRun(chunk)
        self.runs.add(run)
        try:
            while run.next_index < len(run.deliveries):  # shutdown truncates what has not started
                index = run.next_index
                d = run.deliveries[index]
                run.next_index += 1
                self._waited(d)
                start = time.perf_counter()
                exc: BaseException | None = None
                try:
                    if is_async:
                        async with asyncio.timeout(timeout):
                            await func(d.msg)  # type: ignore[arg-type]
                    else:
                        result = func(d.msg)  # type: ignore[arg-type]
                        if inspect.isawaitable(result):
                            # A sync function may hand back an awaitable (say, it wraps a coroutine
                            # function): the work is only done once that is awaited.
                            async with asyncio.timeout(timeout):
                                await result
                except TimeoutError:
                    exc = HandlerTimeout(f"handler ran past its timeout of {self.cfg.handler_timeout:g} s")
                except asyncio.CancelledError as e:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # ours (the grace period is over): the message stays in custody
                    exc = e  # the handler's own
                except BaseException as e:  # KeyboardInterrupt, SystemExit: a failed run
                    exc = e
                outcomes.append((d, exc, time.perf_counter() - start))
                if not is_async and index % 64 == 63:
                    await asyncio.sleep(0)  # inline sync handlers: let heartbeats and acks run
        finally:
            # On cancellation (the grace period is over) the unfinished stay in custody and are requeued.
            self.runs.discard(run)
            self.running -= n
            self.last_busy = time.time()
            self.metrics.in_flight.dec(n)
            for d in chunk:
                self.active.pop(id(d), None)
                self.held_since.pop(id(d), None)
        for d, exc, elapsed in outcomes:
            await self._settle(d, exc, elapsed)

    def _waited(self, d: Delivery) -> None:
        """Observe a first attempt's queue wait as its handler starts (also from a handler thread: the
        histogram locks). Retries and plain strings are left out: they carry no time of this wait."""
        msg = d.msg
        if msg is not None and msg.enqueued_at is not None and msg.attempts == 0:
            self.metrics.wait.observe(max(0.0, time.time() - msg.enqueued_at))

    def _chunk_body(self, run: ChunkRun) -> None:
        func = self.handler.func
        while True:
            with run.lock:
                if run.abandoned or run.halted or run.next_index >= len(run.deliveries):
                    return
                d = run.deliveries[run.next_index]
                run.next_index += 1
                run.started_at = time.monotonic()
            self._waited(d)
            start = time.perf_counter()
            exc: BaseException | None = None
            try:
                result = func(d.msg)  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    self._await_from_thread(run, result)
            except BaseException as e:  # KeyboardInterrupt, SystemExit: a failed run
                exc = e
            elapsed = time.perf_counter() - start
            with run.lock:
                if run.abandoned:
                    return
                run.outcomes.append((d, exc, elapsed))
                run.started_at = None

    @staticmethod
    def _await_from_thread(run: ChunkRun, awaitable: Awaitable[Any]) -> None:
        """Await what a sync handler returned, on the event loop, from its thread (which waits)."""
        assert run.loop is not None

        async def awaited() -> Any:
            return await awaitable

        waiting = asyncio.run_coroutine_threadsafe(awaited(), run.loop)
        with run.lock:
            if run.abandoned:
                waiting.cancel()
            run.waiting = waiting
        try:
            waiting.result()
        finally:
            with run.lock:
                run.waiting = None

    async def _run_sync_chunk(self, chunk: list[Delivery]) -> None:
        assert self.pool is not None
        run = ChunkRun(chunk, loop=asyncio.get_running_loop())
        if self.stopping:
            run.halted = True
        self.runs.add(run)
        n = len(chunk)
        self.running += n
        now = time.time()
        for d in chunk:
            self.active[id(d)] = d
            self.held_since[id(d)] = now
        self.metrics.in_flight.inc(n)
        timed_out: Delivery | None = None
        leftovers: list[Delivery] = []
        task = self.pool.submit(lambda: self._chunk_body(run))
        afut = asyncio.wrap_future(task.fut)
        limit = self.cfg.handler_timeout
        try:
            while not afut.done():
                wait: float | None = None
                if limit:
                    with run.lock:
                        started = run.started_at
                    wait = limit if started is None else max(0.0, started + limit - time.monotonic())
                    if run.halted:  # stopping: wake up to see whether the thread is between messages
                        wait = min(wait, 0.2)
                await asyncio.wait({afut}, timeout=wait)
                if afut.done() or not limit:
                    continue
                with run.lock:
                    if run.halted and run.started_at is None:
                        # Stopping, and nothing of the chunk runs (perhaps it never got a thread, all
                        # of them stuck): the thread starts nothing more, its outcomes are final.
                        break
                    if run.started_at is not None and time.monotonic() - run.started_at >= limit:
                        run.abandoned = True
                        timed_out = run.deliveries[run.next_index - 1]
                        leftovers = run.deliveries[run.next_index :]
                        if run.waiting is not None:  # awaiting a returned coroutine: cancel it
                            run.waiting.cancel()
                if timed_out is not None:
                    self._thread_stuck(task, timed_out, limit)
                    break
            if timed_out is None:
                with run.lock:
                    leftovers = run.deliveries[run.next_index :]
        finally:
            self.runs.discard(run)
            self.running -= n
            self.last_busy = time.time()
            for d in chunk:
                self.active.pop(id(d), None)
                self.held_since.pop(id(d), None)
            self.metrics.in_flight.dec(n)
        with run.lock:
            outcomes = list(run.outcomes)
        for d, exc, elapsed in outcomes:
            await self._settle(d, exc, elapsed)
        if timed_out is not None:
            exc = HandlerTimeout(f"handler ran past its timeout of {limit:g} s")
            await self._settle(timed_out, exc, limit)
        if leftovers:
            if self.stopping:
                await self._give_back(leftovers)
            else:
                await self._run_sync_chunk(leftovers)

    def _thread_stuck(self, task: PoolTask, timed_out: Delivery, limit: float) -> None:
        """The watchdog gave up on a handler thread: count it stuck, replace it, report it."""
        assert self.pool is not None
        self.pool.abandon(task)
        self._thread_returned()
        task.fut.add_done_callback(lambda _f: self._thread_returned())
        self.log.warning(
            "sync handler past its timeout: abandoning its thread",
            extra=logs.kv(message_id=timed_out.message_id, timeout=limit),
        )
        if not self.pool.healthy() and not self._unhealthy_logged:
            self._unhealthy_logged = True
            self.log.error(
                "too many sync handler threads stuck past their timeout: failing the"
                " liveness probe (/healthz) so the worker is restarted",
                extra=logs.kv(stuck=self.pool.stuck, bound=self.pool.spare),
            )

    # ---- the direct lane (direct.py) -----------------------------------------------------------

    async def _serve_direct(self) -> None:
        """Run the direct lane on a pool thread and watch its handler's timeout. A handler past it is
        abandoned with its thread; its message settles as timed out, and a new lane on a new thread
        takes the acks and the chunk's unstarted rest. Returns when the lane ends (a stop)."""
        assert self.pool is not None and self.direct is not None
        limit = self.cfg.handler_timeout
        while True:
            lane = self.direct
            task = self.pool.submit(lane.serve)
            done = asyncio.wrap_future(task.fut)
            taken = None
            while taken is None and not done.done():
                started = lane.running_since()
                wait = limit if started is None else max(0.0, started + limit - time.monotonic())
                await asyncio.wait({done}, timeout=wait)
                if not done.done():
                    taken = lane.abandon_if_past(limit)
            if taken is None:
                back = done.result()  # the thread's own error (a refusal, Stopped) ends the worker
                if back:
                    self.metrics.requeued.inc(back)
                    self.log.info("returned unstarted messages to the queue", extra=logs.kv(count=back))
                return
            timed_out, outcomes, rest, exact, acks = taken
            self._thread_stuck(task, timed_out, limit)
            for d, exc, elapsed in outcomes:  # finished before the timed-out one: the lane did not see them
                if exc is None:
                    self._measured(elapsed)
                    self.processed += 1
                    self.metrics.processed.inc()
                    acks.append(d)
                else:
                    await self._settle(d, exc, elapsed)
            await self._settle(
                timed_out, HandlerTimeout(f"handler ran past its timeout of {limit:g} s"), limit
            )
            self.direct = DirectLane(
                self, lane.source, lane.client, lane.scripts, pending=rest, exact=exact, acks=acks
            )
            if self.stopping:
                self.direct.halt()

    async def _shutdown_direct(self, serving: asyncio.Task[None]) -> None:
        """The direct lane's shutdown: it was halted; wait for it within the grace period (it finishes
        its message, acks, returns its unstarted rest), then return whatever the processing list still
        holds and deregister."""
        pending = await self._within_grace({serving})
        try:
            ended = None if pending or serving.cancelled() else serving.exception()
            if isinstance(ended, STOP_OR_REFUSED):
                raise ended  # Redis gone past the deadline, or a refusal: reported below
            if pending:
                assert self.direct is not None
                lane = self.direct
                # Between two of its calls: its messages are then all in the processing list.
                acks = await asyncio.to_thread(lane.abandon, self.cfg.block_timeout + 5)
                serving.cancel()
                await asyncio.wait({serving}, timeout=2.0)
                self.log.warning("grace period over: requeueing unfinished messages", extra=logs.kv(lanes=1))
                if acks:
                    await self._redis("ack", lambda: self.source.ack(acks))
            await self._hand_back_and_deregister()
        except STOP_OR_REFUSED as exc:
            self._unreachable_at_shutdown(exc)

    def _thread_returned(self) -> None:
        # Also called from a handler thread: only copy a plain int and set the thread-safe gauge.
        assert self.pool is not None
        self.abandoned_threads = self.pool.stuck
        self.metrics.abandoned.set(self.abandoned_threads)

    # ---- settling outcomes ---------------------------------------------------------------------

    async def _settle(self, d: Delivery, exc: BaseException | None, elapsed: float) -> None:
        """Carry out what ``settle.decide`` makes of the outcome: ack, retry or dead-letter."""
        msg = d.msg
        assert msg is not None
        self._measured(elapsed)
        cfg = self.cfg
        s = decide(
            exc,
            self._attempts(d) + 1,  # this run's number
            cfg.max_attempts,
            lambda failures: backoff_delay(failures, cfg.backoff_base, cfg.backoff_cap),
        )
        if s.action == "ack":
            self.processed += 1
            self.metrics.processed.inc()
            self.acks.append(d)
            self.ack_event.set()
            return
        assert exc is not None
        self.failed += 1
        self.metrics.failed.inc()
        if s.action == "retry" and self.source.kind == "list":
            try:
                msg.retried()  # the retry writes the message again: it must encode
            except Exception as enc:  # e.g. a body nested too deep to encode here
                s = unencodable(exc, enc, s.attempt)
        if s.action == "dead":
            await self._dead_letter(d, s.reason, s.error, s.traceback, s.attempt)
            return
        self.log.info(
            "handler failed: retrying",
            extra=logs.kv(message_id=msg.id, attempt=s.attempt, delay=round(s.delay, 3), error=repr(exc)),
        )
        if await self._redis("retry", lambda: self.source.retry(d, s.delay)):
            self.metrics.retried.inc()
        self._settled([d])

    def _measured(self, elapsed: float) -> None:
        """A handler run took ``elapsed`` seconds (also from the direct lane's thread: plain floats and a
        thread-safe histogram)."""
        self.metrics.duration.observe(elapsed)
        t = self.handler_time
        self.handler_time = elapsed if t is None else t + HANDLER_TIME_WEIGHT * (elapsed - t)
        self._adapt_chunk()

    def _attempts(self, d: Delivery) -> int:
        assert d.msg is not None
        return attempts_before(d.msg.attempts, d.deliveries)

    async def _dead_letter(self, d: Delivery, reason: str, error: str, tb: str, attempts: int) -> None:
        error, tb = clean_text(error), clean_text(tb)  # a handler's text may hold lone surrogates
        record = DeadLetter.for_raw(
            d.raw,
            reason=reason,
            error=error,
            queue=d.queue or self.source.name,
            message_id=d.message_id,
            attempts=attempts,
            worker=self.cfg.worker_id,
            traceback=tb,
        )
        self.log.warning(
            "dead-lettering a message",
            extra=logs.kv(message_id=d.message_id, reason=reason, error=error[:500]),
        )
        if await self._redis("dead", lambda: self.source.dead(d, record)):
            self.metrics.dead(reason)
        self._settled([d])

    # ---- acks ----------------------------------------------------------------------------------

    async def _acker(self) -> None:
        # Stopped by a flag, not by cancellation: redis-py can swallow a cancel that lands mid-command.
        while not self.acker_done:
            await self.ack_event.wait()
            self.ack_event.clear()
            if self.source.acks_with_fetch:
                # A lane that settles also frees room, which wakes the fetcher after this task, and a
                # fetch in flight is followed by the next at once: let the fetcher take the acks along,
                # and ack here only what it leaves (it never waits on a blocking fetch).
                await asyncio.sleep(0)
                while self.acks and not self.fetch_done.is_set():
                    await self.fetch_done.wait()
                    await asyncio.sleep(0)
            while self.acks:
                batch, self.acks = self.acks, []
                try:
                    await self._redis("ack", lambda b=batch: self.source.ack(b))  # type: ignore[misc]
                except BaseException:
                    self.acks[:0] = batch  # not acked: keep them for the next try or the final flush
                    raise
                self._settled(batch)

    async def _flush_acks(self) -> None:
        while self.acks:
            batch, self.acks = self.acks, []
            await self._redis("ack", lambda b=batch: self.source.ack(b))  # type: ignore[misc]


def run_worker(cfg: WorkerConfig, handler: Handler) -> int:
    return asyncio.run(Worker(cfg, handler).run())
