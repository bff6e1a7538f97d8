"""Scale-down soak: jobs interrupted by scale-downs, pod deletion costs on against off, in the same run.

Two namespaces on the local stack, each with its own operator (one with TIDE_OPERATOR_DELETION_COST=false),
node agent, queue and Deployment of real ``tide worker`` pods (concurrency 1, up to --max-replicas), fed
the same arrivals: jobs of 5 to 60 s, the arrival rate rising and falling (a sine over --period seconds)
for --minutes. A job is interrupted when it starts more than once (a deleted pod hands it back after its
2 s shutdown grace; nothing else kills pods here). For each interruption the bench says whether an idle
pod existed when the busy one went (from heartbeats sampled every 0.5 s). Writes
bench/results/scale-down.json.

    .venv/bin/python bench/scale_down_soak.py                 # 10 minutes, the issue's soak
    .venv/bin/python bench/scale_down_soak.py --minutes 2     # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from kubernetes import client
from tide_local import cluster as local_cluster
from tide_local.cleanup import delete_namespace
from tide_local.redisproc import RedisServer
from tide_worker.connection import RedisSettings
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer
from tide_worker.records import Heartbeat

ROOT = Path(__file__).resolve().parents[1]
KOPF = Path(sys.executable).parent / "kopf"
COST = "controller.kubernetes.io/pod-deletion-cost"


def deployment(redis_url: str, queue: str, grace: int) -> dict[str, Any]:
    env = {
        "TIDE_REDIS_URL": redis_url,
        "TIDE_QUEUE": queue,
        "TIDE_HANDLER": "tests.operator.slow_handler:held",
        "TIDE_CONCURRENCY": "1",
        "TIDE_HEARTBEAT_TTL": "3",
        "TIDE_SHUTDOWN_GRACE": "2",
        "TIDE_METRICS_PORT": "0",
    }
    labels = {"app": "w"}
    container = {
        "name": "worker",
        "image": "tide-worker:dev",
        "command": ["tide", "worker"],
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [
            {"name": "TIDE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TIDE_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]},
            },
        },
    }


class Arm:
    """One namespace: operator, node agent, queue, heartbeat sampler."""

    def __init__(
        self, info: Any, api: Any, redis_url: str, name: str, costs: bool, args: Any, logs: Path
    ) -> None:
        self.name, self.ns, self.queue = name, f"soak-{name}-{os.getpid()}", f"soak-{name}"
        self.r = redis.Redis.from_url(redis_url)
        self.keys = QueueKeys(self.queue)
        core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
        self.core = core
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        apps.create_namespaced_deployment(self.ns, deployment(redis_url, self.queue, 10))
        spec = {
            "redis": {"url": redis_url},
            "source": {"list": {"key": self.queue}},
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            "scaling": {
                "minReplicas": 0, "maxReplicas": args.max_replicas, "targetBacklogPerReplica": 1,
                "cooldownSeconds": 5, "scaleDown": {"stabilizationSeconds": 5},
            },
        }  # fmt: skip
        body = {
            "apiVersion": "tide.dev/v1alpha1",
            "kind": "QueueConsumer",
            "metadata": {"name": "soak"},
            "spec": spec,
        }
        custom.create_namespaced_custom_object("tide.dev", "v1alpha1", self.ns, "queueconsumers", body)
        env = dict(
            os.environ,
            KUBECONFIG=str(info.kubeconfig),
            TIDE_OPERATOR_METRICS_PORT="0",
            TIDE_OPERATOR_DELETION_COST="true" if costs else "false",
            PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
        )
        self.operator = subprocess.Popen(
            [str(KOPF), "run", "-m", "tide_operator", "--standalone", "-n", self.ns, "--quiet"],
            env=env, stdout=(logs / f"soak-operator-{name}.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "tide_local.nodeagent", "--kubeconfig", str(info.kubeconfig),
             "--node-name", f"soak-{name}-{os.getpid()}", "--selector", "app=w", "--namespace", self.ns,
             "--ready-after", "0.2", "--shutdown-grace", "5", "--delete-node-on-exit"],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "hack")])),
            stdout=(logs / f"soak-nodeagent-{name}.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.samples: list[tuple[float, dict[str, int]]] = []  # (time, pod -> inflight)
        self.done = threading.Event()
        # (time, pod -> deletion cost annotation, or None) of the pods not being deleted, and when each
        # pod was first seen deleting: what the ReplicaSet controller chose from
        self.pod_samples: list[tuple[float, dict[str, str | None]]] = []
        self.held_samples: list[tuple[float, dict[str, int]]] = []  # pod -> its processing list's length
        self.deleting: dict[str, float] = {}
        self.api = api
        self.thread = threading.Thread(target=self.sample_loop, daemon=True)
        self.thread.start()
        self.pod_thread = threading.Thread(target=self.pod_loop, daemon=True)
        self.pod_thread.start()

    def pod_loop(self) -> None:
        core = client.CoreV1Api(self.api)
        while not self.done.wait(0.5):
            try:
                pods = core.list_namespaced_pod(self.ns, label_selector="app=w").items
            except Exception:  # a busy API server: the next sample
                continue
            now, live = time.time(), {}
            for pod in pods:
                if pod.metadata.deletion_timestamp is not None:
                    self.deleting.setdefault(pod.metadata.name, now)
                else:
                    live[pod.metadata.name] = (pod.metadata.annotations or {}).get(COST)
            self.pod_samples.append((now, live))

    def sample_loop(self) -> None:
        while not self.done.wait(0.5):
            try:
                ids = [w.decode() for w in self.r.zrange(self.keys.workers, 0, -1)]
                beats = [
                    Heartbeat.decode(x)
                    for x in (self.r.mget([self.keys.worker(i) for i in ids]) if ids else [])
                    if x
                ]
                pipe = self.r.pipeline(transaction=False)
                for b in beats:
                    pipe.llen(self.keys.processing(b.id))
                held = pipe.execute()
            except (redis.RedisError, ValueError):
                continue
            now = time.time()
            self.samples.append((now, {b.pod: b.inflight for b in beats if b.pod}))
            self.held_samples.append((now, {b.pod: n for b, n in zip(beats, held, strict=True) if b.pod}))

    def result(self) -> dict[str, Any]:
        starts: dict[str, list[tuple[str, float]]] = {}
        for e in self.r.lrange(f"{self.queue}:held:started", 0, -1):
            job, pod, t = e.decode().split("|")
            starts.setdefault(job, []).append((pod, float(t)))
        interrupted = {j: s for j, s in starts.items() if len(s) > 1}
        with_idle = 0
        details = []
        for job, runs in sorted(interrupted.items()):
            pod = runs[0][0]
            seen = [t for t, pods in self.samples if pod in pods]
            gone = max(seen) if seen else runs[0][1]
            before = [pods for t, pods in self.samples if t <= gone]
            idle = sorted(p for p, v in before[-1].items() if p != pod and v == 0) if before else []
            with_idle += bool(idle)
            deleting = self.deleting.get(pod)
            row: dict[str, Any] = {"job": job, "runs": runs, "last_heartbeat": gone, "idle_pods_then": idle}
            if deleting is not None:  # what the pods looked like just before this one was chosen
                costs = [c for t, c in self.pod_samples if t < deleting]
                beats = [b for t, b in self.samples if t < deleting]
                row["deleting_seen"] = deleting
                row["costs_before"] = costs[-1] if costs else None
                row["inflight_before"] = beats[-1] if beats else None
                held = [h for t, h in self.held_samples if t < deleting]
                row["processing_before"] = held[-1] if held else None
                row["others_deleted_with_it"] = sorted(
                    p for p, t in self.deleting.items() if p != pod and abs(t - deleting) < 1.0
                )
            details.append(row)
        done = self.r.llen(f"{self.queue}:held:done")
        return {
            "deletion_costs": self.name == "on",
            "jobs_started": len(starts),
            "jobs_done": done,
            "jobs_interrupted": len(interrupted),
            "interrupted_while_idle_pods_existed": with_idle,
            "interrupted": details,
        }

    def stop(self, api: Any) -> None:
        self.done.set()
        for proc in (self.operator, self.agent):
            proc.terminate()
        for proc in (self.operator, self.agent):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        delete_namespace(api, self.ns)
        self.r.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--period", type=float, default=240.0, help="seconds of one rise and fall of arrivals")
    ap.add_argument("--peak-rate", type=float, default=0.25, help="jobs/s at the peak (per arm)")
    ap.add_argument("--max-replicas", type=int, default=5)
    ap.add_argument(
        "--seed", type=int, default=12, help="the arrivals and job lengths (the same to both arms)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    info = local_cluster.up(verbose=False)
    subprocess.run([str(info.kubectl), "--kubeconfig", str(info.kubeconfig), "apply", "-f",
                    str(ROOT / "crds" / "queueconsumer.yaml")], check=True, capture_output=True)  # fmt: skip
    api = info.api_client()
    logs = args.out  # soak-*.log: ignored by git (bench/results/*.log)
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    load_start = os.getloadavg()
    with RedisServer() as server:
        arms = [Arm(info, api, server.url, name, name == "on", args, logs) for name in ("on", "off")]
        producer = Producer(settings=RedisSettings(url=server.url))
        started = time.time()
        end = started + args.minutes * 60
        n = 0
        try:
            while time.time() < end:
                t = time.time() - started
                rate = args.peak_rate * (0.5 - 0.5 * math.cos(2 * math.pi * t / args.period))
                if rng.random() < rate * 0.5:  # one draw per 0.5 s
                    hold = rng.uniform(5, 60)
                    for arm in arms:  # the same job to both arms
                        producer.enqueue(arm.queue, {"hold": round(hold, 1), "id": f"j{n}"})
                    n += 1
                time.sleep(0.5)
            # drain: wait for every job to finish (or 3 minutes)
            deadline = time.time() + 180
            while time.time() < deadline and any(a.r.llen(f"{a.queue}:held:done") < n for a in arms):
                time.sleep(1)
            results = {a.name: a.result() for a in arms}
        finally:
            for a in arms:
                a.stop(api)
    out = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "minutes": args.minutes,
        "jobs_enqueued_per_arm": n,
        "job_seconds": [5, 60],
        "max_replicas": args.max_replicas,
        "seed": args.seed,
        "period_seconds": args.period,
        "peak_rate_per_second": args.peak_rate,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in load_start],
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "arms": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scale-down.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")
    api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
