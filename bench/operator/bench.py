"""Operator benchmarks on the local stack (control plane + real Redis); writes bench/results/operator.json.

1. burst -> /scale latency: one QueueConsumer on an idle list; LPUSH a burst, time until a watch on the
   target Deployment sees spec.replicas change; empty the list, wait for zero, repeat (50 bursts).
2. scale: N QueueConsumers (1,000 by default) each with its own Deployment, one operator; bursts land on
   100 lists at once; time until all 100 Deployments are scaled; operator RSS and CPU.

    python bench/operator/bench.py [--bursts 50] [--resources 1000] [--hot 100] [--interval 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from kubernetes import client, watch
from tide_local import cluster as local_cluster
from tide_local.redisproc import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
KOPF = Path(sys.executable).parent / "kopf"
CLK = os.sysconf("SC_CLK_TCK")


def kubectl(info: Any, *args: str, input: str | None = None) -> None:
    subprocess.run(
        [str(info.kubectl), "--kubeconfig", str(info.kubeconfig), *args],
        input=input,
        text=True,
        check=True,
        capture_output=True,
    )


def deployment(name: str) -> dict[str, Any]:
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
                "spec": {"containers": [{"name": "w", "image": "none", "command": ["true"]}]},
            },
        },
    }


def qc(name: str, url: str, interval: float) -> dict[str, Any]:
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": name},
        "spec": {
            "redis": {"url": url},
            "source": {"list": {"key": name}},
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "scaling": {
                "targetBacklogPerReplica": 50,
                "cooldownSeconds": 0,
                "pollingIntervalSeconds": interval,
                "scaleDown": {"stabilizationSeconds": 0},
            },
        },
    }


def start_operator(info: Any, ns: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        KUBECONFIG=str(info.kubeconfig),
        TIDE_OPERATOR_METRICS_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
    )
    return subprocess.Popen(
        [str(KOPF), "run", "-m", "tide_operator", "--standalone", "-n", ns, "--quiet"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return rss, cpu


class ScaleWatch:
    """Watches Deployments in a namespace; records when each one's spec.replicas last changed."""

    def __init__(self, api: client.AppsV1Api, ns: str) -> None:
        self.api, self.ns = api, ns
        self.replicas: dict[str, int] = {}
        self.changed: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while not self.stop:
            w = watch.Watch()
            for ev in w.stream(self.api.list_namespaced_deployment, self.ns, timeout_seconds=30):
                d = ev["object"]
                n = d.spec.replicas or 0
                with self.cond:
                    if self.replicas.get(d.metadata.name) != n:
                        self.replicas[d.metadata.name] = n
                        self.changed[d.metadata.name] = time.monotonic()
                        self.cond.notify_all()
                if self.stop:
                    w.stop()

    def wait(self, pred: Any, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)


def setup_ns(info: Any, core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def latency_bench(info: Any, api_client: Any, url: str, bursts: int, interval: float) -> dict[str, Any]:
    ns = f"bench-op-lat-{int(time.time())}"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    setup_ns(info, core, ns)
    apps.create_namespaced_deployment(ns, deployment("q"))
    custom.create_namespaced_custom_object(
        "tide.dev", "v1alpha1", ns, "queueconsumers", qc("q", url, interval)
    )
    sw = ScaleWatch(apps, ns)
    op = start_operator(info, ns, ROOT / ".cache" / "bench-operator-latency.log")
    r = redis.Redis.from_url(url)
    samples = []
    try:
        time.sleep(3)
        for _ in range(bursts):
            sw.wait(lambda: sw.replicas.get("q") == 0, 30)
            time.sleep(0.3 + (time.time() % 1) * 0.7)  # land at varied phases of the polling interval
            t0 = time.monotonic()
            r.lpush("q", *range(500))
            ok = sw.wait(lambda: sw.replicas.get("q") == 10, 30)
            if ok:
                samples.append(sw.changed["q"] - t0)
            r.delete("q")
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(20)
        sw.stop = True
        r.close()
        core.delete_namespace(ns)
    samples.sort()
    return {
        "bursts": len(samples),
        "polling_interval_s": interval,
        "p50_s": round(statistics.median(samples), 3),
        "p99_s": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
        "max_s": round(samples[-1], 3),
    }


def scale_bench(info: Any, api_client: Any, url: str, n: int, hot: int, interval: float) -> dict[str, Any]:
    ns = f"bench-op-scale-{int(time.time())}"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    setup_ns(info, core, ns)
    t = time.monotonic()
    names = [f"q{i:04d}" for i in range(n)]
    for name in names:
        apps.create_namespaced_deployment(ns, deployment(name))
        custom.create_namespaced_custom_object(
            "tide.dev", "v1alpha1", ns, "queueconsumers", qc(name, url, interval)
        )
    create_s = time.monotonic() - t
    sw = ScaleWatch(apps, ns)
    op = start_operator(info, ns, ROOT / ".cache" / "bench-operator-scale.log")
    r = redis.Redis.from_url(url)
    try:
        # all daemons up: every resource has a status
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object("tide.dev", "v1alpha1", ns, "queueconsumers")[
                "items"
            ]
            if sum(1 for i in items if i.get("status", {}).get("conditions")) >= n:
                break
            time.sleep(2)
        serving_s = time.monotonic() - t - create_s
        time.sleep(5)
        _rss0, cpu0 = proc_stats(op.pid)
        time.sleep(10)
        rss1, cpu1 = proc_stats(op.pid)
        idle_cpu = (cpu1 - cpu0) / 10
        hot_names = names[:: max(1, n // hot)][:hot]
        pipe = r.pipeline(transaction=False)
        t0 = time.monotonic()
        for name in hot_names:
            pipe.lpush(name, *range(500))
        pipe.execute()
        ok = sw.wait(lambda: all(sw.replicas.get(x) == 10 for x in hot_names), 120)
        all_scaled = max(sw.changed[x] for x in hot_names) - t0 if ok else None
        lat = sorted(sw.changed[x] - t0 for x in hot_names if sw.replicas.get(x) == 10)
        rss2, _cpu2 = proc_stats(op.pid)
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(30)
        sw.stop = True
        r.close()
        core.delete_namespace(ns)
    return {
        "resources": n,
        "hot": hot,
        "polling_interval_s": interval,
        "create_s": round(create_s, 1),
        "all_daemons_serving_after_s": round(serving_s, 1),
        "all_hot_scaled_within_s": None if all_scaled is None else round(all_scaled, 3),
        "hot_p50_s": round(statistics.median(lat), 3) if lat else None,
        "operator_rss_mb": round(max(rss1, rss2), 1),
        "operator_idle_cpu_cores": round(idle_cpu, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", type=int, default=50)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--hot", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    info = local_cluster.up(verbose=False)
    kubectl(info, "apply", "-f", str(ROOT / "crds" / "queueconsumer.yaml"))
    kubectl(info, "wait", "--for=condition=established", "crd/queueconsumers.tide.dev")
    api_client = info.api_client()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with RedisServer() as server:
        if not args.skip_latency:
            results["burst_to_patch"] = latency_bench(
                info, api_client, server.url, args.bursts, args.interval
            )
            print(json.dumps(results["burst_to_patch"]), flush=True)
        if not args.skip_scale:
            results["many_resources"] = scale_bench(
                info, api_client, server.url, args.resources, args.hot, args.interval
            )
            print(json.dumps(results["many_resources"]), flush=True)
    api_client.close()
    out = ROOT / "bench" / "results" / "operator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
