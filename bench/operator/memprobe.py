"""Run the operator (``kopf run ...``, the arguments after this script's name) with tracemalloc on, and on
SIGUSR1 write what holds its memory to ``$TIDE_MEMPROBE_OUT`` (JSON): the traced bytes grouped by the
allocating line and by file (a few frames, so a line of kopf or asyncio is told apart from ours), the live
objects of each type (``gc``), and the tasks alive by the coroutine they run.

    TIDE_MEMPROBE_OUT=/tmp/mem.json python bench/operator/memprobe.py run -m tide_operator --standalone ...
    kill -USR1 <pid>   # then read /tmp/mem.json

Used by ``bench/operator/memory.py``; tracemalloc costs memory and CPU itself, so the RSS figures of the
benchmark come from runs without it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import json
import os
import signal
import sys
import threading
import tracemalloc
from typing import Any

FRAMES = int(os.environ.get("TIDE_MEMPROBE_FRAMES", "6"))


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3", "operator/", "worker-image/"):
        i = filename.find(marker)
        if i >= 0:
            return filename[i + len(marker) :]
    return filename


def _rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _process() -> dict[str, Any]:
    """Threads, sockets, and the RSS before and after handing freed heap back (``malloc_trim``): what is
    live versus what the allocator keeps from earlier peaks."""
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    before = _rss_mb()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {
        "rss_mb": round(before, 1),
        "rss_after_gc_and_malloc_trim_mb": round(_rss_mb(), 1),
        "threads": threading.active_count(),
        "sockets": sockets,
    }


def dump(path: str) -> None:
    if not tracemalloc.is_tracing():
        out = _process()
        out["types"] = dict(
            collections.Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(40)
        )
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        return
    snap = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*"))
    )
    total = sum(s.size for s in snap.statistics("filename"))
    by_line = [
        {
            "kb": round(s.size / 1024, 1),
            "count": s.count,
            "at": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
        }
        for s in snap.statistics("lineno")[:60]
    ]
    by_file = [
        {"kb": round(s.size / 1024, 1), "count": s.count, "file": _short(s.traceback[0].filename)}
        for s in snap.statistics("filename")[:40]
    ]
    # the deepest frame of ours or kopf's that led to an allocation: who asked for the memory
    owners: collections.Counter[str] = collections.Counter()
    for stat in snap.statistics("traceback"):
        who = "?"
        for frame in reversed(stat.traceback):  # outermost first
            f = _short(frame.filename)
            if f.startswith(
                ("kopf/", "tide_operator/", "tide_worker/", "redis/", "aiohttp/", "prometheus_client/")
            ):
                who = f"{f.split('/')[0]}/{f.split('/', 1)[1].split('/')[0] if '/' in f else f}"
        owners[who] += stat.size
    types: collections.Counter[str] = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    out: dict[str, Any] = {
        "traced_mb": round(total / 2**20, 1),
        "by_line": by_line,
        "by_file": by_file,
        "by_package": {k: round(v / 2**20, 2) for k, v in owners.most_common(30)},
        "types": dict(types.most_common(40)),
    }
    loop = LOOP[0]
    if loop is not None:
        tasks: collections.Counter[str] = collections.Counter()
        for t in asyncio.all_tasks(loop):
            coro = t.get_coro()
            tasks[getattr(coro, "__qualname__", repr(coro))] += 1
        out["tasks"] = dict(tasks.most_common(30))
    out["process"] = _process()
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


LOOP: list[asyncio.AbstractEventLoop | None] = [None]


def main() -> None:
    path = os.environ.get("TIDE_MEMPROBE_OUT", "memprobe.json")
    if os.environ.get("TIDE_MEMPROBE_TRACE", "1") != "0":
        tracemalloc.start(FRAMES)
    requested = threading.Event()

    def on_signal(*_: Any) -> None:
        requested.set()

    signal.signal(signal.SIGUSR1, on_signal)

    def watcher() -> None:
        while True:
            requested.wait()
            requested.clear()
            dump(path)

    threading.Thread(target=watcher, daemon=True).start()
    orig = asyncio.new_event_loop

    def remember() -> asyncio.AbstractEventLoop:
        loop = orig()
        LOOP[0] = loop
        return loop

    asyncio.new_event_loop = remember  # type: ignore[assignment]
    from kopf.cli import main as kopf_main

    sys.argv = ["kopf", *sys.argv[1:]]
    kopf_main()


if __name__ == "__main__":
    main()
