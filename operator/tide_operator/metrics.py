"""Prometheus metrics of the operator (served on ``TIDE_OPERATOR_METRICS_PORT``, default 9090).

The per-resource gauges are read from each loop's last poll when scraped (``RESOURCES``): a labelled
child per resource and series (nine per resource) held 7.6 MB at 1,000 resources, 76 MB at 10,000, to
repeat values the loops keep anyway; a deleted resource's series go with its loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tide_worker.backlog import Backlog

from tide_operator.heap import PAUSES

LABELS = ("namespace", "name")
PARTS = ("ready", "inflight", "retries_due", "stream_lag", "stream_pending", "total")


class Polled(Protocol):
    """What a resource's loop shows: its last decision's (desired, current) and its last backlog."""

    ns: str
    name: str
    last_gauges: tuple[int, int] | None
    last_backlog_metric: Backlog | None


class ResourceGauges(Collector):
    """``tide_backlog``, ``tide_oldest_message_age_seconds``, ``tide_desired_replicas`` and
    ``tide_current_replicas`` of every resource with a loop, from that loop's last poll."""

    def __init__(self) -> None:
        # by (namespace, name): a loop replacing one still finishing shows once, and is not forgotten
        # when the old one ends
        self.loops: dict[tuple[str, str], Polled] = {}

    def track(self, loop: Polled) -> None:
        self.loops[loop.ns, loop.name] = loop

    def forget(self, loop: Polled) -> None:
        if self.loops.get((loop.ns, loop.name)) is loop:
            del self.loops[loop.ns, loop.name]

    def collect(self) -> Iterator[Metric]:
        # runs in the HTTP server's thread: a copy of the dict (atomic under the GIL), plain attribute reads
        backlog = GaugeMetricFamily(
            "tide_backlog", "Backlog of the QueueConsumer's source, by part", labels=[*LABELS, "part"]
        )
        oldest = GaugeMetricFamily(
            "tide_oldest_message_age_seconds",
            "Seconds the oldest waiting message of the source has waited (0 when none waits)",
            labels=LABELS,
        )
        desired = GaugeMetricFamily("tide_desired_replicas", "Replicas the policy wants", labels=LABELS)
        current = GaugeMetricFamily("tide_current_replicas", "Replicas of the scale target", labels=LABELS)
        for loop in list(self.loops.values()):
            key = [loop.ns, loop.name]
            gauges = loop.last_gauges
            if gauges is not None:
                desired.add_metric(key, gauges[0])
                current.add_metric(key, gauges[1])
            b = loop.last_backlog_metric
            if b is not None:
                for part in PARTS:
                    backlog.add_metric([*key, part], getattr(b, part))
                oldest.add_metric(key, b.oldest_age or 0.0)
        yield from (backlog, oldest, desired, current)


class CollectorPauses(Collector):
    """The collector's pauses (``tide_operator.heap.PAUSES``): seconds the event loop stood still."""

    def collect(self) -> Iterator[Metric]:
        count = CounterMetricFamily("tide_gc_pauses", "Garbage collections since the operator started")
        count.add_metric([], PAUSES.count)
        seconds = CounterMetricFamily(
            "tide_gc_pause_seconds", "Seconds the event loop stood still in garbage collections"
        )
        seconds.add_metric([], PAUSES.seconds)
        longest = GaugeMetricFamily("tide_gc_pause_longest_seconds", "The longest garbage collection so far")
        longest.add_metric([], PAUSES.longest)
        yield from (count, seconds, longest)


RESOURCES = ResourceGauges()
REGISTRY.register(RESOURCES)
REGISTRY.register(CollectorPauses())
DECISION_SECONDS = Histogram(
    "tide_decision_seconds",
    "One poll: Redis read, decision and any /scale patch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
READ_ERRORS = Counter("tide_redis_read_errors_total", "Failed Redis backlog reads", LABELS)
SCALE_CHANGES = Counter("tide_scale_changes_total", "Patches of /scale", [*LABELS, "rule"])
# Operator-wide load: what 1,000 quiet resources cost the Redis servers and the API server.
REDIS_ROUND_TRIPS = Counter(
    "tide_redis_round_trips_total", "Pipelines sent to Redis (one carries the reads of many resources)"
)
WAKEUPS = Counter("tide_wakeups_total", "Early reads released by a keyspace notification (a push at zero)")
REDIS_READS = Counter("tide_redis_reads_total", "Backlog reads of all resources")
KUBE_REQUESTS = Counter("tide_kube_requests_total", "Requests to the API server", ["verb", "resource"])
KUBE_SECONDS = Histogram(
    "tide_kube_request_seconds",
    "API server requests, waiting for a connection included",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def forget(loop: Polled) -> None:
    """Drop an ended loop's gauges so they do not linger at their last value."""
    RESOURCES.forget(loop)
