"""The collector's schedule for an operator that holds thousands of resources' loop state, and the size
of asyncio's TLS read buffers.

CPython's default thresholds (700, 10, 10) run a young collection every 700 allocations and a full one
every 100 young ones (once a quarter of the long-lived objects is new): with 10,000 QueueConsumers every
full collection walks millions of live objects (1.6 s each, 20 of them in 15 s of idle polling in one
process, ``bench/operator/poll_cost.py``), the event loop stands still meanwhile, and the polls fall behind
(560 polls/s where 10,000 are due). Nearly every object a poll allocates dies young by its reference count;
what lives long is the loops' state, made when the resources are listed.

So what survives a collection is frozen as soon as the collection ends (``gc.freeze`` from a
``gc.callbacks`` hook: kept out of every later collection), and the collections are spaced
(``GC_THRESHOLDS``). Every collection then walks only what was made since the one before and is still
alive, never the loops' long-lived state (a young collection at 10,000 idle resources: 68-96 ms). No
collection is forced on a schedule: a full one every minute stood the event loop still for 210-450 ms at
10,000 resources, and a keyspace wake-up or a burst's read that landed in it waited as long. Garbage cycles are
collected by CPython's own young collections, which their allocations trigger. Frozen objects are still
freed by their reference counts (a deleted resource's state, a replaced reading); only a cycle among
frozen objects that becomes garbage later stays (none is known in the loop's state).

asyncio gives every TLS connection a 256 KB read buffer, allocated and zeroed when it opens: the API
server connections of the shared client (up to 64), kopf's, and every TLS connection to Redis. At 1,000
resources that was 17 MB of the operator's 168 (tracemalloc, ``bench/operator/memory.py --trace``).
``TLS_READ_BUFFER`` holds four TLS records, the most one read returns at a time; a large listing takes
more, smaller reads.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Any

# a young collection per 100,000 container allocations net of deallocations (10,000 idle resources add
# 10-175 a second: one every 10 minutes or less often; at most that much cyclic garbage waits), a middle
# one per 20 of those, a full one per 10 middle ones (CPython's own rule; with survivors frozen, all walk
# the same few objects)
GC_THRESHOLDS = (100_000, 20, 10)
DEFAULT_THRESHOLDS = (700, 10, 10)
TLS_READ_BUFFER = 64 * 1024


def shrink_tls_buffers() -> None:
    """Smaller read buffers for the TLS connections opened from now on (a class attribute of asyncio's
    SSL protocol since Python 3.11; left alone where it is not one)."""
    if isinstance(getattr(asyncio.sslproto.SSLProtocol, "max_size", None), int):
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def tune_gc() -> None:
    """Freeze what is alive now (modules, classes, settings), from now on what survives each collection,
    and space the collections."""
    gc.collect()
    gc.freeze()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)
    gc.set_threshold(*GC_THRESHOLDS)


def untune_gc() -> None:
    """Undo ``tune_gc`` (for tests in one process; an operator that stops just exits): CPython's
    thresholds, no freezing, the frozen objects back in the oldest generation."""
    with contextlib.suppress(ValueError):
        gc.callbacks.remove(_freeze_survivors)
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_THRESHOLDS)


@dataclass
class Pauses:
    """What the collections since ``tune_gc`` cost: the event loop stands still while one runs. Plain
    fields, updated from the collector's callback (no lock: a collection can start inside any code,
    a metrics lock's holder included); ``tide_operator.metrics`` reads them when scraped."""

    count: int = 0
    seconds: float = 0.0
    longest: float = 0.0
    started: float = 0.0


PAUSES = Pauses()


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        PAUSES.started = time.perf_counter()
        return
    # the collection is over: what it left tracked was just found reachable, or was made since it began
    gc.freeze()
    took = time.perf_counter() - PAUSES.started
    PAUSES.count += 1
    PAUSES.seconds += took
    PAUSES.longest = max(PAUSES.longest, took)
