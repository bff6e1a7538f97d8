"""The pod deletion costs set before a scale-down (tide_operator.deletion_cost): idle pods cheapest."""

from __future__ import annotations

import pytest
from tide_operator.deletion_cost import IDLE, MAX_COST, changed, pod_costs, worker_cost
from tide_worker.records import Heartbeat

NOW = 1_000_000.0


def hb(
    pod: str = "p", ns: str = "ns", inflight: int = 0, age: float | None = None, wid: str = "w"
) -> Heartbeat:
    return Heartbeat(
        id=wid, host="h", pid=1, started=0, ts=NOW, concurrency=8, inflight=inflight, pod=pod, namespace=ns,
        oldest_started=0.0 if age is None else NOW - age,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("beat", "want"),
    [
        (hb(inflight=0), IDLE),
        (hb(inflight=0, age=50), IDLE),  # a stale start time with nothing in flight: still idle
        (hb(inflight=1, age=0), 1),
        (hb(inflight=1), 1),  # busy without a start time: above idle
        (hb(inflight=1, age=29.9), 30),
        (hb(inflight=3, age=29.9), 90),
        (hb(inflight=2, age=600), 1202),
        (hb(inflight=1, age=-5), 1),  # a clock ahead of the operator's: never below a busy minimum
        (hb(inflight=10**6, age=10**5), MAX_COST),  # the annotation is an int32
    ],
)
def test_worker_cost(beat: Heartbeat, want: int) -> None:
    assert worker_cost(beat, NOW) == want


def test_busy_and_older_cost_more() -> None:
    idle, young, old, two_old = (worker_cost(hb(inflight=i, age=a), NOW) for i, a in ((0, None), (1, 1), (1, 60), (2, 60)))  # fmt: skip
    assert idle < young < old < two_old


def test_pod_costs_only_named_pods_of_the_namespace_and_workers_of_a_pod_add_up() -> None:
    beats = [
        hb("a", inflight=1, age=9, wid="w1"),
        hb("a", inflight=1, age=4, wid="w2"),  # a second worker in pod a
        hb("b"),
        hb("", inflight=5, age=100),  # outside Kubernetes (no pod): never named
        hb("c", ns="other", inflight=5, age=100),  # another namespace: never touched
    ]
    assert pod_costs(beats, "ns", NOW) == {"a": 15, "b": IDLE}


def test_changed_only_what_differs() -> None:
    assert changed({"a": 0, "b": 5, "c": 7}, {"a": 0, "b": 4}) == {"b": 5, "c": 7}
    assert changed({}, {"a": 1}) == {}
