"""Generated worker pods in a namespace that enforces Pod Security "restricted": admitted as generated, and
when a ``podTemplate`` makes them inadmissible the QueueConsumer says so (``PodsCreatable=False`` and an
event). The local control plane runs the ReplicaSet controller, so PSA admission judges real pod creates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.operator.operator_harness import Api, kubectl, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

WORKER = {"image": "tide-worker:dev", "handler": "tests.operator.slow_handler:handle"}


def _pods(api: Api, qc_name: str) -> list[Any]:
    return list(
        api.core.list_namespaced_pod(api.ns, label_selector=f"tide.dev/queueconsumer={qc_name}").items
    )


def test_worker_pods_pass_restricted_and_refused_pods_are_reported(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str, tmp_path: Any
) -> None:
    kubectl(crds, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    api = Api(k8s, namespace)
    one = {"minReplicas": 1, "pollingIntervalSeconds": 0.5}
    api.create_qc(qc("plain", redis_url, {"list": {"key": "p"}}, one, worker=WORKER))
    # hostNetwork is refused by "baseline" already, so by "restricted"
    privileged = {
        **WORKER,
        "podTemplate": {"spec": {"hostNetwork": True}},
        # run by a local node agent below, beside other processes: any free port (and so no probes)
        "env": [{"name": "TIDE_METRICS_PORT", "value": "0"}],
    }
    api.create_qc(qc("hostnet", redis_url, {"list": {"key": "h"}}, one, worker=privileged))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        pods = wait_for("a pod of the generated Deployment", lambda: _pods(api, "plain"), timeout=60)
        spec = pods[0].spec
        assert spec.automount_service_account_token is False
        container = spec.containers[0]
        assert container.security_context.capabilities.drop == ["ALL"]
        assert (container.liveness_probe.http_get.path, container.readiness_probe.http_get.path) == (
            "/healthz",
            "/readyz",
        )
        assert container.resources.requests and container.resources.limits
        wait_for(
            "plain: PodsCreatable=True", lambda: api.condition("plain", "PodsCreatable") == "True", timeout=30
        )

        def refused() -> Any:
            c = api.conditions("hostnet").get("PodsCreatable")
            return c if c is not None and c["status"] == "False" else None

        cond = wait_for("hostnet: PodsCreatable=False", refused, timeout=60)
        assert cond["reason"] == "FailedCreate", cond
        assert "PodSecurity" in cond["message"] and "hostNetwork" in cond["message"], cond
        events = wait_for(
            "a PodsNotCreatable event",
            lambda: api.events("PodsNotCreatable", kind="Warning", about="hostnet"),
            timeout=20,
        )
        assert any("PodSecurity" in m for m in events), events
        assert _pods(api, "hostnet") == []
        assert api.events("PodsNotCreatable", about="plain") == []

        # the template fixed: pods are created, and the condition says so
        api.custom.patch_namespaced_custom_object(
            "tide.dev",
            "v1alpha1",
            namespace,
            "queueconsumers",
            "hostnet",
            {"spec": {"worker": {"podTemplate": {"spec": {"hostNetwork": False}}}}},
        )
        wait_for("hostnet pods after the fix", lambda: _pods(api, "hostnet"), timeout=60)
        # the old ReplicaSet keeps failing until the new pod is ready and the rollout retires it: run it
        node_agent("tide.dev/queueconsumer=hostnet")
        wait_for(
            "hostnet: PodsCreatable=True",
            lambda: api.condition("hostnet", "PodsCreatable") == "True",
            timeout=60,
        )
        assert op.proc.poll() is None, json.dumps(api.conditions("hostnet"))
