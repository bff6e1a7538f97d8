"""Every QueueConsumer's loop, started and stopped from kopf's watch events instead of a kopf daemon each.

A kopf daemon per resource kept, per resource, kopf's copy of the whole last-seen body (``managedFields``
included), its invocation and stopper machinery and about ten coroutines (``docs/operator.md``, "Memory");
this module keeps one small task per resource running ``Consumer.run`` and a trimmed body (``light_body``:
what the loop reads). kopf still owns the watch, the peering and the lifecycle:

- a watch event (the initial listing, ADDED, MODIFIED) starts the loop of a resource not yet served, or
  hands the running loop the new body (its next poll sees the new spec, generation and annotations);
- DELETED stops it (kopf keeps no finalizer for event handlers, so deleting a QueueConsumer never waits
  for the operator);
- while kopf's peering pauses the operator (another replica of higher priority is alive), every loop is
  stopped, as kopf stops its daemons; kopf lists the resources again when it resumes, which starts them;
- sharded (``TIDE_SHARDS``, kopf standalone): only the resources of the shards this replica holds run
  (``tide_operator.sharding`` keeps the leases); the others are kept as a trimmed body each, so a shard
  gained starts its loops at once, and a shard lost stops them (``gain`` / ``lose``).

The poll of each loop still waits on the shared polling grid (``redis_reader.Ticker`` in ``Consumer.run``);
that wait is the one point where a loop sleeps between polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from tide_operator.consumer import Consumer, Shared
from tide_operator.shard import shard_of

log = logging.getLogger("tide_operator")

# How long a stopped loop may take to finish its poll before it is cancelled (a daemon's old timeout).
STOP_TIMEOUT = 5.0
# Heap given back to the OS this often (glibc keeps the pages freed after the startup burst otherwise).
TRIM_SECONDS = 15.0


# annotations that copy the whole object: never read by a loop, and as large as the rest of the body
BULKY_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "tide.dev/last-handled-configuration",
)


def light_body(body: Mapping[str, Any], status: bool = True) -> kopf.Body:
    """What a loop reads of its resource: kind, name, namespace, uid, generation, annotations, spec and (at
    its start) the status it resumes from. The rest of the watched object (``managedFields`` above all, the
    status of every later event) is dropped."""
    meta = dict(body.get("metadata") or {})
    if meta.get("annotations"):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k not in BULKY_ANNOTATIONS}
    raw: Any = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "generation", "annotations") if k in meta
        },
        "spec": body.get("spec") or {},
        "status": (body.get("status") or {}) if status else {},
    }
    return kopf.Body(raw)


def resume_status(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a status a loop starts from (``Consumer.__init__``): kept for the resources of shards
    another replica serves, so the one that takes a shard over resumes cooldowns and transition times."""
    status = body.get("status") or {}
    kept: dict[str, Any] = {k: status[k] for k in ("lastScaleTime", "lastActiveTime") if k in status}
    total = (status.get("backlog") or {}).get("total")
    if total is not None:
        kept["backlog"] = {"total": total}
    conditions = [
        {"type": c.get("type"), "lastTransitionTime": c.get("lastTransitionTime", "")}
        for c in status.get("conditions") or []
    ]
    if conditions:
        kept["conditions"] = conditions
    return kept


def resting_body(body: Mapping[str, Any]) -> kopf.Body:
    """A resource this replica does not serve (yet): its light body with only ``resume_status``."""
    light = light_body(body, status=False)
    raw: Any = dict(light)
    raw["status"] = resume_status(body)
    return kopf.Body(raw)


class Stop:
    """The ``stopped`` flag a loop polls (what kopf's DaemonStopped was): true once the loop must end."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


class Fleet:
    """The running loops, one per served QueueConsumer, keyed by namespace/name."""

    def __init__(self, shared: Shared, paused: Any | None = None, shards: int | None = None) -> None:
        self.shared = shared
        self.paused = paused  # kopf's operator-paused ToggleSet (peering), None when standalone
        self.loops: dict[tuple[str, str], tuple[Consumer, Stop, asyncio.Task[None]]] = {}
        # sharded: the shard count, the shards held, and the resources of the others (not running)
        self.shards = shards
        self.held: set[int] = set()
        self.resting: dict[tuple[str, str], kopf.Body] = {}
        self._context: contextvars.Context | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()  # stopped loops being let finish (_finish)
        self._trim = _malloc_trim()

    def start(self) -> None:
        if self.paused is not None:
            self._tasks.append(asyncio.create_task(self._follow_pauses(), name="tide: peering pauses"))
        if self._trim is not None:
            self._tasks.append(asyncio.create_task(self._trim_heap(), name="tide: heap trim"))

    def __len__(self) -> int:
        return len(self.loops)

    def event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """One watch event of a QueueConsumer (``kind`` None: the listing)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        # kopf's context (its event queue, which kopf.event posts to): a loop started by a shard gained,
        # from the lease task, runs in it too
        self._context = contextvars.copy_context()
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            self.resting.pop(key, None)
            self.stop(key)
            return
        if self.paused is not None and self.paused.is_on():
            return  # an event that slipped in while pausing; the listing after the pause starts it
        if self.shards is not None and shard_of(key[0], key[1], self.shards) not in self.held:
            self.resting[key] = resting_body(body)  # served by another replica: kept to take it over
            return
        loop = self.loops.get(key)
        if loop is not None and loop[0].body.metadata.get("uid") == meta.get("uid"):
            loop[0].update(resting_body(body) if self.shards is not None else light_body(body, status=False))
            return
        if loop is not None:  # deleted and created again under the same name before we saw the delete
            self.stop(key)
        self.resting.pop(key, None)
        self._run(key, light_body(body))

    def _run(self, key: tuple[str, str], body: kopf.Body) -> None:
        consumer = Consumer(body, log, self.shared)
        stop = Stop()
        log.debug(f"[{key[0]}/{key[1]}] loop started")
        task = asyncio.create_task(consumer.run(stop), name=f"tide: {key[0]}/{key[1]}", context=self._context)
        self.loops[key] = (consumer, stop, task)

    def stop(self, key: tuple[str, str]) -> None:
        loop = self.loops.pop(key, None)
        if loop is not None:
            loop[1].set = True
            finishing = asyncio.create_task(_finish(loop[2]))
            # a set that forgets each when done: stopping 10,000 loops at once stays linear
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)

    def stop_all(self) -> None:
        for key in list(self.loops):
            self.stop(key)

    # --- sharded: the shards this replica holds (tide_operator.sharding) ------------------------------

    def gain(self, shard: int) -> None:
        """Shard ``shard`` is this replica's now: start the loops of its resources."""
        assert self.shards is not None
        self.held.add(shard)
        keys = [k for k in self.resting if shard_of(k[0], k[1], self.shards) == shard]
        for key in keys:
            self._run(key, self.resting.pop(key))
        log.info(f"shard {shard}: serving {len(keys)} QueueConsumers ({len(self.loops)} in all)")

    async def lose(self, shard: int, deadline: float) -> None:
        """Shard ``shard`` is no longer this replica's: stop its loops, and return once each has ended
        (cancelled if still busy a second before ``deadline``, monotonic: when the lease can expire)."""
        assert self.shards is not None
        self.held.discard(shard)
        keys = [k for k in self.loops if shard_of(k[0], k[1], self.shards) == shard]
        tasks = []
        for key in keys:
            consumer, stop, task = self.loops.pop(key)
            stop.set = True
            # what the next holder would see of it; later watch events refresh it
            self.resting[key] = resting_body(consumer.body)
            tasks.append(task)
        grace = min(STOP_TIMEOUT, deadline - time.monotonic() - 1.0)
        if grace <= 0:
            # too late to let a poll finish (the process stalled past its renewals): cancelled before
            # any of them runs on to its next request, so none writes once another replica may hold it
            for task in tasks:
                task.cancel()
        await asyncio.gather(*(_finish(t, max(0.0, grace)) for t in tasks))
        log.info(f"shard {shard}: stopped {len(keys)} loops ({len(self.loops)} left)")

    async def _follow_pauses(self) -> None:
        assert self.paused is not None
        while True:
            await self.paused.wait_for(True)
            if self.loops:
                log.info(f"peering paused this operator: stopping {len(self.loops)} loops")
            self.stop_all()
            await self.paused.wait_for(False)

    async def _trim_heap(self) -> None:
        assert self._trim is not None
        while True:
            await asyncio.sleep(TRIM_SECONDS)
            self._trim(0)

    async def close(self) -> None:
        self.stop_all()
        pending = [t for t in (*self._tasks, *self._finishing) if not t.done()]
        for t in self._tasks:
            if t.get_name().startswith("tide: "):
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)


async def _finish(task: asyncio.Task[None], timeout: float = STOP_TIMEOUT) -> None:
    """Let a stopped loop end its poll (it checks its flag after each), cancel it after ``timeout``."""
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    elif not task.cancelled() and task.exception() is not None:
        log.error(f"a loop ended with {task.exception()!r}")
    log.debug(f"[{task.get_name().removeprefix('tide: ')}] loop ended")


def _malloc_trim() -> Any | None:
    """glibc's ``malloc_trim`` (hands freed heap pages back to the OS), or None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def kopf_pause_toggle() -> Any:
    """kopf's operator-paused ToggleSet (on while peering or index pre-population pauses the operator).

    kopf has no public accessor for it: it is the ``operator_paused`` argument of the task kopf names
    "daemon killer", which stops the daemons on a pause. Found here from a startup handler (the task exists
    by then). A kopf that no longer has it fails the startup loudly rather than letting two replicas act."""
    for task in asyncio.all_tasks():
        if task.get_name() != "daemon killer":
            continue
        coro: Any = task.get_coro()
        for _ in range(3):  # guard(coro=daemon_killer(...)) in kopf 1.37-1.45
            frame = getattr(coro, "cr_frame", None)
            if frame is None:
                break
            toggle = frame.f_locals.get("operator_paused")
            if toggle is not None and hasattr(toggle, "wait_for") and hasattr(toggle, "is_on"):
                return toggle
            coro = frame.f_locals.get("coro")
    raise RuntimeError(
        f"kopf {getattr(kopf, '__version__', '?')}: its peering pause state was not found (task 'daemon "
        "killer' and its operator_paused argument); this operator supports kopf 1.37-1.45, or run it "
        "with --standalone"
    )
