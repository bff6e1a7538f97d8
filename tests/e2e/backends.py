"""Two backends for the one end-to-end scenario.

``LocalBackend``: the local control plane (hack/tide_local), a real redis-server, the chart installed with
the pinned helm, and a node agent that runs the operator pod and the worker pods as local processes (the
operator with a token of the chart's ServiceAccount, so the chart's RBAC is what it has).

``KindBackend``: a kind cluster from kind-config.yaml, images built with Docker and loaded with
``kind load docker-image``, Redis deployed in the cluster, the chart installed with ``helm install``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tide_local.helmbin import ensure_helm
from tide_local.redisproc import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tide"
WORKER_SELECTOR = "app.kubernetes.io/name=tide-worker"


def _pods(api: Any, namespace: str, selector: str) -> list[Any]:
    from kubernetes import client

    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items)


class LocalBackend:
    name = "local"
    worker_image = "tide-worker:local"  # ignored by the node agent: pods run as local processes

    def __init__(self, namespace: str | None = None) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.namespace = namespace or f"tide-e2e-{suffix}"
        self.release = f"tide-{suffix}"  # cluster-scoped RBAC names must not collide across runs
        self.redis = RedisServer()
        self.agent: subprocess.Popen[bytes] | None = None
        self.kubeconfig: Path | None = None
        self.session: str | None = None
        self.redis_url = self.pod_redis_url = ""
        self._own_namespace = namespace is None

    def setup(self) -> None:
        from kubernetes import client
        from tide_local import cluster

        info = cluster.up(verbose=True, session=os.getpid())
        self.session = info.session
        self.kubeconfig = info.kubeconfig
        self.redis.start()
        self.redis_url = self.pod_redis_url = self.redis.url
        api = self.api_client()
        core = client.CoreV1Api(api)
        if self._own_namespace:
            core.create_namespace({"metadata": {"name": self.namespace}})
        deadline = time.monotonic() + 30  # pods need the namespace's default ServiceAccount
        while not any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(self.namespace).items
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the default ServiceAccount never appeared")
            time.sleep(0.1)
        api.close()
        self.helm("install", self.release, str(CHART), "-n", self.namespace,
                  "--set", f"ports.health={free_port()}", "--set", f"ports.metrics={free_port()}")  # fmt: skip
        log = ROOT / ".cache" / "cluster" / "logs" / f"nodeagent-{self.namespace}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "tide_local.nodeagent", "--kubeconfig", str(self.kubeconfig),
             "--node-name", f"node-{self.namespace}", "--namespace", self.namespace,
             "--selector", "app.kubernetes.io/name in (tide, tide-worker)", "--delete-node-on-exit"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_operator_running()

    def helm(self, *args: str) -> str:
        assert self.kubeconfig is not None
        res = subprocess.run([str(ensure_helm()), "--kubeconfig", str(self.kubeconfig), *args],
                             capture_output=True, text=True, timeout=180)  # fmt: skip
        if res.returncode:
            raise RuntimeError(f"helm {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def worker_env(self) -> dict[str, str]:
        # every local pod shares the host's ports; the handler module comes from the repository
        return {"TIDE_METRICS_PORT": "0", "PYTHONPATH": str(ROOT)}

    def _wait_operator_running(self, timeout: float = 60) -> None:
        api = self.api_client()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                pods = _pods(api, self.namespace, f"app.kubernetes.io/instance={self.release}")
                if any(p.status.phase == "Running" and not p.metadata.deletion_timestamp for p in pods):
                    return
                time.sleep(0.2)
        finally:
            api.close()
        raise RuntimeError("the operator pod did not start")

    def kill_random_worker(self, rng: random.Random) -> str | None:
        """SIGKILL one worker pod's process (the node agent restarts it, as a kubelet restarts a container)."""
        api = self.api_client()
        try:
            candidates = []
            for pod in _pods(api, self.namespace, WORKER_SELECTOR):
                for cs in pod.status.container_statuses or []:
                    if cs.ready and (cs.container_id or "").startswith("tide-local://"):
                        candidates.append(
                            (pod.metadata.name, int(cs.container_id.removeprefix("tide-local://")))
                        )
        finally:
            api.close()
        if not candidates:
            return None
        name, pid = rng.choice(candidates)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return name

    def restart_operator(self) -> None:
        from kubernetes import client

        api = self.api_client()
        try:
            for pod in _pods(api, self.namespace, f"app.kubernetes.io/instance={self.release}"):
                client.CoreV1Api(api).delete_namespaced_pod(pod.metadata.name, self.namespace)
        finally:
            api.close()

    def teardown(self) -> None:
        from kubernetes import client
        from tide_local import cluster

        with contextlib.suppress(Exception):
            self.helm("uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "60s")
        api = self.api_client()
        with contextlib.suppress(Exception):
            custom = client.CustomObjectsApi(api)
            for qc in custom.list_namespaced_custom_object(
                "tide.dev", "v1alpha1", self.namespace, "queueconsumers"
            )["items"]:
                # the operator is gone: drop its finalizer so the namespace can go
                custom.patch_namespaced_custom_object("tide.dev", "v1alpha1", self.namespace, "queueconsumers",
                                                      qc["metadata"]["name"], {"metadata": {"finalizers": None}})  # fmt: skip
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)  # stops its pods' processes (SIGTERM, then SIGKILL)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        if self._own_namespace:
            with contextlib.suppress(Exception):
                client.CoreV1Api(api).delete_namespace(self.namespace)
        api.close()
        self.redis.cleanup()
        with contextlib.suppress(Exception):
            cluster.release(self.session)


class KindBackend:
    """The same scenario on kind, where Docker exists."""

    name = "kind"
    cluster_name = "tide-e2e"
    worker_image = "tide-e2e-worker:dev"
    operator_image = "tide-operator:dev"
    redis_image = "tide-e2e-redis:dev"  # tests/e2e/redis.Dockerfile: Debian's redis-server

    def __init__(self) -> None:
        self.namespace = "tide-e2e"
        self.kubeconfig = ROOT / ".cache" / "kind" / "kubeconfig"
        self.redis_url = ""
        self.pod_redis_url = f"redis://redis.{self.namespace}.svc:6379/0"
        self._port_forward: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run on kind (empty when it can)."""
        lacks = [tool for tool in ("docker", "kind") if shutil.which(tool) is None]
        if "docker" not in lacks:
            ok = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
            if not ok:
                lacks.append("a running Docker engine (`docker info` fails)")
        return lacks

    def _run(self, *cmd: str, input: str | None = None) -> str:
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=900)
        if res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
        return res.stdout

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self._run("kubectl", "--kubeconfig", str(self.kubeconfig), *args, input=input)

    def setup(self) -> None:
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        clusters = self._run("kind", "get", "clusters").split()
        if self.cluster_name not in clusters:
            # TIDE_KIND_NODE_IMAGE: a node image made here (hack/images/kind/node.sh) where kindest/node
            # cannot be pulled; unset, kind uses its own
            node_image = os.environ.get("TIDE_KIND_NODE_IMAGE")
            self._run("kind", "create", "cluster", "--name", self.cluster_name,
                      "--config", str(ROOT / "kind-config.yaml"), "--kubeconfig", str(self.kubeconfig),
                      *(["--image", node_image] if node_image else []))  # fmt: skip
        # tide-worker:dev and tide-operator:dev, exactly as `make images` builds them (cached)
        self._run(str(ROOT / "hack" / "images" / "build.sh"))
        with (ROOT / "tests" / "e2e" / "redis.Dockerfile").open() as dockerfile:
            self._run("docker", "build", "-q", "-t", self.redis_image, "-", input=dockerfile.read())
        self._run(
            "docker",
            "build",
            "-t",
            self.worker_image,
            "-f",
            str(ROOT / "tests" / "e2e" / "Dockerfile"),
            str(ROOT),
        )
        for image in (self.operator_image, self.worker_image, self.redis_image):
            self._run("kind", "load", "docker-image", image, "--name", self.cluster_name)
        self.kubectl("create", "namespace", self.namespace)
        self.kubectl("apply", "-n", self.namespace, "-f", str(ROOT / "tests" / "e2e" / "kind-redis.yaml"))
        self.kubectl("-n", self.namespace, "rollout", "status", "deploy/redis", "--timeout=180s")
        port = free_port()
        self._port_forward = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, "port-forward",
             "svc/redis", f"{port}:6379"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(2)
        self._run(str(ensure_helm()), "--kubeconfig", str(self.kubeconfig), "install", "tide", str(CHART),
                  "-n", self.namespace, "--set", "image.repository=tide-operator", "--set", "image.tag=dev",
                  "--wait", "--timeout", "180s")  # fmt: skip
        # the chart's own test: a pod from the operator image reaches the operator's /healthz by Service DNS
        self._run(str(ensure_helm()), "--kubeconfig", str(self.kubeconfig), "test", "tide", "-n", self.namespace,
                  "--timeout", "120s")  # fmt: skip

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def worker_env(self) -> dict[str, str]:
        return {}

    def kill_random_worker(self, rng: random.Random) -> str | None:
        """SIGKILL one worker process from its kind node (a container's PID 1 cannot be killed from inside);
        the kubelet restarts the container as it would after a crash."""
        victims = []
        for node in self._run("kind", "get", "nodes", "--name", self.cluster_name).split():
            res = subprocess.run(
                ["docker", "exec", node, "pgrep", "-f", "tide worker"], capture_output=True, text=True
            )
            victims += [(node, pid) for pid in res.stdout.split()]
        if not victims:
            return None
        node, pid = rng.choice(victims)
        subprocess.run(["docker", "exec", node, "kill", "-9", pid], capture_output=True)
        return f"{node}:{pid}"

    def restart_operator(self) -> None:
        self.kubectl("-n", self.namespace, "delete", "pod", "-l", "app.kubernetes.io/instance=tide")

    def teardown(self) -> None:
        if self._port_forward is not None:
            self._port_forward.terminate()
        if os.environ.get("TIDE_KEEP_KIND") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", self.cluster_name], capture_output=True)
