"""The operator image as the chart runs it: non-root, read-only root filesystem with an emptyDir-like
``/tmp``, the chart's command, against the local control plane with the namespaced Role's rights."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from tide_local.redisproc import RedisServer, free_port

from tests import waiting
from tests.containers.conftest import Container, Images
from tests.operator.operator_harness import WORKER_ENV, Api, deployment, operator_rbac, qc

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


def test_operator_container_scales_and_answers_liveness(
    images: Images,
    crds: Any,
    namespace: str,
    k8s: Any,
    sa_kubeconfig: Any,
    redis_server: RedisServer,
    tmp_path: Path,
    containers: list[Container],
) -> None:
    url = redis_server.url
    r = redis.Redis.from_url(url)
    r.delete("jobs")
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {**WORKER_ENV, "TIDE_REDIS_URL": url, "TIDE_QUEUE": "jobs"}))
    api.create_qc(
        qc("jobs", url, {"list": {"key": "jobs"}}, {"maxReplicas": 4, "targetBacklogPerReplica": 10})
    )
    with operator_rbac(crds, namespace, sa_kubeconfig, namespaced=True) as issued:
        # the ServiceAccount's kubeconfig, readable by uid 10001 (the issued file is the host user's, 0600)
        kubeconfig = tmp_path / "kubeconfig"
        shutil.copyfile(issued, kubeconfig)
        kubeconfig.chmod(0o644)
        health, metrics = free_port(), free_port()
        # --network host: the API server and Redis listen on the host's loopback
        operator = Container(
            images.operator,
            "--network", "host", "--read-only", "--tmpfs", "/tmp:size=64m",
            "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-v", f"{kubeconfig}:/var/run/tide/kubeconfig:ro", "-e", "KUBECONFIG=/var/run/tide/kubeconfig",
            "-e", f"TIDE_OPERATOR_METRICS_PORT={metrics}", "-e", "TIDE_OPERATOR_SCOPE=namespaced",
            # the chart's command and arguments for one namespaced replica
            run=("kopf", "run", "-m", "tide_operator", f"--namespace={namespace}",
                 f"--liveness=http://0.0.0.0:{health}/healthz", "--standalone"),
        )  # fmt: skip
        containers.append(operator)
        try:
            waiting.wait_until(lambda: _healthz(health) == 200, timeout=90, interval=0.2, what="/healthz 200")
            waiting.wait_until(lambda: api.condition("jobs", "Ready") == "True", timeout=60, what="Ready")
            r.lpush("jobs", *[f"m{i}" for i in range(40)])
            waiting.wait_until(lambda: api.replicas() == 4, timeout=30, what="scaled to 4 from the container")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{operator.logs()}") from None
        code, seconds = operator.stop(grace=30)
        assert code == 0 and seconds < 25, operator.logs()
