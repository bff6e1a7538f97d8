"""Helpers for worker tests: an in-process worker on its own thread, and `tide worker` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from tide_worker import handler as handler_mod
from tide_worker import logs
from tide_worker.config import WorkerConfig
from tide_worker.envelope import encode_envelope
from tide_worker.runtime import Worker

from tests import waiting

logs.setup("WARNING")


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> Any:
    return waiting.wait_until(pred, timeout, interval, what)


def push(r: redis.Redis, queue: str, bodies: list[Any], side: str = "right") -> list[bytes]:
    """Enqueue envelopes the way a producer does (LPUSH for right-side workers); return them."""
    raws = [encode_envelope(b) for b in bodies]
    for raw in raws:
        (r.lpush if side == "right" else r.rpush)(queue, raw)
    return raws


class InprocWorker:
    """A Worker running its own event loop on a thread (fast to start; signals are not installed)."""

    def __init__(self, cfg: WorkerConfig, func: Callable[..., Any] | str) -> None:
        handler = handler_mod.load(func) if isinstance(func, str) else handler_mod.adapt(func)
        self.worker = Worker(cfg, handler)
        self.loop = asyncio.new_event_loop()
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.rc = self.loop.run_until_complete(self.worker.run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    def start(self) -> InprocWorker:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.worker.request_stop)
            self.thread.join(timeout)
        if self.thread.is_alive():
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)
            for t in asyncio.all_tasks(self.loop):
                t.print_stack()
        assert not self.thread.is_alive(), "worker did not stop"
        assert self.error is None, self.error
        return self.rc


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[Callable[..., InprocWorker]]:
    started: list[InprocWorker] = []

    def start(func: Callable[..., Any] | str, **kw: Any) -> InprocWorker:
        kw.setdefault("queue", "q")
        kw.setdefault("redis_url", redis_url)
        kw.setdefault("metrics_port", -1)
        kw.setdefault("block_timeout", 0.5)
        w = InprocWorker(WorkerConfig(handler=str(func), **kw), func).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tide_worker.worker_cli", *args]


class WorkerProcess:
    """A `tide worker` subprocess; stderr (JSON logs) goes to a file for post-mortems."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, log_path: str | None = None
    ) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log_path = log_path
        self.log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(worker_cmd(*args), env=full_env, stdout=self.log, stderr=self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def logs(self) -> str:
        if not self.log_path:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture
def spawn(redis_url: str, tmp_path: Any) -> Iterator[Callable[..., WorkerProcess]]:
    procs: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, url: str | None = None) -> WorkerProcess:
        base_env = {"TIDE_REDIS_URL": url or redis_url, "TIDE_METRICS_PORT": "-1", "TIDE_LOG_LEVEL": "INFO"}
        base_env.update(env or {})
        p = WorkerProcess(list(args), base_env, str(tmp_path / f"worker-{len(procs)}.log"))
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
