"""Run the operator as a subprocess under its own ServiceAccount, bound to the rules in crds/rbac/."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from tide_local.redisproc import free_port

from tests import waiting

ROOT = Path(__file__).resolve().parents[2]
KOPF = Path(sys.executable).parent / "kopf"


def kubectl(cluster: Any, *args: str, input: str | None = None, check: bool = True) -> str:
    res = subprocess.run(
        [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
    )
    if check and res.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr}")
    return res.stdout


def bind_cluster_role(cluster: Any, namespace: str) -> str:
    """Apply crds/rbac/clusterrole.yaml's ClusterRole and bind it to tide-operator in ``namespace``."""
    docs = list(yaml.safe_load_all((ROOT / "crds/rbac/clusterrole.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(role))
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    binding["metadata"]["name"] = f"tide-operator-{namespace}"
    binding["subjects"][0]["namespace"] = namespace
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(binding))
    return binding["metadata"]["name"]


def bind_namespaced_role(cluster: Any, namespace: str) -> None:
    text = (ROOT / "crds/rbac/role-namespaced.yaml").read_text().replace("NAMESPACE", namespace)
    kubectl(cluster, "apply", "-f", "-", input=text)


class Operator:
    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        environ = dict(os.environ)
        environ.update(
            KUBECONFIG=str(kubeconfig),
            TIDE_OPERATOR_METRICS_PORT=str(self.metrics_port),
            # operator/ first: the editable install may map tide_operator as a namespace package
            PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
            **(env or {}),
        )
        self.log_path = log_path
        self._log = log_path.open("wb")
        argv = [
            str(KOPF),
            "run",
            "-m",
            "tide_operator",
            "--namespace",
            namespace,
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            *(extra or ("--standalone",)),
        ]
        self.proc = subprocess.Popen(argv, env=environ, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no goodbye to the peering object."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()


@contextlib.contextmanager
def operator_rbac(
    cluster: Any, namespace: str, sa_kubeconfig: Callable[[str, str], Path], namespaced: bool = False
) -> Iterator[Path]:
    """Bind crds/rbac/ to the tide-operator ServiceAccount of ``namespace``; yields its kubeconfig."""
    binding = None
    if namespaced:
        bind_namespaced_role(cluster, namespace)
    else:
        binding = bind_cluster_role(cluster, namespace)
    try:
        yield sa_kubeconfig(namespace, "tide-operator")
    finally:
        if binding:
            kubectl(cluster, "delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)


@contextlib.contextmanager
def run_operator(
    cluster: Any,
    namespace: str,
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
    namespaced: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[Operator]:
    with operator_rbac(cluster, namespace, sa_kubeconfig, namespaced) as kubeconfig:
        op = Operator(kubeconfig, namespace, tmp_path / "operator.log", env=env)
        try:
            yield op
        finally:
            op.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    return waiting.wait_until(check, timeout, interval, what)


# --- objects and API helpers shared by the operator tests ---------------------------------------------


def deployment(name: str, env: dict[str, str]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "worker",
                            "image": "tide-worker:dev",
                            "command": ["tide", "worker"],
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ],
                },
            },
        },
    }


def qc(
    name: str,
    url: str,
    source: dict[str, Any],
    scaling: dict[str, Any],
    target: str = "w",
    **extra: Any,
) -> dict[str, Any]:
    """A QueueConsumer scaling the Deployment ``target`` (unless ``worker=`` is given)."""
    spec: dict[str, Any] = {"redis": {"url": url}, "source": source, "scaling": scaling}
    spec.update(extra)
    if "worker" not in spec:
        spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": name},
        "spec": spec,
    }


class Api:
    def __init__(self, k8s: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.apps = client.AppsV1Api(k8s)
        self.core = client.CoreV1Api(k8s)
        self.custom = client.CustomObjectsApi(k8s)

    def create_deployment(self, body: dict[str, Any]) -> None:
        self.apps.create_namespaced_deployment(self.ns, body)

    def replicas(self, name: str = "w") -> int:
        return int(self.apps.read_namespaced_deployment_scale(name, self.ns).spec.replicas or 0)

    def create_qc(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("tide.dev", "v1alpha1", self.ns, "queueconsumers", body)

    def delete_qc(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object("tide.dev", "v1alpha1", self.ns, "queueconsumers", name)

    def get_qc(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "tide.dev", "v1alpha1", self.ns, "queueconsumers", name
        )
        return obj

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        """type -> the whole condition (status, reason, message)."""
        return {c["type"]: c for c in self.get_qc(name).get("status", {}).get("conditions", [])}

    def condition(self, name: str, ctype: str) -> str | None:
        c = self.conditions(name).get(ctype)
        return None if c is None else str(c["status"])

    def events(self, reason: str, kind: str | None = None, about: str | None = None) -> list[str]:
        """Messages of the namespace's events with ``reason`` (and type ``kind``, about the object ``about``)."""
        return [
            e.message
            for e in self.core.list_namespaced_event(self.ns).items
            if e.reason == reason
            and (kind is None or e.type == kind)
            and (about is None or e.involved_object.name == about)
        ]

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(self.ns, {"metadata": {"name": name}, "stringData": data})


WORKER_ENV = {
    "TIDE_HANDLER": "tests.operator.slow_handler:handle",
    "TIDE_METRICS_PORT": "0",
    "TIDE_CONCURRENCY": "2",
}


def get_deployment(api: Api, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.apps.read_namespaced_deployment(name, api.ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
