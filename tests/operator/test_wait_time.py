"""The wait-time objective on the local stack: the operator reads the oldest message's age in its one
round trip, shows it in ``status.backlog.oldestAgeSeconds`` and ``kubectl get qc``, and
``targetWaitSeconds`` adds replicas while messages wait too long although the backlog rule asks for one."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from tide_worker.producer import Producer

from tests.operator.operator_harness import Api, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

WAIT = 2.0


def test_messages_waiting_past_the_target_raise_replicas(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    # no node agent: the Deployment's pods never run, so nothing consumes and the messages keep waiting
    api.create_deployment(deployment("w", {"TIDE_REDIS_URL": redis_url, "TIDE_QUEUE": "wq"}))
    # the backlog rule alone asks for ceil(10 / 1000) = 1 replica
    scaling = {"targetBacklogPerReplica": 1000, "targetWaitSeconds": WAIT, "maxReplicas": 5}
    api.create_qc(qc("wait", redis_url, {"list": {"key": "wq"}}, scaling))
    # and one without the objective, on a queue in the same state: it stays at 1
    api.create_deployment(deployment("w2", {"TIDE_REDIS_URL": redis_url, "TIDE_QUEUE": "wq2"}))
    plain = {"targetBacklogPerReplica": 1000, "maxReplicas": 5}
    api.create_qc(qc("nowait", redis_url, {"list": {"key": "wq2"}}, plain, target="w2"))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        wait_for("ready", lambda: api.condition("wait", "Ready") == "True", timeout=60)
        wait_for("ready", lambda: api.condition("nowait", "Ready") == "True", timeout=60)
        pushed = time.time()
        Producer(r).enqueue_many("wq", range(10))
        Producer(r).enqueue_many("wq2", range(10))
        first = wait_for("0 -> 1", lambda: api.events("Scaled", about="wait"), timeout=20)
        assert "0 -> 1" in first[0] and "oldest message" not in first[0], first  # fresh: the backlog rule

        def age() -> float | None:
            return (api.get_qc("wait").get("status", {}).get("backlog") or {}).get("oldestAgeSeconds")

        seen = wait_for("the age in status", lambda: (a := age()) is not None and a > 0 and a, timeout=20)
        assert seen <= time.time() - pushed + 1.0, seen  # the age of what was pushed, not more

        msgs = wait_for(
            "a wait-time scale-up",
            lambda: [m for m in api.events("Scaled", about="wait") if "oldest message waited" in m],
            timeout=30,
            interval=0.2,
        )
        print("decision:", msgs[0])
        assert "> 2s target" in msgs[0] and "1 -> " in msgs[0], msgs
        wait_for("replicas raised", lambda: api.replicas("w") > 1, timeout=10)
        wait_for("the max", lambda: api.replicas("w") == 5, timeout=30)
        assert api.get_qc("wait")["status"]["lastRule"] in ("wait-time", "max")
        assert api.get_qc("wait")["status"]["backlog"]["total"] == 10
        # the same queue state without targetWaitSeconds: the backlog rule's one replica
        assert api.replicas("w2") == 1
        assert not [m for m in api.events("Scaled", about="nowait") if "oldest message" in m]
        # kubectl get qc shows the age as a column
        table = crds.run_kubectl("-n", namespace, "get", "qc", "wait").stdout
        header, row = table.splitlines()[:2]
        assert "OLDEST" in header.split()
        assert float(row.split()[header.split().index("OLDEST")]) >= WAIT
        # nothing waits any more: the age is gone from the status
        r.delete("wq")
        wait_for("no age", lambda: age() is None, timeout=20)
        assert op.proc.poll() is None
    r.close()
