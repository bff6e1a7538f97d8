"""The shared polling grid: daemons of one interval wake together, so their reads of one server go out as
one pipeline (real Redis); a cancelled daemon leaves the others' tick alone."""

from __future__ import annotations

import asyncio
import collections
import time

from tide_operator.redis_reader import ClientPool, Credentials, Ticker, make_reader
from tide_operator.spec import Source


def test_daemons_on_one_tick_share_one_round_trip(r, redis_url):
    for i in range(200):
        r.lpush(f"t{i}", i)

    async def go():
        pool = ClientPool()
        client = pool.get(redis_url, False, Credentials())
        batcher = pool.batcher(client)
        ticker = Ticker()
        readers = [make_reader(client, Source("list", f"t{i}"), batcher) for i in range(200)]
        trips = []

        async def daemon(reader, polls: int):
            for _ in range(polls):
                await ticker.wait(0.2, 0.2)
                await reader.read(time.time())

        # the daemons start at scattered moments, as kopf spawns them, and still meet on the grid
        async def staggered(i: int):
            await asyncio.sleep(i * 0.0005)
            await daemon(readers[i], 3)

        await asyncio.gather(*(staggered(i) for i in range(200)))
        trips.append(batcher.round_trips)
        await pool.close()
        return trips[0]

    # 3 ticks x 200 reads; a tick whose daemons a busy machine spread over two iterations costs one more
    assert 3 <= run(go()) <= 6


def test_ticker_wakes_on_grid_and_skips_missed_ticks():
    async def go():
        loop = asyncio.get_running_loop()
        ticker = Ticker()
        await ticker.wait(0.1, 0.1)
        woke = loop.time()
        await asyncio.sleep(0.25)  # a slow poll: the next wait lands on the next grid point, not 0.1 later
        await ticker.wait(0.1, 0.1)
        return woke, loop.time()

    a, b = run(go())
    assert abs(a / 0.1 - round(a / 0.1)) < 0.2  # within 20 ms of a multiple of 100 ms (busy machine)
    assert 0.25 <= b - a <= 0.45


def test_cancelled_waiter_does_not_cancel_the_tick():
    async def go():
        ticker = Ticker()
        a = asyncio.create_task(ticker.wait(0.3, 0.3))
        b = asyncio.create_task(ticker.wait(0.3, 0.3))
        await asyncio.sleep(0.01)
        a.cancel()
        await asyncio.wait_for(b, 2)
        return a.cancelled(), b.done() and not b.cancelled()

    assert run(go()) == (True, True)


def run(coro):
    return asyncio.run(coro)


def test_phases_split_one_interval_into_groups():
    async def go():
        loop = asyncio.get_running_loop()
        ticker = Ticker()
        phases = [Ticker.phase(f"ns/q{i:05d}") for i in range(10_000)]
        woke: dict[float, float] = {}

        async def waiter(phase: float) -> None:
            await ticker.wait(0.5, 0.5, phase)
            woke[phase] = loop.time()

        await asyncio.gather(*(waiter(p) for p in (0.0, 0.5)))
        return phases, woke

    phases, woke = run(go())
    assert sorted(set(phases)) == [i / Ticker.SLOTS for i in range(Ticker.SLOTS)]
    counts = collections.Counter(phases)
    each = len(phases) / Ticker.SLOTS
    assert all(0.6 * each <= counts[p] <= 1.4 * each for p in counts)  # groups of about the same size
    assert len(set(phases[::10])) >= 0.8 * Ticker.SLOTS  # every tenth name is not one group
    assert Ticker.phase("ns/q0001") == Ticker.phase("ns/q0001")  # stable
    # phase 0 and phase 0.5 of a 0.5 s interval wake 0.25 s apart (either may come first)
    assert 0.15 <= abs(woke[0.5] - woke[0.0]) <= 0.35
