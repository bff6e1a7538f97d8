"""The Helm chart: lint, schema, secure defaults, one source for CRDs and RBAC, and a real install."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from tide_local.helmbin import ensure_helm
from tide_local.redisproc import free_port
from tide_worker.keys import QueueKeys

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tide"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def render(*sets: str, namespace: str = "tide-system") -> list[dict[str, Any]]:
    args = ["template", "t", str(CHART), "-n", namespace]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean() -> None:
    res = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in res.stdout
    assert "[WARNING]" not in res.stdout and "[ERROR]" not in res.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("rbac.scope=everywhere", "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("securityContext.privileged=true", "at '/securityContext/privileged': value must be false"),
        ("ports.metrics=70000", "at '/ports/metrics': maximum: got 70,000, want 65,535"),
        ("metrics.serviceMonitor.interval=soon", "at '/metrics/serviceMonitor/interval'"),
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
        ("sharding.shards=0", "at '/sharding/shards': minimum: got 0, want 1"),
        (
            "operator.keyspaceEvents=on",
            "at '/operator/keyspaceEvents': value must be one of 'off', 'use', 'configure'",
        ),
    ],
)
def test_invalid_values_fail_with_the_schema_message(values: str, message: str) -> None:
    res = helm("template", "t", str(CHART), "--set", values, check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_secure_defaults() -> None:
    docs = render()
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # no Secret values in the chart: credentials are referenced by QueueConsumers, not stored here
    assert not by_kind(docs, "Secret")


def test_keyspace_events_setting_reaches_the_operator() -> None:
    def env(*sets: str) -> dict[str, Any]:
        (dep,) = by_kind(render(*sets), "Deployment")
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env()["TIDE_OPERATOR_KEYSPACE_EVENTS"] == "use"  # the default never changes a server's config
    assert env("operator.keyspaceEvents=configure")["TIDE_OPERATOR_KEYSPACE_EVENTS"] == "configure"


def test_admission_policy_in_chart_is_the_one_in_crds() -> None:
    policy = (ROOT / "crds" / "admission-policy.yaml").read_text()
    assert (CHART / "files" / "admission-policy.yaml").read_text() == policy, "run `make chart-sync`"
    docs = render()
    rendered = by_kind(docs, "ValidatingAdmissionPolicy") + by_kind(docs, "ValidatingAdmissionPolicyBinding")
    # named after the release, so it installs beside a copy applied from crds/
    named = policy.replace(" queueconsumers.tide.dev", " t-tide.queueconsumers.tide.dev")
    assert rendered == [d for d in yaml.safe_load_all(named) if d]
    assert (
        rendered[1]["spec"]["policyName"]
        == rendered[0]["metadata"]["name"]
        == "t-tide.queueconsumers.tide.dev"
    )
    assert not by_kind(render("admissionPolicy.enabled=false"), "ValidatingAdmissionPolicy")


def test_namespaces_narrow_the_operators_grant() -> None:
    docs = render("rbac.scope=namespaced", "rbac.namespaces={team-a,team-b}", "rbac.secretNames={redis}")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    for role in roles:
        (secrets,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
        assert secrets == {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["redis"],
            "verbs": ["get"],
        }
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    res = helm("template", "t", str(CHART), "--set", "rbac.namespaces={team-a}", check=False)
    assert res.returncode != 0 and "set rbac.scope=namespaced with it" in res.stderr


def test_optional_parts_follow_values() -> None:
    docs = render()
    assert not by_kind(docs, "ServiceMonitor")
    assert by_kind(docs, "ConfigMap")[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    docs = render("metrics.serviceMonitor.enabled=true", "dashboard.enabled=false")
    assert by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] == "metrics"
    assert not by_kind(docs, "ConfigMap")
    docs = render("replicaCount=2", "sharding.enabled=false")
    assert by_kind(docs, "ClusterKopfPeering")
    assert (
        "--peering=t-tide"
        in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert not [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "t-tide-shards"]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_several_replicas_are_sharded_with_leases_in_the_release_namespace_only(scope: str) -> None:
    docs = render("replicaCount=3", "sharding.shards=4", f"rbac.scope={scope}", namespace="ops")
    container = _container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TIDE_SHARDS"] == "4" and env["TIDE_SHARD_LEASE_PREFIX"] == "t-tide"
    assert env["TIDE_PEERING_LIFETIME"] == "15"
    # every replica active: no kopf peering (it would pause all but one), no peering object
    assert "--standalone" in container["args"] and not any(
        a.startswith("--peering") for a in container["args"]
    )
    assert not by_kind(docs, "ClusterKopfPeering") and not by_kind(docs, "KopfPeering")
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "t-tide-shards"]
    assert role["metadata"]["namespace"] == "ops"
    # the rules of crds/rbac/role-shard-leases.yaml, update narrowed to this release's 4 + 4 lease names
    expected = _rules(ROOT / "crds" / "rbac" / "role-shard-leases.yaml", "Role")
    names = [f"t-tide-{kind}-{i}" for i in range(4) for kind in ("shard", "member")]
    expected[1] = {**expected[1], "resourceNames": names}
    assert role["rules"] == expected
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "t-tide-shards"]
    assert binding["metadata"]["namespace"] == "ops" and binding["subjects"][0]["name"] == "t-tide"
    # nothing cluster-wide about leases
    for cluster_role in by_kind(docs, "ClusterRole"):
        assert all("leases" not in rule["resources"] for rule in cluster_role["rules"])
    # one replica: standalone, no leases
    single = render(namespace="ops")
    assert "TIDE_SHARDS" not in {e["name"] for e in _container(single)["env"]}
    assert not [r for r in by_kind(single, "Role") if r["metadata"]["name"] == "t-tide-shards"]


def test_crds_in_chart_and_crds_dir_are_one_source() -> None:
    chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    repo_crds = sorted(
        p.name for p in (ROOT / "crds").glob("*.yaml") if "CustomResourceDefinition" in p.read_text()
    )
    assert chart_crds == repo_crds, "run `make chart-sync` to copy crds/ into the chart"
    for name in chart_crds:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/tide/crds/{name} drifted from crds/{name}: run `make chart-sync`"
        )


def _rules(path: Path, kind: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    rules: list[dict[str, Any]] = next(d for d in docs if d["kind"] == kind)["rules"]
    return rules


@pytest.mark.parametrize(
    ("scope", "kind", "source"),
    [("cluster", "ClusterRole", "clusterrole.yaml"), ("namespaced", "Role", "role-namespaced.yaml")],
)
def test_chart_rbac_matches_crds_rbac(scope: str, kind: str, source: str) -> None:
    (role,) = by_kind(render(f"rbac.scope={scope}"), kind)
    assert role["rules"] == _rules(ROOT / "crds" / "rbac" / source, kind)


def test_namespaced_scope_watches_only_the_release_namespace() -> None:
    docs = render("rbac.scope=namespaced", namespace="team-a")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


@pytest.mark.cluster
@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_helm_install_runs_an_operator_that_scales(
    cluster: Any, namespace: str, node_agent: Any, k8s: Any, redis_url: str, scope: str
) -> None:
    """helm install on the local control plane; the operator pod (a local process run by the node agent
    with a token of the chart's ServiceAccount) scales a Deployment from a Redis backlog."""
    from kubernetes import client

    release = f"tide-{uuid.uuid4().hex[:6]}"
    env = ["--kubeconfig", str(cluster.kubeconfig)]
    helm(
        *env, "install", release, str(CHART), "-n", namespace, "--wait=false",
        "--set", f"ports.health={free_port()}", "--set", f"ports.metrics={free_port()}",
        "--set", f"rbac.scope={scope}",
    )  # fmt: skip
    try:
        status = helm(*env, "status", release, "-n", namespace).stdout
        assert "STATUS: deployed" in status
        node_agent(f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")
        apps = client.AppsV1Api(k8s)
        custom = client.CustomObjectsApi(k8s)
        target = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "target"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "target"}},
                "template": {
                    "metadata": {"labels": {"app": "target"}},
                    "spec": {"containers": [{"name": "c", "image": "none", "command": ["sleep", "60"]}]},
                },
            },
        }
        apps.create_namespaced_deployment(namespace, target)
        queue = f"chart:{release}"
        qc = {
            "apiVersion": "tide.dev/v1alpha1",
            "kind": "QueueConsumer",
            "metadata": {"name": "orders"},
            "spec": {
                "redis": {"url": redis_url},
                "source": {"list": {"key": queue}},
                "scaling": {"minReplicas": 0, "maxReplicas": 5, "targetBacklogPerReplica": 10},
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "target"},
            },
        }
        custom.create_namespaced_custom_object("tide.dev", "v1alpha1", namespace, "queueconsumers", qc)
        with redis.Redis.from_url(redis_url) as r:
            r.lpush(QueueKeys(queue).ready, *[f"m{i}" for i in range(30)])
        deadline = time.monotonic() + 30
        replicas = 0
        while time.monotonic() < deadline:
            replicas = int(apps.read_namespaced_deployment_scale("target", namespace).spec.replicas or 0)
            if replicas == 3:
                break
            time.sleep(0.2)
        assert replicas == 3, "the chart's operator did not scale the target to ceil(30/10)"
        # the operator pod reported Ready through the node agent
        pods = client.CoreV1Api(k8s).list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={release}"
        )
        assert [p.status.phase for p in pods.items] == ["Running"]
    finally:
        helm(*env, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
