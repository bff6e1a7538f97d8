"""A hostile tenant on the local control plane: a ServiceAccount that may only manage QueueConsumers in its
namespace tries to have the operator read Secrets, scale workloads and run pods for it, and the API server
refuses each attempt with a message that says why; a user who holds those rights succeeds.

The refusals come from two layers, both shipped in ``crds/``: the CRD's schema (names must be Kubernetes
names, so no path can be smuggled through them) and the ValidatingAdmissionPolicy (the requester must hold
each right the QueueConsumer would exercise through the operator). The operator's own path builder is the
third layer (``test_api_paths_keep_every_name_in_its_segment``).
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tide_operator.kube import api_path
from tide_operator.spec import SpecError, parse_spec

pytestmark = pytest.mark.cluster

QC_RIGHTS = {
    "apiGroups": ["tide.dev"],
    "resources": ["queueconsumers"],
    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
}


def _qc(name: str = "qc", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "redis": {"url": "redis://redis.data:6379/0"},
        "source": {"list": {"key": "jobs"}},
    }
    body.update(spec)
    if "scaleTargetRef" not in body and "worker" not in body:
        body["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mine"}
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": name},
        "spec": body,
    }


def _secret(name: str) -> dict[str, Any]:
    return {"name": name, "key": "password"}


class Account:
    def __init__(self, cluster: Any, namespace: str, kubeconfig: Path) -> None:
        self.cluster, self.namespace, self.kubeconfig = cluster, namespace, kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl as this account, in its namespace."""
        cmd = [str(self.cluster.kubectl), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)

    def create(self, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("create", "-f", "-", stdin=json.dumps(obj))

    def patch(self, name: str, patch: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("patch", "qc", name, "--type=merge", "-p", json.dumps(patch))


@pytest.fixture
def accounts(crds: Any, namespace: str, sa_kubeconfig: Any, k8s: Any) -> Iterator[tuple[Account, Account]]:
    """(tenant, owner): both may manage QueueConsumers here; only the owner may also get Secret ``db``,
    scale Deployment ``important`` and create Deployments. Both objects exist."""
    from kubernetes import client

    core, apps, rbac = client.CoreV1Api(k8s), client.AppsV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "stringData": {"password": "s3cret", "ca.crt": "x"}}
    )
    for name in ("important", "mine"):
        apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "none"}]},
                    },
                },
            },
        )
    roles = {
        # the tenant may scale its own Deployment "mine", nothing else
        "tenant": [
            QC_RIGHTS,
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["mine"],
             "verbs": ["get", "patch"]},
        ],
        "owner": [
            QC_RIGHTS,
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch", "get"]},
        ],
    }  # fmt: skip
    out = []
    for who, rules in roles.items():
        rbac.create_namespaced_role(namespace, {"metadata": {"name": who}, "rules": rules})
        kubeconfig = sa_kubeconfig(namespace, who)
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": who},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": who},
                "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": namespace}],
            },
        )
        out.append(Account(crds, namespace, kubeconfig))
    yield out[0], out[1]


# Names that try to leave their path segment, in every encoding; each must be refused by the schema.
ESCAPES = [
    "../../victim/secrets/db",
    "..",
    ".",
    "db/../../victim",
    "..%2F..%2Fvictim%2Fsecrets%2Fdb",
    "%2e%2e",
    "db%00",
    "db?watch=true",
    "db#x",
    "DB",
    "db ",
    "d\u0431",  # a Cyrillic letter
    "a" * 254,
    "-db",
    "db\\..\\victim",
]


def _refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, f"accepted: {res.stdout}"
    for word in words:
        assert word in res.stderr, res.stderr


FIELDS = ["passwordSecretRef", "usernameSecretRef", "caSecretRef", "scaleTargetRef", "key"]
LEGAL_KEYS = {"DB", "-db"}  # legal Secret keys (keys never reach a path): not escapes for that field


@pytest.mark.parametrize(
    ("field", "name"), [(f, n) for f in FIELDS for n in ESCAPES if not (f == "key" and n in LEGAL_KEYS)]
)
def test_names_that_leave_their_segment_are_refused_by_the_schema(accounts, field, name):
    tenant, owner = accounts
    spec: dict[str, Any] = {"redis": {"url": "redis://redis.data:6379/0"}}
    if field == "caSecretRef":
        spec["redis"]["tls"] = {"enabled": True, "caSecretRef": _secret(name)}
    elif field == "key":
        spec["redis"]["passwordSecretRef"] = {"name": "db", "key": name}
    elif field == "scaleTargetRef":
        spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    else:
        spec["redis"][field] = _secret(name)
    obj = _qc(**spec)
    # the owner holds every right, so only the schema can be what refuses it
    for who in (tenant, owner):
        res = who.create(obj)
        assert res.returncode != 0, f"{field}={name!r} accepted: {res.stdout}"
        assert "Invalid value" in res.stderr or "Too long" in res.stderr or "must not" in res.stderr, (
            res.stderr
        )
        # every such refusal names the field at fault
        assert "spec." in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ({"apiVersion": "apps/v1/namespaces/victim", "kind": "Deployment", "name": "x"}, ["apiVersion"]),
        ({"apiVersion": "../api/v1", "kind": "Deployment", "name": "x"}, ["apiVersion"]),
        ({"apiVersion": "apps/v1", "kind": "Deployment/../../secrets", "name": "x"}, ["kind"]),
        ({"apiVersion": "apps/v1", "kind": "deployments", "name": "x"}, ["kind"]),
    ],
)
def test_target_group_version_and_kind_are_checked(accounts, target, words):
    _, owner = accounts
    _refused(owner.create(_qc(scaleTargetRef=target)), "spec.scaleTargetRef", *words)


def test_tenant_may_not_name_a_secret_it_cannot_read(accounts, namespace):
    tenant, owner = accounts
    for where in ("passwordSecretRef", "usernameSecretRef"):
        res = tenant.create(_qc(redis={"url": "redis://evil.example:6379", where: _secret("db")}))
        _refused(res, f"you may not get Secret db in namespace {namespace}", f"spec.redis.{where}")
    tls = {"enabled": True, "caSecretRef": {"name": "db", "key": "ca.crt"}}
    _refused(
        tenant.create(_qc(redis={"url": "redis://evil.example:6379", "tls": tls})),
        "you may not get Secret db",
        "spec.redis.tls.caSecretRef",
    )
    sentinel = {"masterName": "m", "sentinels": ["evil.example:26379"], "passwordSecretRef": _secret("db")}
    _refused(
        tenant.create(_qc(redis={"sentinel": sentinel})),
        "you may not get Secret db",
        "spec.redis.sentinel.passwordSecretRef",
    )
    assert owner.create(_qc("qc-sentinel", redis={"sentinel": sentinel})).returncode == 0
    # a Secret that does not exist is no different: the check is on the right, not on existence
    _refused(
        tenant.create(_qc(redis={"url": "redis://r:6379", "passwordSecretRef": _secret("nothere")})),
        "you may not get Secret nothere",
    )
    assert (
        owner.create(_qc(redis={"url": "redis://r:6379", "passwordSecretRef": _secret("db")})).returncode == 0
    )


def test_tenant_may_not_scale_a_workload_it_cannot_scale(accounts, namespace):
    tenant, owner = accounts
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "important"}
    _refused(
        tenant.create(_qc(scaleTargetRef=target)),
        f"you may not scale Deployment important in namespace {namespace}",
        "deployments/scale",
    )
    # other kinds, a CRD's plural included, are checked the same way
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "important"}
    _refused(tenant.create(_qc("qc2", scaleTargetRef=sts)), "statefulsets/scale")
    custom = {"apiVersion": "example.com/v1", "kind": "Worker", "name": "w"}
    _refused(tenant.create(_qc("qc3", scaleTargetRef=custom)), "workers/scale in API group example.com")
    # its own Deployment it may scale; the owner may scale any
    assert tenant.create(_qc("mine")).returncode == 0
    assert owner.create(_qc("theirs", scaleTargetRef=target)).returncode == 0


def test_tenant_may_not_have_the_operator_run_pods_for_it(accounts, namespace):
    tenant, owner = accounts
    escalate = {
        "image": "tide-worker:dev",
        "handler": "app:handle",
        "podTemplate": {
            "spec": {
                "hostPID": True,
                "hostNetwork": True,
                "serviceAccountName": "owner",
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                "containers": [{"name": "worker", "securityContext": {"privileged": True}}],
            }
        },
    }
    _refused(
        tenant.create(_qc("w", worker=escalate)),
        f"you may not create and patch Deployment w-worker in namespace {namespace}",
        "spec.worker",
    )
    # a plain worker section too: the Deployment is the operator's power, not the tenant's
    plain = {"image": "tide-worker:dev", "handler": "app:handle"}
    _refused(tenant.create(_qc("w", worker=plain)), "you may not create and patch Deployment")
    # who may create Deployments gets what they could have made themselves
    assert owner.create(_qc("w", worker=plain)).returncode == 0


def test_an_update_is_checked_like_a_create(accounts):
    tenant, owner = accounts
    assert tenant.create(_qc("mine")).returncode == 0
    res = tenant.patch("mine", {"spec": {"redis": {"passwordSecretRef": _secret("db")}}})
    _refused(res, "you may not get Secret db")
    res = tenant.patch("mine", {"spec": {"scaleTargetRef": {"name": "important"}}})
    _refused(res, "you may not scale Deployment important")
    # a change that asks for nothing new passes; so does the owner's
    assert tenant.patch("mine", {"spec": {"scaling": {"maxReplicas": 3}}}).returncode == 0
    assert owner.patch("mine", {"spec": {"scaleTargetRef": {"name": "important"}}}).returncode == 0
    # once the owner pointed it at "important", the tenant may not even touch the spec
    _refused(tenant.patch("mine", {"spec": {"scaling": {"maxReplicas": 4}}}), "you may not scale")


@pytest.mark.parametrize(
    "url", ["redis://:hunter2@redis.data:6379/0", "redis://admin:hunter2@r:1", "rediss://u@r:6379"]
)
def test_a_password_in_the_url_is_refused_and_never_echoed(accounts, url):
    _, owner = accounts
    res = owner.create(_qc(redis={"url": url}))
    _refused(res, "must not carry credentials", "passwordSecretRef")
    assert "hunter2" not in res.stderr


@pytest.mark.parametrize("url", ["redis://r:99999", "redis://r:0/0", "redis://:6379"])
def test_a_url_without_a_usable_host_and_port_is_refused(accounts, url):
    _, owner = accounts
    _refused(owner.create(_qc(redis={"url": url})), "port from 1 to 65535")


@pytest.mark.parametrize(
    ("scaling", "field"),
    [
        ({"maxReplicas": 2**31}, "maxReplicas"),
        ({"minReplicas": 2**31, "maxReplicas": 2**31}, "minReplicas"),
        ({"fallback": {"replicas": 2**40}}, "fallback.replicas"),
        ({"scaleUp": {"maxStepPods": 2**31}}, "maxStepPods"),
    ],
)
def test_replica_counts_fit_in_int32(accounts, scaling, field):
    _, owner = accounts
    _refused(owner.create(_qc(scaling=scaling)), field, "less than or equal to 2147483647")


def test_a_worker_name_must_fit_its_deployment_and_labels(accounts):
    _, owner = accounts
    plain = {"image": "tide-worker:dev", "handler": "app:handle"}
    _refused(owner.create(_qc("a" * 57, worker=plain)), "at most 56 characters")
    assert owner.create(_qc("a" * 56, worker=plain)).returncode == 0


def test_pod_template_metadata_must_be_an_object(accounts):
    _, owner = accounts
    worker = {"image": "tide-worker:dev", "handler": "app:handle", "podTemplate": {"metadata": "x"}}
    _refused(owner.create(_qc("w", worker=worker)), "spec.worker.podTemplate.metadata")


# --- the operator's own layers: nothing smuggled reaches a request, whatever the schema let through ------


@pytest.mark.parametrize("name", ESCAPES)
def test_spec_parsing_refuses_what_the_schema_refuses(name):
    base = _qc()["spec"]
    for path in (("redis", "passwordSecretRef"), ("scaleTargetRef",)):
        spec = copy.deepcopy(base)
        node = spec[path[0]]
        if len(path) == 2:
            node[path[1]] = _secret(name)
        else:
            node["name"] = name
        with pytest.raises(SpecError, match="not a Kubernetes object name"):
            parse_spec(spec)


@pytest.mark.parametrize("name", [n for n in ESCAPES if n not in ("DB", "a" * 254)])  # these stay in place
def test_api_paths_keep_every_name_in_its_segment(name):
    with pytest.raises(ValueError, match="refusing an API path segment"):
        api_path("api", "v1", "namespaces", "tenant", "secrets", name)


def test_api_paths_of_valid_names():
    assert api_path("apis", "apps", "v1", "namespaces", "ns", "deployments", "a.b-c", "scale") == (
        "/apis/apps/v1/namespaces/ns/deployments/a.b-c/scale"
    )
