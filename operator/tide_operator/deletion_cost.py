"""Which pods a scale-down should take first: ``controller.kubernetes.io/pod-deletion-cost`` from the work
each pod's workers hold, as their heartbeats say (``tide_worker.records.Heartbeat``: ``pod``,
``namespace``, ``inflight``, ``oldest_started``).

The ReplicaSet controller deletes pods of lower cost first (after unscheduled and unready ones). An idle
pod costs 0; a busy one ``inflight * (1 + seconds the oldest job has run)``, at least 1, so a pod ten
minutes into a job outlasts one that just took one. Pure: the operator reads the heartbeats, this decides,
kube.py patches (consumer.py). Pods whose workers do not report (or report another namespace) are never
named, so their cost stays whatever it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from tide_worker.records import Heartbeat

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
IDLE = 0
MAX_COST = 2**31 - 1  # the annotation is an int32


def worker_cost(hb: Heartbeat, now: float) -> int:
    """What one worker's work is worth keeping: 0 idle, else in-flight count weighted by the oldest's age."""
    if hb.inflight <= 0:
        return IDLE
    age = max(0.0, now - hb.oldest_started) if hb.oldest_started > 0 else 0.0
    return min(MAX_COST, max(1, hb.inflight * (1 + math.floor(age))))


def pod_costs(heartbeats: Iterable[Heartbeat], namespace: str, now: float) -> dict[str, int]:
    """The cost of every pod in ``namespace`` that a heartbeat names (workers of one pod add up)."""
    out: dict[str, int] = {}
    for hb in heartbeats:
        if not hb.pod or hb.namespace != namespace:
            continue
        out[hb.pod] = min(MAX_COST, out.get(hb.pod, 0) + worker_cost(hb, now))
    return out


def changed(costs: Mapping[str, int], known: Mapping[str, int]) -> dict[str, int]:
    """The costs to write: those that differ from what was last written (``known``)."""
    return {pod: cost for pod, cost in costs.items() if known.get(pod) != cost}
