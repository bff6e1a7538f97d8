"""Two operator processes with kopf peering, as the chart runs them with replicaCount > 1 in the namespaced
scope (``--namespace NS --peering=NAME``, ``TIDE_OPERATOR_SCOPE=namespaced``, ``crds/rbac/role-namespaced.yaml``,
a ``KopfPeering`` object): exactly one acts, and when it goes away the other takes over."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.operator.operator_harness import Api, Operator, deployment, operator_rbac, qc, wait_for

pytestmark = [pytest.mark.cluster]

PEERING = "tide"
ACTIVE_LOG, STANDBY_LOG = "operator-active.log", "operator-standby.log"


def _peers(api: Api) -> dict[str, Any]:
    obj = api.custom.get_namespaced_custom_object("kopf.dev", "v1", api.ns, "kopfpeerings", PEERING)
    return {k: v for k, v in (obj.get("status") or {}).items() if isinstance(v, dict)}


def _start(kubeconfig: Any, namespace: str, tmp_path: Any, name: str, priority: int) -> Operator:
    return Operator(
        kubeconfig,
        namespace,
        tmp_path / f"operator-{name}.log",
        extra=(f"--peering={PEERING}",),
        # fixed priorities make the active one known; the chart draws random ones (equal ones pause both)
        env={"TIDE_OPERATOR_SCOPE": "namespaced", "TIDE_PEERING_PRIORITY": str(priority)},
    )


def _scaled_lines(*ops: Operator) -> dict[str, list[str]]:
    return {op.log_path.name: [line for line in op.log().splitlines() if "Scaled" in line] for op in ops}


@contextlib.contextmanager
def peered_operators(
    crds: Any, api: Api, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> Iterator[tuple[Operator, Operator]]:
    """QueueConsumer ``peer`` (list ``pq``, 50 per replica, at most 20) of Deployment ``w``, served by an
    active operator (priority 200) and a paused standby (100); yields (active, standby)."""
    api.custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        api.ns,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )
    api.create_deployment(deployment("w", {}))
    api.create_qc(
        qc("peer", redis_url, {"list": {"key": "pq"}}, {"targetBacklogPerReplica": 50, "maxReplicas": 20})
    )
    ops: list[Operator] = []
    with operator_rbac(crds, api.ns, sa_kubeconfig, namespaced=True) as kubeconfig:
        try:
            # One after the other, so which one is active is known: the standby's first look at the
            # peering object already shows the active peer.
            ops.append(_start(kubeconfig, api.ns, tmp_path, "active", 200))
            wait_for("the first peer registered", lambda: len(_peers(api)) == 1, timeout=60)
            ops.append(_start(kubeconfig, api.ns, tmp_path, "standby", 100))
            wait_for("both peers registered", lambda: len(_peers(api)) == 2, timeout=60)
            wait_for("the active one serves", lambda: api.condition("peer", "Ready") == "True", timeout=60)
            # mandatory peering starts paused and logs only when it resumes
            assert "Resuming operations" in ops[0].log()
            assert "Resuming operations" not in ops[1].log(), ops[1].log()[-3000:]
            yield ops[0], ops[1]
        finally:
            for op in ops:
                op.stop()
                print(f"--- {op.log_path.name}\n{op.log()[-4000:]}")  # shown when the test fails


def _first_burst_by_the_active_one_only(
    api: Api, r: redis.Redis, active: Operator, standby: Operator
) -> None:
    r.lpush("pq", *range(500))
    wait_for("10 replicas", lambda: api.replicas() == 10, timeout=30)
    wait_for("a Scaled event", lambda: api.events("Scaled", about="peer"), timeout=10)
    # give a second actor time to show itself: a duplicate event, or the count moving
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert api.replicas() == 10
        time.sleep(0.2)
    # exactly one actor: one scale in the active one's log, none in the standby's, one event
    lines = _scaled_lines(active, standby)
    assert lines[STANDBY_LOG] == [], lines
    assert len(lines[ACTIVE_LOG]) == 1 and "0 -> 10" in lines[ACTIVE_LOG][0], lines
    events = api.events("Scaled", about="peer")
    assert len(events) == 1 and "0 -> 10" in events[0], (events, lines)
    assert standby.proc.poll() is None


def _second_burst_by_the_standby(api: Api, r: redis.Redis, standby: Operator, timeout: float) -> float:
    """Push 500 more (20 replicas' worth); returns how long the standby took to scale."""
    start = time.monotonic()
    r.lpush("pq", *range(500))
    wait_for("the standby takes over: 20 replicas", lambda: api.replicas() == 20, timeout=timeout)
    took = time.monotonic() - start
    assert "Resuming operations after the pause" in standby.log()
    wait_for("the second Scaled event", lambda: len(api.events("Scaled", about="peer")) >= 2, timeout=10)
    time.sleep(1)  # and no third
    events = api.events("Scaled", about="peer")
    assert len(events) == 2 and sum("10 -> 20" in m for m in events) == 1, events
    assert "10 -> 20" in standby.log()
    return took


@pytest.mark.slow  # the takeover waits for the killed peer's peering record (15 s lifetime) to run out
def test_one_active_operator_then_takeover_after_sigkill(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    api = Api(k8s, namespace)
    with (
        redis.Redis.from_url(redis_url) as r,
        peered_operators(crds, api, sa_kubeconfig, redis_url, tmp_path) as (active, standby),
    ):
        _first_burst_by_the_active_one_only(api, r, active, standby)
        active.kill()  # no goodbye: its peering record stays until its lifetime (15 s) runs out
        took = _second_burst_by_the_standby(api, r, standby, timeout=60)
        print(f"takeover after SIGKILL: {took:.1f}s")


def test_graceful_stop_hands_over_at_once(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    api = Api(k8s, namespace)
    with (
        redis.Redis.from_url(redis_url) as r,
        peered_operators(crds, api, sa_kubeconfig, redis_url, tmp_path) as (active, standby),
    ):
        _first_burst_by_the_active_one_only(api, r, active, standby)
        active.stop()  # SIGTERM, as a rolling update does: kopf withdraws it from the peering object
        wait_for("the active one withdrawn", lambda: len(_peers(api)) == 1, timeout=10)
        took = _second_burst_by_the_standby(api, r, standby, timeout=30)
        print(f"takeover after SIGTERM: {took:.1f}s")
