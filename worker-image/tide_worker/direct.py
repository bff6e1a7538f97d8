"""The direct lane: a sync handler at concurrency 1 on one list queue runs in a thread that fetches, runs
and acks on a sync connection of its own, so a message never crosses between the event loop and a thread.

Why: the pipeline of ``runtime.py`` hands every chunk from the loop to a handler thread and back, two
thread wake-ups per chunk. With one message per chunk (``--batch-size 1``, or a slow or shallow queue at
the defaults) those wake-ups were most of the cost: strict mode ran at half the raw BLMOVE+LREM loop, and
at light load a message waited ~0.4 ms longer for its handler than with an async handler. Here the thread
that reads the reply runs the handler, as the raw loop does.

The event loop keeps everything else: heartbeats, promotion, reaping, the handler-timeout watchdog
(``Worker._serve_direct``: a handler past its timeout is abandoned with its thread and another lane takes
over the chunk's rest), and the settling of failures (retries and dead letters run ``Worker._settle`` on
the loop while the thread waits: they are rare).

Counting, as the pipeline counts (docs/worker.md, "Crash accounting"): each round trip sends the acks of
what finished and fetches the next chunk (``fetch_batch.lua``), its first message counted started and the
rest unstarted. A chunk of more than one then takes one more call that counts the rest started, or, when
it holds a suspect (a message a reap counted interrupted), runs one message per call, each counted just
before it starts. An empty queue is waited on with BLMOVE; what it moves counts as started (the count is
0 then) and runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.exceptions as rexc

from tide_worker import logs
from tide_worker.connection import AUTH_ERRORS
from tide_worker.listsource import ListSource
from tide_worker.scripts import Scripts
from tide_worker.source import Delivery

if TYPE_CHECKING:
    from tide_worker.config import WorkerConfig
    from tide_worker.handler import Handler
    from tide_worker.runtime import ChunkRun, Worker

T = TypeVar("T")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (rexc.ConnectionError, rexc.TimeoutError, OSError)
RECONNECT_CAP = 5.0


def fits(cfg: WorkerConfig, handler: Handler) -> bool:
    """Whether the worker runs a direct lane: a sync handler in threads (a timeout), one lane, one list
    queue, one message at a time or the adaptive fetch, no dedupe markers (their check stays in the
    pipeline)."""
    return (
        not handler.is_async
        and cfg.handler_timeout > 0
        and cfg.concurrency == 1
        and bool(cfg.queue)
        and not cfg.queues
        and not cfg.dedupe_ttl
        and (cfg.batch_size is None or cfg.batch_size == 1)
    )


class Abandoned(Exception):
    """The lane was given up (its handler ran past the timeout, or the grace period ended): it makes no
    more Redis calls; the loop settled or returned what it held."""


class DirectLane:
    """One lane's state, shared between its thread (``serve``) and the loop (watchdog, stop, shutdown).

    ``state`` guards ``current``, ``rest``, ``acks``, ``halted`` and ``abandoned``; it is taken before a
    run's own lock, never after. ``io`` is held around every Redis call, so the loop can abandon the
    lane between two calls (shutdown), never in the middle of one.
    """

    def __init__(
        self,
        worker: Worker,
        source: ListSource,
        client: Any,
        scripts: Scripts | None = None,
        pending: list[Delivery] | None = None,
        exact: bool = False,
        acks: list[Delivery] | None = None,
    ) -> None:
        self.w = worker
        self.source = source
        self.client = client
        self.scripts = scripts or Scripts(client)
        self.log = logs.get()
        self.state = threading.Lock()
        self.io = threading.Lock()
        self.current: ChunkRun | None = None
        self.started = 0.0  # unix time the current run started (the heartbeat's oldest_started)
        # A chunk's messages after the current run (exact: one message a run), and how they are counted.
        self.rest: list[Delivery] = []
        self.exact = False
        # Taken over from an abandoned lane: run first; exact: they are counted unstarted yet.
        self.pending = list(pending or [])
        self.pending_exact = exact
        self.acks: list[Delivery] = list(acks or [])  # finished, not yet acknowledged
        self.halted = False
        self.abandoned = False
        # The connection a blocking move waits on (under ``state``): a stop shuts its socket, so an idle
        # lane ends now instead of at the block's timeout.
        self.blocked: Any = None
        self.cut = False  # halt() shut the blocked connection's socket

    # ---- the thread ------------------------------------------------------------------------------

    def serve(self) -> int:
        """Fetch, run and ack until halted (a stop: then ack and return the rest, and say how many went
        back) or abandoned."""
        try:
            while True:
                with self.state:
                    if self.halted:
                        break
                    chunk, exact, counted = self.pending, self.pending_exact, not self.pending_exact
                    self.pending = []
                if not chunk:
                    chunk, exact = self._fetch()
                    counted = True
                if chunk:
                    self._run_chunk(chunk, exact, counted)
            return self._finish()
        except Abandoned:
            return 0

    def _fetch(self) -> tuple[list[Delivery], bool]:
        """The next chunk, and whether it runs exact (one message a count: it holds a suspect)."""
        src = self.source
        n = max(1, self.w.chunk_size)
        acks = self._acks()
        try:
            reply = self._once("fetch", lambda: self._fetch_batch(n, acks, "-1"))
        except CONNECTION_ERRORS as exc:
            self._lost("fetch", exc)
            return [], False
        self._acked(acks)
        got = src._deliveries(reply)
        if not got:
            if self.halted:
                return [], False
            raw = self._block()
            return ([src._delivery(raw)] if raw is not None else []), False
        exact = any(d.suspect for d in got)
        if len(got) > 1 and not exact:
            self._count(0)  # the rest of the chunk counts as started: it runs back to back
        return got, exact

    def _run_chunk(self, chunk: list[Delivery], exact: bool, counted: bool) -> None:
        i = 0
        while i < len(chunk):
            if self.halted:
                self._keep(chunk[i:], exact)
                return
            if exact:
                if i > 0 or not counted:
                    self._count(len(chunk) - i - 1)  # this one started, those after it not
                part = chunk[i : i + 1]
            else:
                part = chunk[i:]
            i += len(part)
            self._keep(chunk[i:], exact)
            fit = []
            for d in part:
                unfit = self.w._unfit(d)
                if unfit is None:
                    fit.append(d)
                else:
                    reason, error = unfit
                    attempts = 0 if d.msg is None else self.w._attempts(d)
                    self._on_loop(self.w._dead_letter(d, reason, error, "", attempts))
            untouched = self._run(fit) if fit else []
            if untouched:  # halted between two messages
                self._keep(untouched + chunk[i:], exact)
                return
        self._keep([], exact)

    def _keep(self, rest: list[Delivery], exact: bool) -> None:
        with self.state:
            self.rest, self.exact = rest, exact

    def _run(self, chunk: list[Delivery]) -> list[Delivery]:
        """Run ``chunk`` back to back on this thread; settle what ran; return what a halt left unstarted."""
        from tide_worker.runtime import ChunkRun

        w = self.w
        run = ChunkRun(chunk, loop=w.loop)
        with self.state:
            if self.abandoned:
                raise Abandoned
            run.halted = self.halted
            self.current = run
            self.started = time.time()
        n = len(chunk)
        w.running = n
        w.metrics.in_flight.inc(n)
        try:
            w._chunk_body(run)
        finally:
            w.running = 0
            w.last_busy = time.time()
            w.metrics.in_flight.dec(n)
        with self.state, run.lock:
            if run.abandoned:
                raise Abandoned
            self.current = None
            outcomes = list(run.outcomes)
            untouched = run.deliveries[run.next_index :]
        for d, exc, elapsed in outcomes:
            if exc is None:
                w._measured(elapsed)
                w.processed += 1
                w.metrics.processed.inc()
                with self.state:
                    self.acks.append(d)
            else:
                self._on_loop(w._settle(d, exc, elapsed))
        return untouched

    def _finish(self) -> int:
        """Stopping: acknowledge what finished, return the chunk's unstarted rest to the queue's head."""
        acks = self._acks()
        if acks:
            self._call("ack", lambda: self._fetch_batch(0, acks, ""))
            self._acked(acks)
        with self.state:
            rest, self.rest = self.rest, []
        if not rest:
            return 0
        keys, args = self.source.requeue_call("only", rest)
        return int(self._call("requeue", lambda: self.scripts.requeue_head(keys=keys, args=args)))

    # ---- Redis calls -----------------------------------------------------------------------------

    def _fetch_batch(self, count: int, acks: list[Delivery], unstarted: str) -> Any:
        keys, args = self.source.fetch_call(count, acks, unstarted=unstarted)
        return self.scripts.fetch_batch(keys=keys, args=args)

    def _count(self, unstarted: int) -> None:
        """Set the unstarted count (the acks waiting ride along)."""
        acks = self._acks()
        self._call("count", lambda: self._fetch_batch(0, acks, str(unstarted)))
        self._acked(acks)

    def _acks(self) -> list[Delivery]:
        with self.state:
            return list(self.acks)

    def _acked(self, acks: list[Delivery]) -> None:
        """``acks`` landed; they stay listed until then, so an abandonment hands them to the loop."""
        if acks:
            with self.state:
                del self.acks[: len(acks)]

    def _block(self) -> bytes | None:
        src = self.source
        timeout = self.w.cfg.block_timeout
        while (call := src.block_call(timeout)) is not None:
            name, args = call
            try:
                result: bytes | None = self._once("fetch", lambda: self._move(name, args))  # noqa: B023
                return result
            except rexc.ResponseError as exc:
                if name != "blmove" or not src.blmove_refused(exc):
                    raise
            except CONNECTION_ERRORS as exc:
                if self.halted:  # the stop cut the wait; the move may have landed: returned at once
                    self._returned_after_cut()
                else:
                    self._lost("fetch", exc)
                return None
        time.sleep(min(0.2, timeout))
        return None

    def _move(self, name: str, args: tuple[Any, ...]) -> bytes | None:
        """The blocking move, on a connection this lane holds for it (so a stop can cut it): a standalone
        or Sentinel client; on Cluster the client's own call (it routes by slot; a stop then waits out the
        block)."""
        if not isinstance(self.client, redis.Redis):
            result: bytes | None = getattr(self.client, name)(*args)
            return result
        if name == "blmove":
            src, dst, timeout, side, to = args
            command: tuple[Any, ...] = ("BLMOVE", src, dst, side, to, timeout)
        else:
            src, dst, timeout = args
            command = ("BRPOPLPUSH", src, dst, timeout)
        client: Any = self.client  # redis-py's connection API is untyped
        pool = client.connection_pool
        conn: Any = pool.get_connection()
        try:
            with self.state:
                if self.halted:
                    return None
                self.blocked = conn
            conn.send_command(*command)
            result = client.parse_response(conn, command[0])
            return result
        except rexc.ResponseError:
            raise  # the server's answer (say, no BLMOVE): the connection is fine
        except BaseException:
            conn.disconnect()  # a cut or lost connection: reconnected by the next call
            raise
        finally:
            with self.state:
                cut, self.blocked, self.cut = self.cut, None, False
            if cut:  # cut after its reply came: the socket is dead, so the next call reconnects
                conn.disconnect()
            pool.release(conn)

    def _lost(self, what: str, exc: BaseException) -> None:
        """A move's reply was lost: it may have moved messages we never saw. Once Redis answers again,
        return everything in the processing list (this lane holds nothing else while it fetches) and
        thaw the unstarted count the return froze."""
        self.w._disconnected(what, exc)
        self._wait_out(1)
        back = self._recover()
        if back:
            self.log.warning("returned messages a lost fetch reply left behind", extra=logs.kv(count=back))

    def _returned_after_cut(self) -> None:
        """A stop cut a blocking move: what it may have moved (its reply unread) goes back as after a lost
        reply, without reporting a lost connection (the next call reconnects)."""
        back = self._recover()
        if back:
            self.log.info("returned what a stopped wait had moved", extra=logs.kv(count=back))

    def _recover(self) -> int:
        """Send the acks waiting, return the processing list's messages to the queue's head, thaw the
        unstarted count; how many went back."""
        acks = self._acks()

        def recover() -> int:
            if acks:
                self._fetch_batch(0, acks, "")
            keys, args = self.source.requeue_call("except", [])
            back = int(self.scripts.requeue_head(keys=keys, args=args))
            self._fetch_batch(0, [], "!0")
            return back

        back = self._call("recover", recover)
        self._acked(acks)
        return back

    def _once(self, what: str, call: Callable[[], T]) -> T:
        """One attempt under ``io``; a connection error is the caller's to handle."""
        with self.io:
            if self.abandoned:
                raise Abandoned
            result = call()
        self.w._reconnected()
        return result

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """``call`` until it answers, waiting out connection loss as ``Worker._redis`` does."""
        attempt = 0
        while True:
            try:
                return self._once(what, call)
            except AUTH_ERRORS:
                raise
            except CONNECTION_ERRORS as exc:
                self.w._disconnected(what, exc)
                attempt += 1
                self._wait_out(attempt)

    def _wait_out(self, attempt: int) -> None:
        from tide_worker.runtime import Stopped

        if time.monotonic() >= self.w.hard_deadline:
            raise Stopped("direct lane")
        delay = min(RECONNECT_CAP, 0.1 * 2 ** (attempt - 1))
        time.sleep(random.uniform(delay / 2, delay))

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the worker's event loop and wait for it (failures: rare, so the hop is fine)."""
        assert self.w.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.w.loop).result()

    # ---- the loop's side -------------------------------------------------------------------------

    def halt(self) -> None:
        """A stop: start nothing new; the thread acks, returns the unstarted rest and ends. A thread
        waiting in a blocking move is woken by shutting down that connection's socket (its read then fails
        at once, in the thread, which recovers what the move may have moved)."""
        with self.state:
            self.halted = True
            run = self.current
            if run is not None:
                with run.lock:
                    run.halted = True
            # under ``state``: the thread cannot release the connection to its pool meanwhile
            sock = getattr(self.blocked, "_sock", None)  # redis-py's; closing it is left to the thread
            if sock is not None:
                self.cut = True
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)

    def running_since(self) -> float | None:
        """The monotonic start of the message running now, or None."""
        with self.state:
            run = self.current
            if run is None:
                return None
            with run.lock:
                return run.started_at

    def oldest_started(self) -> float:
        with self.state:
            return self.started if self.current is not None else 0.0

    def abandon_if_past(
        self, limit: float
    ) -> (
        tuple[
            Delivery, list[tuple[Delivery, BaseException | None, float]], list[Delivery], bool, list[Delivery]
        ]
        | None
    ):
        """The watchdog: if the running message is past ``limit``, give up on this lane and hand over what
        it held: (the timed-out message, the outcomes not yet settled, the chunk's unstarted rest and
        whether it runs exact, the acks not yet sent)."""
        with self.state:
            run = self.current
            if run is None:
                return None
            with run.lock:
                if run.started_at is None or time.monotonic() - run.started_at < limit:
                    return None
                run.abandoned = True
                self.abandoned = True
                timed_out = run.deliveries[run.next_index - 1]
                leftovers = run.deliveries[run.next_index :] + self.rest
                outcomes = list(run.outcomes)
                if run.waiting is not None:  # awaiting a returned coroutine: cancel it
                    run.waiting.cancel()
            return timed_out, outcomes, leftovers, self.exact, list(self.acks)

    def abandon(self, wait: float) -> list[Delivery]:
        """The grace period is over: no more calls once the one in flight (if any, up to ``wait``
        seconds) ended. Returns the acks not sent. Blocks: call it in a thread."""
        got = self.io.acquire(timeout=wait)
        try:
            with self.state:
                self.abandoned = True
                run = self.current
                if run is not None:
                    with run.lock:
                        run.abandoned = True
                acks, self.acks = self.acks, []
                return acks
        finally:
            if got:
                self.io.release()
