"""Prometheus metrics of the operator (served on ``TIDE_OPERATOR_METRICS_PORT``, default 9090)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("namespace", "name")

BACKLOG = Gauge("tide_backlog", "Backlog of the QueueConsumer's source, by part", [*LABELS, "part"])
OLDEST_AGE = Gauge(
    "tide_oldest_message_age_seconds",
    "Seconds the oldest waiting message of the source has waited (0 when none waits)",
    LABELS,
)
DESIRED = Gauge("tide_desired_replicas", "Replicas the policy wants", LABELS)
CURRENT = Gauge("tide_current_replicas", "Replicas of the scale target", LABELS)
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


def forget(namespace: str, name: str) -> None:
    """Drop a deleted resource's series so they do not linger at their last value."""
    for gauge in (DESIRED, CURRENT, OLDEST_AGE):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for part in ("ready", "inflight", "retries_due", "stream_lag", "stream_pending", "total"):
        with contextlib.suppress(KeyError):
            BACKLOG.remove(namespace, name, part)
