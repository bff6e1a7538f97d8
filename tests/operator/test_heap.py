"""The collector's schedule (``tide_operator.heap``): what survives a collection is frozen at once, garbage
cycles are still collected, and the operator's cleanup leaves the collector as CPython's defaults."""

from __future__ import annotations

import gc
import weakref

from tide_operator import heap


class Node:
    other: Node | None = None


def test_what_survives_a_collection_is_frozen_and_garbage_cycles_still_go() -> None:
    heap.tune_gc()
    try:
        assert gc.get_threshold() == heap.GC_THRESHOLDS
        kept = [[i] for i in range(1000)]  # long-lived state, as a listing makes
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, garbage once the names go
        gone = weakref.ref(a)
        del a, b
        frozen = gc.get_freeze_count()
        gc.collect(0)  # a young collection, as the allocation count triggers one
        assert gone() is None
        assert gc.get_freeze_count() >= frozen + len(kept)
        # nothing left for a later collection to walk again: it walks only what is made after this one
        assert gc.get_objects(generation=1) == [] and gc.get_objects(generation=2) == []
    finally:
        heap.untune_gc()
    assert gc.get_threshold() == heap.DEFAULT_THRESHOLDS
    assert gc.get_freeze_count() == 0
    assert heap._freeze_survivors not in gc.callbacks


def test_each_collection_is_counted_with_how_long_it_stood_the_loop_still() -> None:
    from prometheus_client import REGISTRY
    from tide_operator import metrics  # noqa: F401  (registers the collector)

    heap.tune_gc()
    try:
        gc.collect(0)  # the young count from zero: the allocations below trigger no collection
        before, seconds = heap.PAUSES.count, heap.PAUSES.seconds
        kept = [[i] for i in range(10_000)]
        gc.collect(0)
        assert heap.PAUSES.count == before + 1
        assert heap.PAUSES.seconds > seconds and heap.PAUSES.longest > 0
        assert REGISTRY.get_sample_value("tide_gc_pauses_total") == heap.PAUSES.count
        assert REGISTRY.get_sample_value("tide_gc_pause_seconds_total") == heap.PAUSES.seconds
        assert REGISTRY.get_sample_value("tide_gc_pause_longest_seconds") == heap.PAUSES.longest
        del kept
    finally:
        heap.untune_gc()
    gc.collect(0)  # untuned: not counted
    assert heap.PAUSES.count == before + 1
