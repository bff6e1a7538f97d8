"""The latency benchmark's one side effect: a handler appends ``<enqueued> <started>\\n`` (Unix seconds)
to the file named by BENCH_LATENCY_FILE as the first thing it does. One ``os.write`` on an ``O_APPEND``
descriptor per message, opened lazily per process (Celery's prefork children each open their own), so
lines from several processes never interleave. The throughput benchmark never calls this.
"""

from __future__ import annotations

import os
import time

_fd: dict[int, int] = {}


def record(enqueued: float) -> None:
    started = time.time()
    pid = os.getpid()
    fd = _fd.get(pid)
    if fd is None:
        fd = _fd[pid] = os.open(os.environ["BENCH_LATENCY_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{enqueued!r} {started!r}\n".encode())
