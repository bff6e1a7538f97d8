"""The thread executor of sync handlers: daemon threads that replace the ones a stuck handler holds, within
a bound past which the worker reports itself not live.

The runtime's watchdog decides when a thread is stuck (past ``--handler-timeout``) and calls ``abandon``;
this module only keeps the count of threads and stuck threads, under one lock.
"""

from __future__ import annotations

import concurrent.futures
import queue as queue_mod
import threading
from collections.abc import Callable
from typing import Any

# Stuck sync handler threads replaced before the worker reports itself not live: max(this, concurrency).
SPARE_THREADS_MIN = 4


def spare_threads(concurrency: int) -> int:
    """How many stuck threads a pool of ``concurrency`` threads replaces before it is unhealthy."""
    return max(SPARE_THREADS_MIN, concurrency)


class PoolTask:
    """One call handed to the pool; ``state`` (under the pool's lock) says whether it was abandoned."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.state = "queued"  # queued/running -> abandoned -> done, or running -> done


class DaemonPool:
    """Daemon threads (an abandoned, stuck handler thread never blocks process exit) that replace the
    threads they lose, within a bound.

    ``size`` threads serve. A thread stuck in a handler past its timeout cannot be killed: when the
    watchdog abandons it, another thread starts in its place, while at most ``spare`` are stuck at
    once. Past that the pool runs short of threads and ``healthy()`` turns False (the worker then fails
    its liveness probe, to be restarted). A stuck thread that returns at last serves again, or ends if
    the pool already has its threads.
    """

    def __init__(self, size: int, spare: int) -> None:
        self.size = size
        self.spare = spare
        self.stuck = 0  # abandoned threads still running their handler
        self._q: queue_mod.SimpleQueue[PoolTask | None] = queue_mod.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._serial = 0
        with self._lock:
            for _ in range(size):
                self._start()

    def _start(self) -> None:  # with the lock held
        self._threads += 1
        self._serial += 1
        threading.Thread(target=self._work, name=f"tide-handler-{self._serial}", daemon=True).start()

    def _work(self) -> None:
        while True:
            task = self._q.get()
            if task is None:
                return
            if not task.fut.set_running_or_notify_cancel():
                continue
            with self._lock:
                if task.state == "queued":
                    task.state = "running"
            result: Any = None
            error: BaseException | None = None
            try:
                result = task.fn()
            except BaseException as exc:
                error = exc
            surplus = False
            with self._lock:
                if task.state == "abandoned":
                    self.stuck -= 1
                    surplus = self._threads > self.size + min(self.stuck, self.spare)
                    if surplus:
                        self._threads -= 1
                task.state = "done"
            if error is None:
                task.fut.set_result(result)
            else:
                task.fut.set_exception(error)
            if surplus:
                return

    def submit(self, fn: Callable[[], Any]) -> PoolTask:
        task = PoolTask(fn)
        self._q.put(task)
        return task

    def abandon(self, task: PoolTask) -> None:
        """The watchdog gave up on ``task``: its thread counts as stuck; replace it within the bound."""
        with self._lock:
            if task.state == "done":
                return  # it returned meanwhile: nothing is stuck
            task.state = "abandoned"
            self.stuck += 1
            if self.stuck <= self.spare:
                self._start()

    def healthy(self) -> bool:
        """False once more threads are stuck than can be replaced: fewer than ``size`` serve."""
        return self.stuck <= self.spare

    def shutdown(self) -> None:
        with self._lock:
            n = self._threads
        for _ in range(n):
            self._q.put(None)
