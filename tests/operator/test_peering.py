"""Two operator processes with kopf peering, as the chart runs them with replicaCount > 1 in the namespaced
scope (``--namespace NS --peering=NAME``, ``TIDE_OPERATOR_SCOPE=namespaced``, ``crds/rbac/role-namespaced.yaml``,
a ``KopfPeering`` object): exactly one acts, and when it is SIGKILLed the other takes over."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.operator.operator_harness import Api, Operator, deployment, operator_rbac, qc, wait_for

pytestmark = [pytest.mark.cluster]

PEERING = "tide"


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


def _scaled_lines(*ops: Operator | None) -> dict[str, list[str]]:
    return {
        op.log_path.name: [line for line in op.log().splitlines() if "Scaled" in line]
        for op in ops
        if op is not None
    }


@pytest.mark.slow  # the takeover waits for the killed peer's 60 s kopf peering lifetime to run out
def test_one_active_operator_then_takeover_after_sigkill(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    api.custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )
    api.create_deployment(deployment("w", {}))
    scaling = {"targetBacklogPerReplica": 50, "maxReplicas": 20}
    api.create_qc(qc("peer", redis_url, {"list": {"key": "pq"}}, scaling))

    def scaled() -> list[str]:
        return api.events("Scaled", about="peer")

    with operator_rbac(crds, namespace, sa_kubeconfig, namespaced=True) as kubeconfig:
        # One after the other, so which one is active is known: the standby's first look at the peering
        # object already shows the active peer (two started at once both start paused, then sort it out).
        active = _start(kubeconfig, namespace, tmp_path, "active", 200)
        standby: Operator | None = None
        try:
            wait_for("the first peer registered", lambda: len(_peers(api)) == 1, timeout=60)
            standby = _start(kubeconfig, namespace, tmp_path, "standby", 100)
            wait_for("both peers registered", lambda: len(_peers(api)) == 2, timeout=60)
            wait_for("the active one serves", lambda: api.condition("peer", "Ready") == "True", timeout=60)
            # mandatory peering starts paused and logs only when it resumes
            assert "Resuming operations" in active.log()
            assert "Resuming operations" not in standby.log(), standby.log()[-3000:]

            r.lpush("pq", *range(500))
            wait_for("10 replicas", lambda: api.replicas() == 10, timeout=30)
            wait_for("a Scaled event", scaled, timeout=10)
            # give a second actor time to show itself: a duplicate event, or the count moving
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert api.replicas() == 10
                time.sleep(0.2)
            # exactly one actor: one scale in the active one's log, none in the standby's, one event
            lines = _scaled_lines(active, standby)
            assert lines["operator-standby.log"] == [], lines
            assert len(lines["operator-active.log"]) == 1 and "0 -> 10" in lines["operator-active.log"][0], (
                lines
            )
            events = scaled()
            assert len(events) == 1 and "0 -> 10" in events[0], (events, lines)
            assert standby.proc.poll() is None

            active.kill()  # no cleanup: its peering record stays until its lifetime runs out
            killed_at = time.monotonic()
            r.lpush("pq", *range(500))
            wait_for("the standby takes over: 20 replicas", lambda: api.replicas() == 20, timeout=120)
            print(f"takeover after SIGKILL: {time.monotonic() - killed_at:.1f}s")
            assert "Resuming operations after the pause" in standby.log()
            wait_for("the second Scaled event", lambda: len(scaled()) >= 2, timeout=10)
            time.sleep(1)  # and no third
            events = scaled()
            assert len(events) == 2 and sum("10 -> 20" in m for m in events) == 1, events
            assert "10 -> 20" in standby.log()
        finally:
            for op in (active, standby):
                if op is not None:
                    op.stop()
                    print(f"--- {op.log_path.name}\n{op.log()[-4000:]}")  # shown when the test fails
    r.close()
