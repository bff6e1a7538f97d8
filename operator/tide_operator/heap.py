"""The collector's schedule for an operator that holds thousands of resources' loop state, and the size
of asyncio's TLS read buffers.

CPython's default thresholds (700, 10, 10) run a young collection every 700 allocations and a full one
every 100 young ones (once a quarter of the long-lived objects is new): with 10,000 QueueConsumers every
full collection walks millions of live objects (1.6 s each, 20 of them in 15 s of idle polling in one
process, ``bench/operator/poll_cost.py``), the event loop stands still meanwhile, and the polls fall behind
(560 polls/s where 10,000 are due). Nearly every object a poll allocates dies young by its reference count;
what lives long is the loops' state, made when the resources are listed.

So: the collections are spaced (``GC_THRESHOLDS``), and every ``FREEZE_SECONDS`` a full collection runs and
what survives it is frozen (``gc.freeze``: kept out of every later collection). A full collection then
walks only what was made since the last freeze, a fraction of a second even at 10,000 resources, and
garbage cycles are still collected within ``FREEZE_SECONDS``. Frozen objects are still freed by their
reference counts (a deleted resource's state, a replaced reading); only a cycle among frozen objects that
becomes garbage later stays (none is known in the loop's state).

asyncio gives every TLS connection a 256 KB read buffer, allocated and zeroed when it opens: the API
server connections of the shared client (up to 64), kopf's, and every TLS connection to Redis. At 1,000
resources that was 17 MB of the operator's 168 (tracemalloc, ``bench/operator/memory.py --trace``).
``TLS_READ_BUFFER`` holds four TLS records, the most one read returns at a time; a large listing takes
more, smaller reads.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc

# a young collection per 50,000 container allocations (a few MB of possible cyclic garbage at most), a
# middle one per 20 of those, a full one per 10 middle ones once a quarter of the unfrozen long-lived
# objects is new (CPython's own rule)
GC_THRESHOLDS = (50_000, 20, 10)
FREEZE_SECONDS = 60.0
TLS_READ_BUFFER = 64 * 1024


def shrink_tls_buffers() -> None:
    """Smaller read buffers for the TLS connections opened from now on (a class attribute of asyncio's
    SSL protocol since Python 3.11; left alone where it is not one)."""
    if isinstance(getattr(asyncio.sslproto.SSLProtocol, "max_size", None), int):
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def tune_gc() -> None:
    """Freeze what is alive now (modules, classes, settings) and space the collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def collect_and_freeze(every: float = FREEZE_SECONDS) -> None:
    """Forever: a full collection, then freeze its survivors (the loops' long-lived state)."""
    while True:
        await asyncio.sleep(every)
        gc.collect()
        gc.freeze()
