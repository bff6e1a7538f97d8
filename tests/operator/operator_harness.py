"""Run the operator as a subprocess under its own ServiceAccount, bound to the rules in crds/rbac/."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from tide_local.redisproc import free_port

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
    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(kubeconfig),
            TIDE_OPERATOR_METRICS_PORT=str(self.metrics_port),
            # operator/ first: the editable install may map tide_operator as a namespace package
            PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
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
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def run_operator(
    cluster: Any,
    namespace: str,
    sa_kubeconfig: Callable[[str, str], Path],
    tmp_path: Path,
    namespaced: bool = False,
) -> Iterator[Operator]:
    binding = None
    if namespaced:
        bind_namespaced_role(cluster, namespace)
    else:
        binding = bind_cluster_role(cluster, namespace)
    op = Operator(sa_kubeconfig(namespace, "tide-operator"), namespace, tmp_path / "operator.log")
    try:
        yield op
    finally:
        op.stop()
        if binding:
            kubectl(cluster, "delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
