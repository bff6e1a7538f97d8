"""Every failure of the per-resource loop ends in a condition and an event, once, and the loop goes on: the
owned Deployment refused or deleted, specs that used to crash the loop, a persistent ``/scale`` refusal,
a target without ``/scale``, and credentials in a URL (never printed). The whole operator as a subprocess
under its own ServiceAccount, on the local control plane and a real redis-server."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.operator.operator_harness import (
    Api,
    deployment,
    get_deployment,
    kubectl,
    qc,
    run_operator,
    wait_for,
)

pytestmark = [pytest.mark.cluster]

WORKER = {"image": "tide-worker:dev", "handler": "tests.operator.slow_handler:handle"}


@contextlib.contextmanager
def _explained(op: Any, api: Api) -> Iterator[None]:
    """On a failure, show the operator's log and every QueueConsumer's conditions."""
    try:
        yield
    except AssertionError:
        print(op.log()[-6000:])
        for obj in api.custom.list_namespaced_custom_object("tide.dev", "v1alpha1", api.ns, "queueconsumers")[
            "items"
        ]:
            print(obj["metadata"]["name"], json.dumps(obj.get("status", {}).get("conditions"), indent=1))
        raise


def _reason(api: Api, name: str, ctype: str = "Ready") -> tuple[str, str] | None:
    c = api.conditions(name).get(ctype)
    return None if c is None else (str(c["status"]), str(c.get("reason")))


def _message(api: Api, name: str, ctype: str = "Ready") -> str:
    return str(api.conditions(name)[ctype]["message"])


REFUSAL = "Deployments are refused here for now"


@contextlib.contextmanager
def _refuse_deployments(cluster: Any, namespace: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (and binding, both named after the namespace) refusing every Deployment
    created in ``namespace``; yields its name once it is in force, deletes both afterwards."""
    name = f"refuse-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": REFUSAL}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}),
    )

    def refused() -> bool:
        probe = kubectl(
            cluster,
            "-n",
            namespace,
            "create",
            "deployment",
            "probe",
            "--image=x",
            "--dry-run=server",
            check=False,
        )
        return probe == ""  # refused: the error goes to stderr

    try:
        wait_for("the admission policy in force", refused, timeout=30, interval=0.2)
        yield name
    finally:
        objects = (f"validatingadmissionpolicybinding/{name}", f"validatingadmissionpolicy/{name}")
        kubectl(cluster, "delete", *objects, "--ignore-not-found", check=False)


def test_refused_deployment_is_reported_retried_and_recreated(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    """The API server's own message in Ready=False/DeploymentFailed and an event; a refusal that goes
    away (a quota deleted, no spec change) is retried until the Deployment exists; one deleted by hand
    comes back."""
    api = Api(k8s, namespace)
    # an admission policy refuses every Deployment of the namespace until its binding goes
    with _refuse_deployments(crds, namespace) as policy:
        fast = {"pollingIntervalSeconds": 1, "targetBacklogPerReplica": 10}
        api.create_qc(qc("quota", redis_url, {"list": {"key": "qq"}}, fast, worker=WORKER))
        bad_quantity = {**WORKER, "resources": {"limits": {"cpu": "lots"}}}
        api.create_qc(qc("quantity", redis_url, {"list": {"key": "xq"}}, fast, worker=bad_quantity))
        # a malformed valueFrom passes the CRD (it keeps valueFrom open) and only the Deployment is refused
        # (a name past 63 characters, the attack report's third case, the CRD now refuses itself)
        bad_env = {**WORKER, "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}
        api.create_qc(qc("valuefrom", redis_url, {"list": {"key": "lq"}}, fast, worker=bad_env))
        with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api):
            for name, words in (
                ("quota", REFUSAL),
                ("quantity", "quantities must match"),
                ("valuefrom", "secretKeyRef.key"),
            ):
                wait_for(
                    f"{name}: Ready=False/DeploymentFailed",
                    lambda name=name: _reason(api, name) == ("False", "DeploymentFailed"),
                    timeout=60,
                )
                assert words in _message(api, name), _message(api, name)
                events = wait_for(
                    f"{name}: a DeploymentFailed event",
                    lambda name=name: api.events("DeploymentFailed", kind="Warning", about=name),
                    timeout=20,
                )
                assert any(words in m for m in events), events

            kubectl(crds, "delete", "validatingadmissionpolicybinding", policy)
            # no spec change: only the retry with backoff (at most 60 s apart) can create it
            wait_for(
                "the Deployment after the quota is gone",
                lambda: get_deployment(api, "quota-worker"),
                timeout=90,
            )
            wait_for("Ready=True", lambda: api.condition("quota", "Ready") == "True", timeout=20)
            wait_for(
                "a DeploymentApplied event",
                lambda: api.events("DeploymentApplied", kind="Normal", about="quota"),
                timeout=10,
            )

            # deleted by hand: the next read or /scale patch of it says 404, and it is applied again
            first_uid = get_deployment(api, "quota-worker").metadata.uid
            api.apps.delete_namespaced_deployment("quota-worker", namespace)
            r = redis.Redis.from_url(redis_url)
            r.lpush("qq", *range(30))
            r.close()
            dep = wait_for(
                "a new Deployment",
                lambda: (
                    (d := get_deployment(api, "quota-worker")) is not None
                    and d.metadata.uid != first_uid
                    and d
                ),
                timeout=60,
            )
            assert dep.metadata.owner_references[0].name == "quota"
            wait_for("scaled to 3 again", lambda: api.replicas("quota-worker") == 3, timeout=30)
            assert api.events("DeploymentMissing", kind="Warning", about="quota")
            # the other two stay refused, reported once each (their retries post nothing new)
            time.sleep(3)
            for name in ("quantity", "valuefrom"):
                assert _reason(api, name) == ("False", "DeploymentFailed")
                assert len(api.events("DeploymentFailed", about=name)) == 1, api.events("DeploymentFailed")
            assert op.proc.poll() is None, op.log()[-3000:]


def test_specs_that_crashed_the_loop_end_in_conditions_and_one_event(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    """A URL redis-py refuses, ``cluster: true`` against a standalone server, a pod template of the wrong
    shape: each a Ready=False condition with a reason and one Warning event, while polling goes on. (The
    attack report's port 99999 and ``podTemplate.metadata: "x"`` the CRD now refuses; these pass it.)"""
    api = Api(k8s, namespace)
    scaling = {"pollingIntervalSeconds": 0.5, "fallback": {"failureThreshold": 2}}
    api.create_deployment(deployment("w", {}))
    api.create_qc(
        qc("badport", "redis://127.0.0.1:6379/0?socket_timeout=abc", {"list": {"key": "a"}}, scaling)
    )
    notcluster = qc("notcluster", redis_url, {"list": {"key": "b"}}, scaling)
    notcluster["spec"]["redis"]["cluster"] = True
    api.create_qc(notcluster)
    template = {**WORKER, "podTemplate": {"spec": {"containers": "x"}}}
    api.create_qc(qc("badtemplate", redis_url, {"list": {"key": "c"}}, scaling, worker=template))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api):
        expect = {
            "badport": ("RedisReachable", "socket_timeout", "RedisUnreachable"),
            "notcluster": ("RedisReachable", "cluster", "RedisUnreachable"),
            "badtemplate": ("Ready", "spec.worker.podTemplate.spec.containers must be a list", "InvalidSpec"),
        }
        for name, (ctype, words, event) in expect.items():
            wait_for(
                f"{name}: {ctype}=False",
                lambda name=name, ctype=ctype: (
                    _reason(api, name, ctype) is not None and _reason(api, name, ctype)[0] == "False"
                ),  # type: ignore[index]
                timeout=60,
            )
            assert words.lower() in _message(api, name, ctype).lower(), (name, api.conditions(name))
            wait_for(
                f"{name}: a {event} event",
                lambda name=name, event=event: api.events(event, kind="Warning", about=name),
                timeout=20,
            )
        assert _reason(api, "badtemplate") == ("False", "InvalidSpec")
        # several polls later: still one event each, and the Redis failures hold (no fallback count set)
        time.sleep(4)
        for name, (_, _, event) in expect.items():
            assert len(api.events(event, about=name)) == 1, (name, api.events(event, about=name))
        for name in ("badport", "notcluster"):
            fb = api.conditions(name)["Fallback"]
            assert (fb["status"], fb["reason"]) == ("False", "Holding"), fb
            assert "no fallback.replicas set" in fb["message"], fb
        log = op.log()
        assert "Traceback" not in log and "failed with an exception" not in log, log[-3000:]
        assert op.proc.poll() is None


SCALE_CRD = "limitedwidgets.tidetest.dev"


def _limited_widget_crd(cluster: Any) -> None:
    """A custom kind with a /scale subresource whose schema allows at most 2 replicas: every larger
    /scale patch is refused (422), for as long as the backlog asks for more."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": SCALE_CRD},
        "spec": {
            "group": "tidetest.dev",
            "names": {"kind": "LimitedWidget", "plural": "limitedwidgets", "singular": "limitedwidget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                        }
                    },
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0, "maximum": 2}
                                    },
                                },
                                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                            },
                        }
                    },
                }
            ],
        },
    }
    kubectl(cluster, "apply", "--server-side", "--field-manager=tide-tests", "-f", "-", input=json.dumps(crd))
    kubectl(cluster, "wait", "--for=condition=established", "--timeout=30s", f"crd/{SCALE_CRD}")


def _widget_replicas(api: Api) -> int:
    widget = api.custom.get_namespaced_custom_object("tidetest.dev", "v1", api.ns, "limitedwidgets", "lw")
    return int((widget.get("spec") or {}).get("replicas") or 0)


def test_persistent_failures_post_one_event_and_a_target_without_scale_says_so(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    _limited_widget_crd(crds)
    api = Api(k8s, namespace)
    widget = {
        "apiVersion": "tidetest.dev/v1",
        "kind": "LimitedWidget",
        "metadata": {"name": "lw"},
        "spec": {"replicas": 0},
    }
    api.custom.create_namespaced_custom_object("tidetest.dev", "v1", namespace, "limitedwidgets", widget)
    api.core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {}})
    fast = {"pollingIntervalSeconds": 0.5, "targetBacklogPerReplica": 10, "maxReplicas": 20}
    body = qc("limited", redis_url, {"list": {"key": "lim"}}, fast)
    body["spec"]["scaleTargetRef"] = {"apiVersion": "tidetest.dev/v1", "kind": "LimitedWidget", "name": "lw"}
    api.create_qc(body)
    cm = qc("config", redis_url, {"list": {"key": "cfg"}}, fast)
    cm["spec"]["scaleTargetRef"] = {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm"}
    api.create_qc(cm)
    missing = qc("missing", redis_url, {"list": {"key": "mis"}}, fast, target="nowhere")
    api.create_qc(missing)
    r = redis.Redis.from_url(redis_url)
    r.lpush("lim", *range(50))  # wants 5, the widget takes at most 2
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api):
        wait_for(
            "a ScaleFailed event",
            lambda: api.events("ScaleFailed", kind="Warning", about="limited"),
            timeout=60,
        )
        wait_for(
            "config: Ready=False/TargetNotScalable",
            lambda: _reason(api, "config") == ("False", "TargetNotScalable"),
            timeout=30,
        )
        assert "ConfigMap has no /scale subresource" in _message(api, "config"), _message(api, "config")
        wait_for(
            "missing: Ready=False/TargetNotFound",
            lambda: _reason(api, "missing") == ("False", "TargetNotFound"),
            timeout=30,
        )
        time.sleep(6)  # a dozen polls of each, each /scale patch refused again
        failed = api.events("ScaleFailed", about="limited")
        assert len(failed) == 1, failed
        assert "2" in failed[0], failed  # the API server's reason (the schema's maximum)
        assert len(api.events("TargetNotScalable", kind="Warning", about="config")) == 1
        assert len(api.events("TargetNotFound", kind="Warning", about="missing")) == 1
        assert api.events("TargetNotFound", about="config") == []

        # the failure clears (a reachable count), then starts again: a new event each time it starts
        r.delete("lim")
        r.lpush("lim", *range(20))
        wait_for(
            "scaled to 2",
            lambda: _widget_replicas(api) == 2,
            timeout=20,
        )
        r.lpush("lim", *range(40))
        wait_for(
            "a second ScaleFailed", lambda: len(api.events("ScaleFailed", about="limited")) == 2, timeout=20
        )
        assert op.proc.poll() is None
    r.close()


# Credentials in spec.redis.url: the CRD refuses them without echoing them (test_tenant.py); what the
# operator prints goes through tide_worker.connection.redact (tests/operator/test_workload.py).
