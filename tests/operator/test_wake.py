"""Waking a resource at zero on a push (tide_operator/wake.py) against real redis-server processes:
with keyspace notifications on, off, set by the operator (``configure``), and refused (CONFIG renamed).

The resource here is the part of a loop the waker uses (spec, reader, current, condition); the whole
operator on the local control plane is in test_wake_integration.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tide_local.redisproc import RedisServer
from tide_operator import wake
from tide_operator.conditions import Condition, Reason
from tide_operator.redis_reader import ClientPool, Credentials, Ticker, make_reader
from tide_operator.spec import parse_spec
from tide_operator.wake import Waker, channel_kind, classes, configured, missing_for, mode_from_env

LONG = 30.0  # the "polling interval" of these resources: a wake that came from it would take this long


def test_flags_parsing() -> None:
    assert classes("A") >= set("lt")
    assert (
        channel_kind("Kl") == "keyspace" and channel_kind("El") == "keyevent" and channel_kind("lt") is None
    )
    assert channel_kind("KEA") == "keyspace"
    assert missing_for("", "list") == "Kl" and missing_for("Kl", "stream") == "t"
    assert missing_for("KA", "stream") == "" and missing_for("Et", "stream") == ""
    assert configured("") == "Klt" and configured("Ex") == "Exlt" and configured("KA") == "KA"
    assert mode_from_env({}) == "use"
    assert mode_from_env({wake.MODE_ENV: " Configure "}) == "configure"
    with pytest.raises(
        ValueError, match="TIDE_OPERATOR_KEYSPACE_EVENTS='on' is not one of off, use, configure"
    ):
        mode_from_env({wake.MODE_ENV: "on"})


class FakeLoop:
    """The part of a Consumer the waker reads and writes (a real reader on a real client)."""

    def __init__(
        self,
        pool: ClientPool,
        url: str,
        source: dict[str, Any],
        creds: Credentials | None = None,
        cluster: bool = False,
    ) -> None:
        self.spec = parse_spec(
            {
                "redis": {"url": "redis://spec-url-unused:6379/0"},  # the client below is what counts
                "source": source,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            }
        )
        client = self.client = pool.get(url, cluster, creds or Credentials())
        self.reader = make_reader(client, self.spec.source, pool.batcher(client))
        self.current: int | None = 0
        self.paused = False
        self.conditions: dict[str, tuple[bool, str, str]] = {}

    @property
    def interval(self) -> float:
        return LONG

    def condition(self, ctype: str, ok: bool, reason: str, message: str) -> bool:
        old = self.conditions.get(ctype)
        self.conditions[ctype] = (ok, reason, message)
        return old is None or old[0] != ok


async def settle(waker: Waker, loop: FakeLoop, until: Any, timeout: float = 10.0) -> None:
    """Sleep the resource's short sleeps until ``until()`` (the watch's state has been read by then)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, loop.conditions
        await waker.sleep(loop, asyncio.sleep(0.05))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def notifying() -> Any:
    with RedisServer(extra_args=["--notify-keyspace-events", "Kl"]) as server:
        yield server


def wake_on(cond: tuple[bool, str, str] | None) -> bool:
    return cond is not None and cond[0]


async def _push_wakes(
    url: str, source: dict[str, Any], push: Any, mode: str = "use"
) -> tuple[float, FakeLoop, int]:
    pool = ClientPool()
    waker = Waker(mode)
    loop = FakeLoop(pool, url, source)
    try:
        await settle(waker, loop, lambda: wake_on(loop.conditions.get(Condition.WAKE_ON_PUSH)))
        await _past_confirmations(waker, loop)
        client = loop.client
        started = time.monotonic()
        sleeping = asyncio.create_task(waker.sleep(loop, asyncio.sleep(LONG)))
        await asyncio.sleep(0.2)
        assert not sleeping.done(), "the sleep ended with nothing pushed"
        await push(client)
        await asyncio.wait_for(sleeping, LONG / 2)  # a push ends it; the tick would take 30 s
        return time.monotonic() - started, loop, sum(w.wakes for w in waker._watches.values())
    finally:
        await waker.close()
        await pool.close()


def test_the_polling_grid_shared_tick_is_woken_early_and_never_cancelled(notifying: RedisServer) -> None:
    """The loop's own sleep: the grid's shared future (Ticker.tick), which other resources wait for too."""

    async def main() -> None:
        pool, waker, loop = await _armed(notifying.url, {"list": {"key": "q"}})
        ticker = Ticker()
        try:
            await settle(waker, loop, lambda: loop.conditions[Condition.WAKE_ON_PUSH][0])
            await _past_confirmations(waker, loop)
            tick = ticker.tick(0.0, LONG)
            other = asyncio.create_task(ticker.wait(0.0, LONG))  # another resource on the same grid point
            sleeping = asyncio.create_task(waker.sleep(loop, tick))
            await asyncio.sleep(0.2)
            assert not sleeping.done()
            await loop.client.lpush("q", "m")
            await asyncio.wait_for(sleeping, LONG / 2)
            assert not tick.done() and not tick.cancelled() and not other.done()
            other.cancel()
            # the plain path (a busy resource) on a shared tick: shielded too
            loop.current = 1
            quiet = asyncio.create_task(waker.sleep(loop, ticker.tick(0.0, 0.5)))
            await asyncio.sleep(0.1)
            quiet.cancel()
            await asyncio.sleep(0.6)
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_a_push_ends_the_sleep_of_a_resource_at_zero(notifying: RedisServer) -> None:
    elapsed, loop, wakes = run(
        _push_wakes(notifying.url, {"list": {"key": "jobs"}}, lambda c: c.lpush("jobs", "m"))
    )
    ok, reason, message = loop.conditions[Condition.WAKE_ON_PUSH]
    assert (ok, reason) == (True, Reason.KEYSPACE_EVENTS), message
    assert elapsed < LONG / 2
    assert wakes == 1  # the event, not a confirmation or the tick, ended it


async def _armed(
    url: str, source: dict[str, Any], mode: str = "use", creds: Credentials | None = None
) -> tuple[ClientPool, Waker, FakeLoop]:
    pool = ClientPool()
    waker = Waker(mode)
    loop = FakeLoop(pool, url, source, creds)
    await settle(waker, loop, lambda: Condition.WAKE_ON_PUSH in loop.conditions)
    return pool, waker, loop


async def _past_confirmations(waker: Waker, loop: FakeLoop) -> None:
    """The sleeps after arming that the subscription's confirmation ends early, done with."""
    for _ in range(3):
        await waker.sleep(loop, asyncio.sleep(0.3))


async def _sleep_through(waker: Waker, loop: FakeLoop, seconds: float, push: Any) -> tuple[float, int]:
    """One sleep of ``seconds`` with ``push`` done 0.2 s in: how long it lasted, and the events that woke."""
    started = time.monotonic()
    sleeping = asyncio.create_task(waker.sleep(loop, asyncio.sleep(seconds)))
    await asyncio.sleep(0.2)
    await push(loop.client)
    await sleeping
    return time.monotonic() - started, sum(w.wakes for w in waker._watches.values())


def test_notifications_off_says_so_and_the_sleep_lasts_until_the_poll(redis_url: str) -> None:
    async def main() -> None:
        pool, waker, loop = await _armed(redis_url, {"list": {"key": "q"}})
        try:
            ok, reason, message = loop.conditions[Condition.WAKE_ON_PUSH]
            assert (ok, reason) == (False, Reason.NOTIFICATIONS_OFF), message
            assert (
                "notify-keyspace-events is ''" in message
                and "TIDE_OPERATOR_KEYSPACE_EVENTS=configure" in message
            )
            lasted, wakes = await _sleep_through(waker, loop, 1.5, lambda c: c.lpush("q", "m"))
            assert lasted >= 1.4 and wakes == 0
            # nothing subscribed on the server
            assert await loop.client.pubsub_numsub("__keyspace@0__:q") == [(b"__keyspace@0__:q", 0)]
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_configure_sets_the_flags_and_keeps_what_was_there() -> None:
    with RedisServer(extra_args=["--notify-keyspace-events", "Ex"]) as server:
        _, loop, wakes = run(
            _push_wakes(server.url, {"list": {"key": "q"}}, lambda c: c.lpush("q", "m"), "configure")
        )
        assert wakes == 1 and loop.conditions[Condition.WAKE_ON_PUSH][:2] == (True, Reason.KEYSPACE_EVENTS)
        with server.client() as c:
            assert c.config_get("notify-keyspace-events")["notify-keyspace-events"] in (
                "xElt",
                "Exlt",
                "lxtE",
            )


def test_use_never_changes_the_config(redis_url: str, r: Any) -> None:
    run(_armed(redis_url, {"list": {"key": "q"}}))
    assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


@pytest.mark.parametrize("how", ["rename-command", "acl"])
def test_a_server_refusing_config_gives_the_condition(how: str) -> None:
    if how == "rename-command":
        args, creds = ["--rename-command", "CONFIG", '""', "--notify-keyspace-events", "Kl"], None
    else:
        args = [
            "--notify-keyspace-events",
            "Kl",
            "--user",
            "tide",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-config",
        ]
        creds = Credentials(username="tide", password="pw")
    with RedisServer(extra_args=args) as server:

        async def main() -> None:
            pool, waker, loop = await _armed(server.url, {"list": {"key": "q"}}, "configure", creds)
            try:
                ok, reason, message = loop.conditions[Condition.WAKE_ON_PUSH]
                assert (ok, reason) == (False, Reason.CONFIG_REFUSED), message
                assert "CONFIG GET notify-keyspace-events refused" in message
                lasted, wakes = await _sleep_through(waker, loop, 1.0, lambda c: c.lpush("q", "m"))
                assert lasted >= 0.9 and wakes == 0
            finally:
                await waker.close()
                await pool.close()

        run(main())


def test_a_stream_and_keyevent_only_servers_wake_too() -> None:
    with RedisServer(extra_args=["--notify-keyspace-events", "Kt"]) as server:
        _, loop, wakes = run(
            _push_wakes(server.url, {"stream": {"key": "ev", "group": "g"}}, lambda c: c.xadd("ev", {"a": 1}))
        )
        assert wakes == 1
    with RedisServer(extra_args=["--notify-keyspace-events", "El"]) as server:
        _, loop, wakes = run(_push_wakes(server.url, {"list": {"key": "q"}}, lambda c: c.rpush("q", "m")))
        assert wakes == 1 and "keyevent" in loop.conditions[Condition.WAKE_ON_PUSH][2]


def test_a_busy_resource_is_not_subscribed_and_pushes_are_coalesced(notifying: RedisServer) -> None:
    async def main() -> None:
        pool, waker, loop = await _armed(notifying.url, {"list": {"key": "q"}})
        try:
            await _past_confirmations(waker, loop)
            channel = b"__keyspace@0__:q"
            assert await loop.client.pubsub_numsub(channel) == [(channel, 1)]

            async def flood(c: Any) -> None:
                for _ in range(200):
                    await c.lpush("q", "m")
                    await asyncio.sleep(0.005)

            # many pushes over about 1.2 s: the reads they cause are at most one per WAKE_MIN_GAP
            pushing = asyncio.create_task(flood(loop.client))
            reads, started = 0, time.monotonic()
            while not pushing.done():
                await waker.sleep(loop, asyncio.sleep(LONG))
                reads += 1
            window = time.monotonic() - started
            assert 2 <= reads <= window / wake.WAKE_MIN_GAP + 2, (reads, window)
            loop.current = 1  # scaled up: unsubscribed, pushes no longer wake it
            await waker.sleep(loop, asyncio.sleep(0.3))
            await asyncio.sleep(0.2)
            assert await loop.client.pubsub_numsub(channel) == [(channel, 0)]
            lasted, _ = await _sleep_through(waker, loop, 1.0, lambda c: c.lpush("q", "m"))
            assert lasted >= 0.9
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_a_lost_connection_is_said_and_reconnected(notifying: RedisServer) -> None:
    async def main() -> None:
        pool, waker, loop = await _armed(notifying.url, {"list": {"key": "q"}})
        try:
            await settle(waker, loop, lambda: loop.conditions[Condition.WAKE_ON_PUSH][0])
            notifying.stop()
            await settle(
                waker, loop, lambda: loop.conditions[Condition.WAKE_ON_PUSH][1] == Reason.RECONNECTING
            )
            notifying.start()
            await settle(waker, loop, lambda: loop.conditions[Condition.WAKE_ON_PUSH][0], timeout=30)
            await _past_confirmations(waker, loop)
            before = sum(w.wakes for w in waker._watches.values())
            lasted, wakes = await _sleep_through(waker, loop, LONG, lambda c: c.lpush("q", "m"))
            assert lasted < LONG / 2 and wakes == before + 1
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_on_cluster_each_master_node_wakes_for_the_keys_it_holds(redis_cluster: Any) -> None:
    """Keyspace notifications are node-local on Cluster: one watch per master, each key on its own node's."""
    for node in redis_cluster.nodes:
        with node.client() as c:
            c.config_set("notify-keyspace-events", "Kl")

    async def main() -> None:
        pool = ClientPool()
        waker = Waker("use")
        client = pool.get(redis_cluster.url, True, Credentials())
        await client.initialize()
        # two lists whose slots are on different masters
        keys: dict[str, str] = {}
        for i in range(100):
            keys.setdefault(client.get_node_from_key(f"q{i}").name, f"q{i}")
        a, b = list(keys.values())[:2]
        loop = FakeLoop(pool, redis_cluster.url, {"lists": [{"key": a}, {"key": b}]}, cluster=True)
        try:
            await settle(waker, loop, lambda: wake_on(loop.conditions.get(Condition.WAKE_ON_PUSH)))
            assert len(waker._watches) == 2 and "Cluster node" in loop.conditions[Condition.WAKE_ON_PUSH][2]
            await _past_confirmations(waker, loop)
            for key in (a, b):
                before = sum(w.wakes for w in waker._watches.values())
                lasted, wakes = await _sleep_through(waker, loop, LONG, lambda c, k=key: c.lpush(k, "m"))
                assert lasted < LONG / 2 and wakes == before + 1, key
                await asyncio.sleep(wake.WAKE_MIN_GAP)
        finally:
            await waker.close()
            await pool.close()

    try:
        run(main())
    finally:
        for node in redis_cluster.nodes:
            with node.client() as c:
                c.config_set("notify-keyspace-events", "")


def test_a_new_subscription_reads_once_more_then_sleeps_until_a_push(notifying: RedisServer) -> None:
    """A resource just at zero: its first sleep ends when the subscription is live (a push between its last
    read and the SUBSCRIBE is not left to the poll); the next lasts until the tick when nothing is pushed."""

    async def main() -> None:
        pool = ClientPool()
        waker = Waker("use")
        loop = FakeLoop(pool, notifying.url, {"list": {"key": "q"}})
        try:
            started = time.monotonic()
            await asyncio.wait_for(waker.sleep(loop, asyncio.sleep(LONG)), LONG / 2)
            assert time.monotonic() - started < LONG / 2
            assert sum(w.wakes for w in waker._watches.values()) == 0  # the confirmation, not an event
            quiet = asyncio.create_task(waker.sleep(loop, asyncio.sleep(1.0)))
            await asyncio.sleep(0.5)
            assert not quiet.done()
            await quiet
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_the_config_is_read_again_turned_off_then_on(notifying: RedisServer, monkeypatch: Any) -> None:
    """Notifications turned off on the server: the recheck says so (the subscriptions go); turned on again:
    woken again, without an operator restart."""
    monkeypatch.setattr(wake, "RECHECK_SECONDS", 0.5)

    async def main() -> None:
        pool, waker, loop = await _armed(notifying.url, {"list": {"key": "q"}})
        cond = lambda: loop.conditions[Condition.WAKE_ON_PUSH]  # noqa: E731
        try:
            await settle(waker, loop, lambda: cond()[0])
            await loop.client.config_set("notify-keyspace-events", "")
            await settle(waker, loop, lambda: cond()[1] == Reason.NOTIFICATIONS_OFF)
            await loop.client.config_set("notify-keyspace-events", "Kl")
            await settle(waker, loop, lambda: cond()[0])
            await _past_confirmations(waker, loop)
            before = sum(w.wakes for w in waker._watches.values())
            lasted, wakes = await _sleep_through(waker, loop, LONG, lambda c: c.lpush("q", "m"))
            assert lasted < LONG / 2 and wakes == before + 1
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_a_changed_key_moves_the_subscription_and_a_removed_resource_leaves(notifying: RedisServer) -> None:
    async def main() -> None:
        pool, waker, loop = await _armed(notifying.url, {"list": {"key": "q"}})
        old, new = b"__keyspace@0__:q", b"__keyspace@0__:q2"
        try:
            await settle(waker, loop, lambda: loop.conditions[Condition.WAKE_ON_PUSH][0])
            for _ in range(2):
                await waker.sleep(loop, asyncio.sleep(0.2))
            assert await loop.client.pubsub_numsub(old, new) == [(old, 1), (new, 0)]
            loop.spec = FakeLoop(pool, notifying.url, {"list": {"key": "q2"}}).spec
            for _ in range(3):
                await waker.sleep(loop, asyncio.sleep(0.2))
            assert await loop.client.pubsub_numsub(old, new) == [(old, 0), (new, 1)]
            waker.forget(loop)  # the resource is deleted
            await asyncio.sleep(0.3)
            assert await loop.client.pubsub_numsub(old, new) == [(old, 0), (new, 0)]
        finally:
            await waker.close()
            await pool.close()

    run(main())


def test_through_sentinel_the_master_wakes_it(redis_sentinel: Any) -> None:
    """A client through Sentinel (the operator's spec.redis.sentinel): the pub/sub connection goes to the
    master the sentinels name, and the condition names the master by its name, not an address."""
    from tests.conftest import SENTINEL_PASSWORD

    with redis_sentinel.master().client() as c:
        c.config_set("notify-keyspace-events", "Kl")
    try:
        creds = Credentials(sentinel_password=SENTINEL_PASSWORD)

        async def main() -> tuple[FakeLoop, int]:
            pool = ClientPool()
            waker = Waker("use")
            loop = FakeLoop(pool, redis_sentinel.url(), {"list": {"key": "q"}}, creds)
            try:
                await settle(waker, loop, lambda: wake_on(loop.conditions.get(Condition.WAKE_ON_PUSH)))
                await _past_confirmations(waker, loop)
                lasted, wakes = await _sleep_through(waker, loop, LONG, lambda c: c.lpush("q", "m"))
                assert lasted < LONG / 2
                return loop, wakes
            finally:
                await waker.close()
                await pool.close()

        loop, wakes = run(main())
        assert wakes == 1
        assert loop.conditions[Condition.WAKE_ON_PUSH][2].startswith("Sentinel master mymaster/0:")
    finally:
        with redis_sentinel.master().client() as c:
            c.config_set("notify-keyspace-events", "")


def test_the_waker_closes_promptly_whenever_its_close_lands(notifying: RedisServer) -> None:
    """The operator's shutdown: the loops end (their channels are being unsubscribed), then the waker
    closes. A cancellation that lands inside a redis-py pub/sub command can be swallowed there; the close
    then waited forever (found by ``bench/operator/poll_cost.py --wake``). Each round closes after a
    different number of event-loop turns, so one lands in the middle of the UNSUBSCRIBE."""

    async def once(turns: int) -> float:
        pool = ClientPool()
        waker = Waker("use")
        loops = [FakeLoop(pool, notifying.url, {"list": {"key": f"q{i}"}}) for i in range(50)]
        try:
            await asyncio.gather(
                *(
                    settle(waker, lp, lambda lp=lp: wake_on(lp.conditions.get(Condition.WAKE_ON_PUSH)))
                    for lp in loops
                )
            )
            deadline = time.monotonic() + 10
            while len(await loops[0].client.pubsub_channels()) < len(loops):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            for lp in loops:
                waker.forget(lp)
            for _ in range(turns):
                await asyncio.sleep(0)
            started = time.monotonic()
            await asyncio.wait_for(waker.close(), 10)
            return time.monotonic() - started
        finally:
            await pool.close()

    async def main() -> None:
        took = [await once(turns) for turns in range(8)]
        assert max(took) < 3, took  # the reader's get_message returns within 1 s of the close

    run(main())
