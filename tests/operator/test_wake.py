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
from tide_operator.redis_reader import ClientPool, Credentials, make_reader
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


class Meta:
    annotations: dict[str, str] = {}


class Body:
    metadata = Meta()


class FakeLoop:
    """The part of a Consumer the waker reads and writes (a real reader on a real client)."""

    def __init__(self, pool: ClientPool, url: str, source: dict[str, Any]) -> None:
        self.spec = parse_spec(
            {
                "redis": {"url": url},
                "source": source,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            }
        )
        client = pool.get(url, False, Credentials())
        self.reader = make_reader(client, self.spec.source, pool.batcher(client))
        self.current: int | None = 0
        self.body = Body()
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


async def _push_wakes(url: str, source: dict[str, Any], push: Any) -> tuple[float, FakeLoop, int]:
    pool = ClientPool()
    waker = Waker("use")
    loop = FakeLoop(pool, url, source)
    try:
        await settle(waker, loop, lambda: wake_on(loop.conditions.get(Condition.WAKE_ON_PUSH)))
        # the sleeps after arming that the subscription's confirmation ends early
        for _ in range(3):
            await waker.sleep(loop, asyncio.sleep(0.3))
        client = loop.reader.client if hasattr(loop.reader, "client") else loop.reader.readers[0].client
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


def test_a_push_ends_the_sleep_of_a_resource_at_zero(notifying: RedisServer) -> None:
    elapsed, loop, wakes = run(
        _push_wakes(notifying.url, {"list": {"key": "jobs"}}, lambda c: c.lpush("jobs", "m"))
    )
    ok, reason, message = loop.conditions[Condition.WAKE_ON_PUSH]
    assert (ok, reason) == (True, Reason.KEYSPACE_EVENTS), message
    assert elapsed < LONG / 2
    assert wakes == 1  # the event, not a confirmation or the tick, ended it
