"""The collector's schedule for an operator that holds thousands of resources' loop state.

CPython's default thresholds (700, 10, 10) run a young collection every 700 allocations and a full one
every 100 young ones (once a quarter of the long-lived objects is new): with 10,000 QueueConsumers every
full collection walks millions of live objects (1.6 s each, 20 of them in 15 s of idle polling in one
process, ``bench/operator/poll_cost.py``), the event loop stands still meanwhile, and the polls fall behind
(560 polls/s where 10,000 are due). Nearly every object the loops allocate per poll dies young by its
reference count; the collector is only needed for the rare cycle, so it runs far less often:
``GC_THRESHOLDS``. What is alive at start-up (imports, settings) is frozen out of every full collection.
"""

from __future__ import annotations

import gc

# a young collection per 50,000 container allocations (a few MB of possible cyclic garbage at most); a
# middle one per 50 of those; a full one per 100 middle ones, and then only once a quarter of the
# long-lived objects is new (CPython's own rule)
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Freeze what is alive now (never garbage: modules, classes, settings) and space the collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
