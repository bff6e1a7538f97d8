"""Waking a resource at zero on the first push, without waiting for its next poll: keyspace notifications.

Polling stays the source of truth; this only shortens the wait of the transition that matters, a push onto
the queue of a resource whose target is at zero. Where the Redis server publishes keyspace notifications
for lists and streams (``notify-keyspace-events`` holds ``K`` or ``E``, and ``l`` / ``t``, or ``A``), one
pub/sub connection per server (per shared client, as the read batcher is shared; on Cluster, per master
node, since notifications there are node-local) subscribes to the keys of the resources that are at zero,
and an event on one of them ends that resource's sleep: it reads, decides and patches ``/scale`` within
milliseconds.

Why exact ``SUBSCRIBE __keyspace@<db>__:<key>`` channels, and only for resources at zero:

- An exact channel costs the server one dictionary lookup per event whatever the number of subscriptions;
  a ``PSUBSCRIBE`` pattern per key would make every write on the server glob-match every pattern (10,000
  patterns: 10,000 matches per write). A key needs no escaping either.
- ``__keyevent@<db>__:lpush`` would be four channels in all, but would bring the operator every push on
  the server, the workers' moves into their processing lists included (one per message consumed), to be
  filtered in Python: its cost grows with the server's whole write rate. It is used only where the server
  has ``E`` without ``K``.
- A busy queue is unsubscribed as soon as its target is above zero, so a queue taking 10,000 pushes a second
  costs the operator nothing; 10,000 idle queues cost 10,000 subscriptions (about 1 MB on the server) and no
  traffic until a push.

Races are closed by reading once more: a resource that joins a channel (or whose channel is confirmed
subscribed, or re-subscribed after a reconnect) is woken once, so a push between its last read and the
subscription taking effect is not left to the next poll. Wakes are coalesced: at most one extra read per
resource every ``WAKE_MIN_GAP`` seconds, however many pushes arrive.

``TIDE_OPERATOR_KEYSPACE_EVENTS``: ``use`` (default) subscribes where the server already publishes the
events, ``configure`` adds ``K``, ``l`` and ``t`` to what the server has (``CONFIG SET``, checked again every
``RECHECK_SECONDS``, so a restarted server gets it back), ``off`` never subscribes. Where the events are
off, ``CONFIG GET`` is refused (ACL, a renamed command) or the pub/sub connection is lost, the resources on
that server carry ``WakeOnPush=False`` with the reason, the operator logs it once per server, and polling
goes on as before; a lost connection is reconnected with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from tide_worker.connection import redact

from tide_operator import metrics
from tide_operator.conditions import Condition, Reason
from tide_operator.spec import QueueConsumerSpec

MODE_ENV = "TIDE_OPERATOR_KEYSPACE_EVENTS"
MODES = ("off", "use", "configure")
DEFAULT_MODE = "use"
# At most one extra read per resource this often, however many pushes arrive.
WAKE_MIN_GAP = 0.25
# The server's notify-keyspace-events is read again this often (turned on later, or lost by a restart).
RECHECK_SECONDS = 60.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 10.0
CLOSE_PATIENCE = 5.0  # a closing watch's task ends within a second or two; past this it is left behind
# Channels per SUBSCRIBE command (10,000 idle queues subscribe in ten commands).
SUBSCRIBE_CHUNK = 1000
# What a push onto a list or a stream publishes (LMOVE/BLMOVE and Lua scripts publish lpush/rpush too).
EVENTS = {"list": ("lpush", "rpush", "linsert"), "stream": ("xadd",)}
CLASS = {"list": "l", "stream": "t"}
ALL_CLASSES = "g$lshzxetd"  # what the A alias stands for (Redis 7)
WAKE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

log = logging.getLogger("tide_operator")


def mode_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The operator's keyspace-events setting; a value not in ``MODES`` is a ValueError saying what to set."""
    raw = environ.get(MODE_ENV, DEFAULT_MODE).strip().lower() or DEFAULT_MODE
    if raw not in MODES:
        raise ValueError(f"{MODE_ENV}={raw!r} is not one of {', '.join(MODES)} (default {DEFAULT_MODE})")
    return raw


def classes(flags: str) -> set[str]:
    """The event classes of a ``notify-keyspace-events`` value, with ``A`` expanded."""
    out = set(flags)
    if "A" in out:
        out |= set(ALL_CLASSES)
    return out


def channel_kind(flags: str) -> str | None:
    """Which channels the server publishes: ``keyspace`` (K, preferred), ``keyevent`` (E only), or None."""
    c = classes(flags)
    return "keyspace" if "K" in c else "keyevent" if "E" in c else None


def configured(flags: str) -> str:
    """``flags`` with what ``configure`` adds: K (unless K or E is there), l and t (unless A covers them)."""
    c = classes(flags)
    add = ("" if "K" in c or "E" in c else "K") + "".join(x for x in "lt" if x not in c)
    return flags + add


def missing_for(flags: str, kind: str) -> str:
    """What ``flags`` lacks for a source of ``kind`` (list, stream): '' when its pushes are published."""
    c = classes(flags)
    return ("" if "K" in c or "E" in c else "K") + ("" if CLASS[kind] in c else CLASS[kind])


class Resource(Protocol):
    """What the waker needs of a resource's loop (``consumer.Consumer``)."""

    spec: QueueConsumerSpec | None
    current: int | None
    paused: bool  # the tide.dev/paused annotation as the loop last read it (a plain copy, per poll)

    @property
    def reader(self) -> Any: ...

    @property
    def interval(self) -> float: ...

    def condition(self, ctype: str, ok: bool, reason: str, message: str) -> bool: ...


@dataclass(eq=False)
class Sleeper:
    """One resource's sleep between polls, which a push on any of its servers ends early (coalesced)."""

    poked: bool = False  # an event (or a subscription) since the resource's last read
    last: float = -math.inf  # when its last early read was released
    future: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        """A push (or a new subscription): end the sleep now, or at the end of the coalescing gap."""
        self.poked = True
        self._release()

    def _release(self) -> None:
        fut = self.future
        if fut is None or fut.done():
            return
        loop = asyncio.get_running_loop()
        delay = self.last + WAKE_MIN_GAP - loop.time()
        if delay <= 0:
            self.timer = None
            fut.set_result(None)
        elif self.timer is None:
            self.timer = loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        self._release()


@dataclass(eq=False)
class Handle:
    """One resource's membership on one server: the keys it watches there."""

    kind: str
    keys: tuple[str, ...]
    sleeper: Sleeper
    armed: bool = False

    def poke(self) -> None:
        if self.armed:
            self.sleeper.poke()


@dataclass
class ServerState:
    """What one server allows: its flags once read, a refusal, and whether the subscription is live."""

    flags: str | None = None
    refused: str | None = None
    connected: bool = False
    error: str | None = None  # the last connection error while reconnecting


@dataclass(eq=False)
class ServerWatch:
    """The one pub/sub connection of one Redis server (one shared client) and what it subscribes to."""

    client: Any  # redis.asyncio.Redis, or a RedisCluster with ``node`` (one watch per master node)
    mode: str
    node: Any = None
    db: int = 0
    label: str = ""
    state: ServerState = field(default_factory=ServerState)
    handles: dict[Any, Handle] = field(default_factory=dict)  # resource -> its handle
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _fresh: set[Handle] = field(default_factory=set)  # armed since the subscriptions were last applied
    _map: dict[str, set[Handle]] = field(default_factory=dict)  # channel -> armed handles
    _keys: dict[str, set[Handle]] = field(default_factory=dict)  # key -> armed handles
    _logged: tuple[str, str] | None = None
    # closing: every loop of this watch ends at its next turn. A flag as well as the cancellation, because
    # redis-py can swallow a cancellation that lands inside a pub/sub command (an UNSUBSCRIBE in flight)
    _closing: bool = False
    wakes: int = 0  # early reads released by events, for tests and the bench

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    # --- membership ------------------------------------------------------------------------------------

    def channels(self) -> dict[str, set[Handle]]:
        """The channels the armed resources need, each with the handles it wakes."""
        out: dict[str, set[Handle]] = {}
        kind = channel_kind(self.state.flags or "")
        for h in self.handles.values():
            if not h.armed:
                continue
            if kind == "keyspace":
                for key in h.keys:
                    out.setdefault(f"__keyspace@{self.db}__:{key}", set()).add(h)
            elif kind == "keyevent":
                for event in EVENTS[h.kind]:
                    out.setdefault(f"__keyevent@{self.db}__:{event}", set()).add(h)
        return out

    def _by_key(self) -> dict[str, set[Handle]]:
        out: dict[str, set[Handle]] = {}
        for h in self.handles.values():
            if h.armed:
                for key in h.keys:
                    out.setdefault(key, set()).add(h)
        return out

    def set(self, resource: Any, sleeper: Sleeper, kind: str, keys: tuple[str, ...], armed: bool) -> Handle:
        h = self.handles.get(resource)
        if h is None or h.kind != kind or h.keys != keys:
            if h is not None and h.armed:
                h.armed = False
                self._changed.set()  # its old channels go
            h = self.handles[resource] = Handle(kind, keys, sleeper)
        if armed != h.armed:
            h.armed = armed
            if armed:
                self._fresh.add(h)
            self._changed.set()
        return h

    def remove(self, resource: Any) -> None:
        h = self.handles.pop(resource, None)
        if h is not None and h.armed:
            self._changed.set()

    def condition(self, kind: str) -> tuple[bool, str, str] | None:
        """WakeOnPush for a source of ``kind`` on this server (None while the first check is under way)."""
        s = self.state
        where = self.label
        if s.refused is not None:
            return False, Reason.CONFIG_REFUSED, f"{where}: {s.refused}; polling"
        if s.flags is None:
            if s.error is not None:
                return False, Reason.RECONNECTING, f"{where}: {s.error}; reconnecting, polling meanwhile"
            return None
        missing = missing_for(s.flags, kind)
        if missing:
            hint = (
                f"CONFIG SET notify-keyspace-events with {missing!r} added, or {MODE_ENV}=configure"
                if self.mode == "use"
                else "the operator could not add it"
            )
            return (
                False,
                Reason.NOTIFICATIONS_OFF,
                f"{where}: notify-keyspace-events is {s.flags!r}, without {missing!r}: {kind} pushes are not "
                f"published ({hint}); polling",
            )
        if not s.connected:
            why = s.error or "connecting"
            return False, Reason.RECONNECTING, f"{where}: pub/sub {why}; reconnecting, polling meanwhile"
        return (
            True,
            Reason.KEYSPACE_EVENTS,
            f"{where}: {channel_kind(s.flags)} notifications ({s.flags!r}) wake the resource at zero on a push",
        )

    def _say(self, level: int, key: str, message: str) -> None:
        """Log a state of this server once (again only when it changes)."""
        if self._logged != (key, message):
            self._logged = (key, message)
            log.log(level, redact(f"keyspace notifications, {self.label}: {message}"))

    # --- the connection --------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._closing:
            try:
                if not await self._check():
                    await self._pause(RECHECK_SECONDS)
                    continue
                await self._listen()
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except WAKE_ERRORS as exc:
                self.state.connected = False
                self.state.error = f"connection lost: {type(exc).__name__}: {exc}"
                self._say(logging.WARNING, "lost", f"{self.state.error}; reconnecting, polling meanwhile")
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(BACKOFF_MAX, backoff * 2)

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _check(self) -> bool:
        """Read (and in ``configure`` mode complete) the server's notify-keyspace-events; True when usable
        for some source. A refusal is a state; a connection error propagates (then: backoff)."""
        s = self.state
        try:
            reply = await self.client.config_get("notify-keyspace-events", **self._target())
        except ResponseError as exc:  # ACL without CONFIG, or a renamed command
            s.refused = (
                f"CONFIG GET notify-keyspace-events refused ({exc}): cannot tell whether pushes are published"
            )
            s.flags, s.connected = None, False
            self._say(logging.WARNING, "refused", f"{s.refused}; polling")
            return False
        flags = _text(_config_value(reply))
        if self.mode == "configure" and configured(flags) != flags:
            want = configured(flags)
            try:
                await self.client.config_set("notify-keyspace-events", want, **self._target())
            except ResponseError as exc:
                s.refused = f"CONFIG SET notify-keyspace-events {want!r} refused ({exc})"
                s.flags, s.connected = None, False
                self._say(logging.WARNING, "refused", f"{s.refused}; polling")
                return False
            self._say(logging.INFO, "configured", f"set notify-keyspace-events {flags!r} -> {want!r}")
            flags = want
        s.refused, s.flags, s.error = None, flags, None
        if channel_kind(flags) is None or not classes(flags) & {"l", "t"}:
            s.connected = False
            self._say(
                logging.WARNING, "off", f"notify-keyspace-events is {flags!r}: waking on push is off; polling"
            )
            return False
        return True

    async def _listen(self) -> None:
        """Keep the subscriptions what the armed resources need. Every ``RECHECK_SECONDS`` the config is read
        again (on the command connection; the subscriptions stay) and the pub/sub connection pinged; returns
        when the server stopped publishing or the channel kind changed (the caller starts over)."""
        pubsub = self.client.pubsub(node=self.node) if self.node is not None else self.client.pubsub()
        subscribed: set[str] = set()
        reader: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        kind = channel_kind(self.state.flags or "")
        deadline = loop.time() + RECHECK_SECONDS
        try:
            while not self._closing:
                if loop.time() >= deadline:
                    if not await self._check() or channel_kind(self.state.flags or "") != kind:
                        return
                    if subscribed:
                        await pubsub.ping()  # a dead connection fails here or in the reader
                    deadline = loop.time() + RECHECK_SECONDS
                self._changed.clear()
                self._map = self.channels()
                self._keys = self._by_key()
                want = set(self._map)
                add, drop = want - subscribed, subscribed - want
                for chunk in _chunks(sorted(add)):
                    await pubsub.subscribe(*chunk)
                for chunk in _chunks(sorted(drop)):
                    await pubsub.unsubscribe(*chunk)
                subscribed = want
                # newly armed on channels already live: no confirmation will come, read once more now
                fresh, self._fresh = self._fresh, set()
                for h in fresh:
                    if h.armed and not any(c in add for c in self._channels_of(h)):
                        h.poke()
                if not self.state.connected:
                    self.state.connected, self.state.error = True, None
                    self._say(
                        logging.INFO,
                        "on",
                        f"{channel_kind(self.state.flags or '')} notifications on ({self.state.flags!r})",
                    )
                if subscribed and reader is None:
                    reader = asyncio.create_task(self._read(pubsub))
                waiter = asyncio.create_task(self._changed.wait())
                waiting: set[asyncio.Future[Any]] = {waiter} if reader is None else {waiter, reader}
                timeout = max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when="FIRST_COMPLETED")
                waiter.cancel()
                if reader is not None and reader in done:
                    reader.result()  # its error: reconnect (the caller backs off)
                    return
        finally:
            if reader is not None:
                await _end(reader)
            with contextlib.suppress(*WAKE_ERRORS, RuntimeError):
                await pubsub.aclose()

    def _target(self) -> dict[str, Any]:
        return {"target_nodes": self.node} if self.node is not None else {}

    def _channels_of(self, h: Handle) -> Iterable[str]:
        if channel_kind(self.state.flags or "") == "keyevent":
            return (f"__keyevent@{self.db}__:{e}" for e in EVENTS[h.kind])
        return (f"__keyspace@{self.db}__:{k}" for k in h.keys)

    async def _read(self, pubsub: Any) -> None:
        keyspace = channel_kind(self.state.flags or "") == "keyspace"
        prefix = f"__keyspace@{self.db}__:"
        pushes = {*EVENTS["list"], *EVENTS["stream"]}
        while not self._closing:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is None:
                continue
            mtype = _text(msg.get("type"))
            channel = _text(msg.get("channel"))
            if mtype == "subscribe":
                # live from here on: read once more whatever was pushed before it
                for h in tuple(self._map.get(channel, ())):
                    h.poke()
                continue
            if mtype != "message":
                continue
            data = _text(msg.get("data"))
            if keyspace:
                if data not in pushes or not channel.startswith(prefix):
                    continue
                handles = self._keys.get(channel[len(prefix) :], ())
            else:
                handles = self._keys.get(data, ())
            for h in tuple(handles):
                if h.armed:
                    self.wakes += 1
                    metrics.WAKEUPS.inc()
                    h.poke()

    async def close(self) -> None:
        self._closing = True
        self._changed.set()  # a listen waiting for a change of membership turns at once
        if self._task is not None:
            await _end(self._task, CLOSE_PATIENCE, every=1.5)


async def _end(task: asyncio.Task[Any], patience: float = 2.0, every: float = 0.2) -> None:
    """Cancel ``task`` and wait until it ends, at most ``patience`` seconds. The cancellation is repeated
    every ``every`` seconds: redis-py can swallow one that lands inside a command, and the task then runs
    on (the watch's ``_closing`` ends it within a turn of its loop, ``get_message`` returning within a
    second). ``every`` leaves a task that took its cancellation the time to clean up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: an error of a connection being closed says nothing more here


def _config_value(reply: Any) -> Any:
    if isinstance(reply, dict):
        for k, v in reply.items():
            if _text(k) == "notify-keyspace-events":
                return v
    return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), SUBSCRIBE_CHUNK):
        yield items[i : i + SUBSCRIBE_CHUNK]


def _label(client: aredis.Redis) -> str:
    """Where the watch subscribes, for conditions and logs (no credentials): host:port/db, or for a client
    through Sentinel the master's name (the address changes with each failover)."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"Sentinel master {service}/{kw.get('db', 0)}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class Waker:
    """Every server's watch, and the one hook of a resource's loop: ``sleep`` until the next poll or a push."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode_from_env() if mode is None else mode
        self._watches: dict[tuple[int, str], ServerWatch] = {}
        self._where: dict[Any, list[ServerWatch]] = {}  # resource -> the watches it is on
        self._sleepers: dict[Any, Sleeper] = {}

    def _watch(self, client: Any, node: Any = None) -> ServerWatch:
        key = (id(client), node.name if node is not None else "")
        w = self._watches.get(key)
        if w is None:
            if node is None:
                db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
                w = ServerWatch(client, self.mode, db=db, label=_label(client))
            else:
                w = ServerWatch(client, self.mode, node=node, label=f"{node.name} (Cluster node)")
            self._watches[key] = w
            w.start()
        return w

    def _groups(self, client: Any, keys: tuple[str, ...]) -> dict[ServerWatch, tuple[str, ...]] | None:
        """The watch each key's events come from: the server, or on Cluster the master holding the key
        (notifications there are node-local). None while a Cluster client has no slot map yet."""
        if not isinstance(client, AsyncRedisCluster):
            return {self._watch(client): keys}
        out: dict[ServerWatch, list[str]] = {}
        try:
            for key in keys:
                out.setdefault(self._watch(client, client.get_node_from_key(key)), []).append(key)
        except (RedisClusterException, RedisError, AttributeError, IndexError, KeyError):
            return None
        return {w: tuple(ks) for w, ks in out.items()}

    def update(self, r: Resource) -> Sleeper | None:
        """Arm (the target at zero, not paused) or disarm the resource; set its WakeOnPush condition."""
        spec, reader = r.spec, r.reader
        if self.mode == "off":
            self.forget(r)
            r.condition(
                Condition.WAKE_ON_PUSH,
                False,
                Reason.WAKE_DISABLED,
                f"{MODE_ENV}=off: polling every {r.interval:g}s",
            )
            return None
        if spec is None or reader is None:
            self.forget(r)
            return None
        client = getattr(reader, "client", None) or reader.readers[0].client
        kind = spec.source.kind
        groups = self._groups(client, spec.source.keys if kind == "list" else (spec.source.key,))
        if groups is None:
            self.forget(r)
            return None
        for old in self._where.get(r, ()):
            if old not in groups:
                old.remove(r)
        self._where[r] = list(groups)
        sleeper = self._sleepers.get(r)
        if sleeper is None:
            sleeper = self._sleepers[r] = Sleeper()
        armed = r.current == 0 and not r.paused
        conds = []
        for w, keys in groups.items():
            w.set(r, sleeper, kind, keys, armed)
            conds.append(w.condition(kind))
        # a server known not to publish: sleep as if there were no waker (no task, no future); while the
        # first check is under way, sleep ready to be woken (its subscription's confirmation will)
        usable = True
        if all(c is not None for c in conds):
            failed = [c for c in conds if c is not None and not c[0]]
            cond = failed[0] if failed else conds[0]
            assert cond is not None
            r.condition(Condition.WAKE_ON_PUSH, *cond)
            usable = not failed
        return sleeper if armed and (usable or sleeper.poked) else None

    async def sleep(self, r: Resource, tick: Awaitable[None]) -> None:
        """Wait for ``tick`` (the next poll), or less when a push lands on the queue of an armed resource.

        ``tick`` is the polling grid's shared future (``Ticker.tick``: never cancelled here, a callback is
        added to it, so a thousand sleeps cost no task each) or any awaitable (then run as a task)."""
        shared = asyncio.isfuture(tick)
        s = self.update(r)
        if s is None:
            await (asyncio.shield(tick) if shared else tick)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        s.future = fut
        if s.poked:
            s._release()
        ticking: asyncio.Future[Any] = tick if shared else asyncio.ensure_future(tick)  # type: ignore[assignment]

        def ticked(_: Any) -> None:
            if not fut.done():
                fut.set_result(None)

        ticking.add_done_callback(ticked)
        woken = False
        try:
            if fut.done():  # released at once (a poke before the sleep)
                woken = True
            else:
                await fut
                woken = not ticking.done()
        finally:
            if woken:
                s.last = loop.time()
            if not fut.done():
                fut.cancel()
            ticking.remove_done_callback(ticked)
            if not shared:
                ticking.cancel()
            if s.timer is not None:
                s.timer.cancel()
                s.timer = None
            s.future = None
            s.poked = False  # the read that follows sees every push so far

    def forget(self, r: Any) -> None:
        for w in self._where.pop(r, ()):
            w.remove(r)
        self._sleepers.pop(r, None)

    async def close(self) -> None:
        for w in self._watches.values():
            await w.close()
        self._watches.clear()
        self._where.clear()
        self._sleepers.clear()
