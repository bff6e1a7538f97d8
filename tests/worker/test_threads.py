"""The sync handler thread executor on its own: stuck threads replaced up to the bound, ``healthy()`` False
past it, returning threads serving again or ending as surplus. Real threads, no Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from tide_worker.threads import SPARE_THREADS_MIN, DaemonPool, PoolTask, spare_threads

WAIT = 5.0


def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def pool_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("tide-handler-")]


def stuck_task(pool: DaemonPool, gate: threading.Event) -> PoolTask:
    """A task whose thread blocks until ``gate`` is set, once it has started."""
    started = threading.Event()

    def body() -> str:
        started.set()
        gate.wait()
        return "late"

    task = pool.submit(body)
    assert started.wait(WAIT), "the task never got a thread"
    return task


def test_spare_threads_is_at_least_the_minimum_and_grows_with_concurrency() -> None:
    assert spare_threads(1) == SPARE_THREADS_MIN == 4
    assert spare_threads(4) == 4
    assert spare_threads(9) == 9


def test_results_and_exceptions_come_back_through_the_future() -> None:
    pool = DaemonPool(2, 2)
    try:
        assert pool.submit(lambda: 41 + 1).fut.result(WAIT) == 42

        def interrupted() -> None:
            raise KeyboardInterrupt  # a BaseException: handed back, the thread lives on

        with pytest.raises(KeyboardInterrupt):
            pool.submit(interrupted).fut.result(WAIT)
        assert pool.submit(lambda: "still serving").fut.result(WAIT) == "still serving"
        assert pool.healthy() and pool.stuck == 0
    finally:
        pool.shutdown()


def test_stuck_threads_are_replaced_up_to_the_bound_then_the_pool_is_unhealthy() -> None:
    before = set(threading.enumerate())
    pool = DaemonPool(1, 2)
    gate = threading.Event()
    try:
        assert all(t.daemon for t in pool_threads(before))  # a stuck thread never blocks process exit
        for n in (1, 2):
            pool.abandon(stuck_task(pool, gate))
            assert pool.stuck == n and pool.healthy()
            # a replacement started: the next call runs although every earlier thread is stuck
            assert pool.submit(lambda: "ran").fut.result(WAIT) == "ran"
        until(lambda: len(pool_threads(before)) == 3, "1 serving + 2 stuck threads")
        # One more stuck than the bound: no replacement, nothing serves, not healthy.
        pool.abandon(stuck_task(pool, gate))
        assert pool.stuck == 3 and not pool.healthy()
        waiting = pool.submit(lambda: "after")
        time.sleep(0.1)
        assert not waiting.fut.done() and len(pool_threads(before)) == 3
        # The stuck handlers return: their futures complete, the queued call runs, the pool is whole again.
        gate.set()
        assert waiting.fut.result(WAIT) == "after"
        until(lambda: pool.stuck == 0, "stuck threads returned")
        assert pool.healthy()
        # Surplus threads end as they return; the pool keeps at least its size.
        until(lambda: len(pool_threads(before)) == 1, "surplus threads gone")
        assert pool.submit(lambda: "again").fut.result(WAIT) == "again"
    finally:
        gate.set()
        pool.shutdown()
    until(lambda: not pool_threads(before), "threads ended by shutdown")


def test_a_returned_stuck_thread_serves_again_when_the_pool_is_short() -> None:
    before = set(threading.enumerate())
    pool = DaemonPool(1, 0)  # no spare: an abandoned thread is not replaced
    gate = threading.Event()
    try:
        task = stuck_task(pool, gate)
        pool.abandon(task)
        assert not pool.healthy()
        queued = pool.submit(lambda: "served")
        time.sleep(0.05)
        assert not queued.fut.done()
        gate.set()
        assert task.fut.result(WAIT) == "late"  # the abandoned call's own result still lands
        assert queued.fut.result(WAIT) == "served"  # by the same thread: it was not surplus
        assert pool.healthy() and len(pool_threads(before)) == 1
    finally:
        gate.set()
        pool.shutdown()


def test_abandoning_a_finished_task_counts_nothing() -> None:
    pool = DaemonPool(1, 1)
    try:
        task = pool.submit(lambda: None)
        task.fut.result(WAIT)
        until(lambda: task.state == "done", "task state settled")
        pool.abandon(task)
        assert pool.stuck == 0 and pool.healthy()
    finally:
        pool.shutdown()
