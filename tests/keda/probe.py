"""Run by test_keda.py in a cluster directory of its own (TIDE_CLUSTER_DIR): start the local stack and KEDA,
give a ScaledObject a real Redis list, and print what the external metrics API and the HPA say, as JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from tide_local import cluster, keda
from tide_local.kube import Kube, KubeError
from tide_local.redisproc import RedisServer

NS = "keda-probe"
LIST = "probe:list"


def wait(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except KubeError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    info = cluster.up(verbose=False, session=os.getpid())
    server = RedisServer()
    running = None
    try:
        server.start()
        running = keda.start(info, info.directory / "keda")
        kube = Kube(info.kubeconfig)
        kube.post("/api/v1/namespaces", {"metadata": {"name": NS}})
        labels = {"app": "probe"}
        kube.post(f"/apis/apps/v1/namespaces/{NS}/deployments", {
            "metadata": {"name": "probe"},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "none", "command": ["sleep"]}]}}},
        })  # fmt: skip
        r = server.client()
        r.rpush(LIST, *range(25))
        host_port = server.url.split("//", 1)[1].split("/", 1)[0]
        kube.post(f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects", {
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "probe"},
            "spec": {"scaleTargetRef": {"name": "probe"}, "pollingInterval": 1, "minReplicaCount": 0,
                     "maxReplicaCount": 10,
                     "triggers": [{"type": "redis", "metadata": {"address": host_port, "listName": LIST,
                                                                 "listLength": "5"}}]},
        })  # fmt: skip
        so = f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/probe"
        names = wait(
            "the ScaledObject's metric name",
            lambda: kube.get(so).get("status", {}).get("externalMetricNames"),
        )
        metric_path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/{names[0]}"

        def metric() -> str | None:
            items = kube.get(metric_path, labelSelector="scaledobject.keda.sh/name=probe").get("items")
            return str(items[0]["value"]) if items else None

        value = wait("the external metric", metric)
        hpa = wait(
            "KEDA's HPA",
            lambda: kube.get(f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/keda-hpa-probe"),
        )
        replicas = wait(
            "a scale-up",
            lambda: kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/probe")["spec"].get("replicas"),
        )
        print("PROBE " + json.dumps({"metric": names[0], "value": value, "hpa_target": hpa["spec"]["scaleTargetRef"]["name"],
                          "replicas": replicas}))  # fmt: skip
    finally:
        if running is not None:
            running.stop()
        server.cleanup()
        cluster.release(info.session, verbose=False)


if __name__ == "__main__":
    main()
