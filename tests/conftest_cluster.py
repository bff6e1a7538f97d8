"""pytest fixtures for the local Kubernetes control plane (``hack/tide_local``).

Load with ``pytest_plugins = ["tests.conftest_cluster"]``. Fixtures:

- ``cluster`` (session): starts the cluster, or reuses a running one; a :class:`LocalCluster` with
  ``kubeconfig``, ``server``, ``kubectl``, ``api_client()`` (a new admin ``kubernetes.client.ApiClient``)
  and ``run_kubectl(*args)``. A cluster this session started is stopped when the last session using it
  ends (keep it with ``TIDE_KEEP_CLUSTER=1``); one started by ``make cluster-up`` is left running.
- ``k8s`` : an admin ``kubernetes.client.ApiClient`` for one test, closed afterwards.
- ``namespace``: a fresh namespace per test (name returned), deleted afterwards with its pods force-deleted.
- ``node_agent``: a factory ``node_agent(selector, namespace=<the test's>, node_name=None, ready_after=0.2)``
  that starts ``python -m tide_local.nodeagent`` and returns a :class:`NodeAgent`; every agent is stopped
  at teardown (SIGTERM, which terminates its pods' processes) before the namespace goes.
- ``sa_kubeconfig``: ``sa_kubeconfig(namespace, name) -> Path``, a kubeconfig for that ServiceAccount
  (created if missing) issued through the TokenRequest API.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tide_local import cluster as local_cluster
from tide_local.cleanup import delete_namespace
from tide_local.kubeconfig import service_account_kubeconfig
from tide_local.nodeagent import die_with_parent
from tide_local.paths import CLUSTER_DIR


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane (if needed) before any test runs, so a slow first build is not charged to
    one test's timeout; its progress is shown even with output capture on."""
    if not any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from tide_local import build

    capman = session.config.pluginmanager.getplugin("capturemanager")
    context = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with context:
        build.ensure_binaries()


@dataclass
class LocalCluster:
    info: local_cluster.ClusterInfo

    @property
    def kubeconfig(self) -> Path:
        return self.info.kubeconfig

    @property
    def server(self) -> str:
        return self.info.server

    @property
    def kubectl(self) -> Path:
        return self.info.kubectl

    @property
    def ca_file(self) -> Path:
        return self.info.ca_file

    def api_client(self) -> Any:
        """A new admin ``kubernetes.client.ApiClient``; close it when done."""
        return self.info.api_client()

    def run_kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.info.run_kubectl(*args, check=check)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    info = local_cluster.up(session=os.getpid())
    try:
        yield LocalCluster(info)
    finally:
        local_cluster.release(info.session)


@pytest.fixture
def k8s(cluster: LocalCluster) -> Iterator[Any]:
    api_client = cluster.api_client()
    try:
        yield api_client
    finally:
        api_client.close()


def _namespace_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = _namespace_name(request)
    api_client = cluster.api_client()
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"tide.dev/test": "true"}))
        )
        # Pods are refused until the serviceaccount controller has created the namespace's `default`.
        deadline = time.monotonic() + 30
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield name
    finally:
        try:
            # kopf's finalizers outlive a stopped operator: drop them, or the namespace never goes
            delete_namespace(api_client, name)
            # No kubelet finalizes pods whose node agent has stopped: force-delete them so the namespace
            # controller can finish.
            for pod in core.list_namespaced_pod(name).items:
                core.delete_namespaced_pod(pod.metadata.name, name, grace_period_seconds=0)
        except Exception as exc:  # teardown must not mask the test's own result
            print(f"namespace {name} cleanup: {exc}", file=sys.stderr)
        finally:
            api_client.close()


@dataclass
class NodeAgent:
    node_name: str
    selector: str
    namespace: str | None
    log_path: Path
    proc: subprocess.Popen[bytes]
    _log_file: Any = field(repr=False, default=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


NodeAgentFactory = Callable[..., NodeAgent]


@pytest.fixture
def node_agent(cluster: LocalCluster, namespace: str) -> Iterator[NodeAgentFactory]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    agents: list[NodeAgent] = []

    def start(
        selector: str,
        namespace: str | None = namespace,
        node_name: str | None = None,
        ready_after: float = 0.2,
        extra_args: tuple[str, ...] = (),
    ) -> NodeAgent:
        node = node_name or f"tide-test-{uuid.uuid4().hex[:8]}"
        log_path = CLUSTER_DIR / "logs" / f"nodeagent-{node}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        argv = [
            sys.executable,
            "-m",
            "tide_local.nodeagent",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--node-name",
            node,
            "--selector",
            selector,
            "--ready-after",
            str(ready_after),
            "--shutdown-grace",
            "5",
            "--delete-node-on-exit",
            *(["--namespace", namespace] if namespace else []),
            *extra_args,
        ]
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # no stray agent if pytest itself is killed
        )
        agent = NodeAgent(node, selector, namespace, log_path, proc, log_file)
        agents.append(agent)
        api_client = cluster.api_client()
        try:
            core = client.CoreV1Api(api_client)
            deadline = time.monotonic() + 30
            while True:
                if not agent.alive():
                    raise RuntimeError(f"node agent exited: {agent.log()[-2000:]}")
                try:
                    core.read_node(node)
                    break
                except ApiException:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {node} not registered: {agent.log()[-2000:]}") from None
                    time.sleep(0.1)
        finally:
            api_client.close()
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def sa_kubeconfig(cluster: LocalCluster) -> Callable[[str, str], Path]:
    def issue(namespace: str, name: str) -> Path:
        return service_account_kubeconfig(namespace, name, admin_kubeconfig=cluster.kubeconfig)

    return issue
