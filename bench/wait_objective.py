"""The wait-time objective under a step load, on the local stack (issue 12, part 2).

A steady ``--base`` msgs/s of 50 ms jobs, stepped up ``--factor`` times for ``--step-seconds``, then back;
a QueueConsumer with ``targetWaitSeconds`` and a ``worker:`` section runs real ``tide worker`` processes
(pods of the node agent). Each job records its own queue wait (envelope time to handler start) by phase
in Redis (``bench.handlers:wait50``); the pods' start time is read from the pods (created -> Ready).
Writes ``bench/results/wait-objective.json``: the p50/p95/p99 wait of each phase, the target, the pod
start time, replicas over time. The issue's bar: the step's p95 within target + pod start time.

    PYTHONPATH=. .venv/bin/python bench/wait_objective.py            # 200/s, x10 for 120 s, target 2 s
    PYTHONPATH=. .venv/bin/python bench/wait_objective.py --base 50 --step-seconds 30   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from tide_worker.producer import Producer

from bench.handlers import WAIT_BUCKET, WAIT_KEY
from tests.e2e.backends import LocalBackend

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QC = "waitobj"
QUEUE = "bench:waitobj"


def queue_consumer(backend: LocalBackend, args: argparse.Namespace) -> dict[str, Any]:
    env = {"TIDE_BATCH_SIZE": "20", "TIDE_HEARTBEAT_TTL": "5", **backend.worker_env()}
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": QC},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": {"list": {"key": QUEUE}},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": args.max_replicas,
                # the backlog rule: one replica per what it holds in flight (concurrency), no more
                "targetBacklogPerReplica": args.backlog_per_replica,
                "targetWaitSeconds": args.target,
                "pollingIntervalSeconds": 1,
            },
            "worker": {
                "image": backend.worker_image,
                "handler": "bench.handlers:wait50",
                "concurrency": args.concurrency,
                "env": [{"name": k, "value": v} for k, v in env.items()],
            },
        },
    }


def produce(r: redis.Redis, phases: list[tuple[str, float, float]], stop: threading.Event) -> None:
    """Push at each phase's rate (msgs/s) for its seconds, in 50 ms ticks, counting into ``SENT``."""
    producer = Producer(r)
    for name, rate, seconds in phases:
        start = time.monotonic()
        while not stop.is_set() and (elapsed := time.monotonic() - start) < seconds:
            want = int(rate * elapsed) - SENT[name]
            if want > 0:
                producer.enqueue_many(QUEUE, [{"p": name}] * want)
                SENT[name] += want
            time.sleep(0.05)


SENT: dict[str, int] = {}


def percentiles(counts: dict[bytes, bytes]) -> dict[str, float | int]:
    hist = sorted((int(k), int(v)) for k, v in counts.items())
    total = sum(n for _, n in hist)
    out: dict[str, float | int] = {"messages": total}
    for q in (50, 95, 99):
        if not total:
            break
        rank, acc = total * q / 100, 0
        for bucket, n in hist:
            acc += n
            if acc >= rank:
                out[f"p{q}_seconds"] = round((bucket + 1) * WAIT_BUCKET, 3)  # the bucket's upper edge
                break
    if hist:
        out["max_seconds"] = round((hist[-1][0] + 1) * WAIT_BUCKET, 3)
    return out


def pod_start_seconds(backend: LocalBackend) -> list[float]:
    """Created -> Ready of every worker pod there is (1 s resolution: Kubernetes timestamps)."""
    from kubernetes import client

    api = backend.api_client()
    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            backend.namespace, label_selector="app.kubernetes.io/name=tide-worker"
        )
        out = []
        for p in pods.items:
            ready = next(
                (c for c in p.status.conditions or [] if c.type == "Ready" and c.status == "True"), None
            )
            if ready is not None and ready.last_transition_time is not None:
                out.append((ready.last_transition_time - p.metadata.creation_timestamp).total_seconds())
        return out
    finally:
        api.close()


def replicas(backend: LocalBackend) -> tuple[int, int, float | None]:
    from kubernetes import client

    api = backend.api_client()
    try:
        d = client.AppsV1Api(api).read_namespaced_deployment(f"{QC}-worker", backend.namespace)
        q = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "tide.dev", "v1alpha1", backend.namespace, "queueconsumers", QC
        )
        age = ((q.get("status") or {}).get("backlog") or {}).get("oldestAgeSeconds")
        return int(d.spec.replicas or 0), int(d.status.ready_replicas or 0), age
    finally:
        api.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=float, default=200.0, help="steady msgs/s")
    p.add_argument("--factor", type=float, default=10.0, help="the step multiplies the rate by this")
    p.add_argument("--warmup-seconds", type=float, default=40.0)
    p.add_argument("--step-seconds", type=float, default=120.0)
    p.add_argument("--tail-seconds", type=float, default=20.0)
    p.add_argument("--target", type=float, default=2.0, help="targetWaitSeconds")
    p.add_argument("--concurrency", type=int, default=20, help="per worker: 20 x 50 ms jobs = 400/s")
    p.add_argument("--backlog-per-replica", type=int, default=1000)
    p.add_argument("--max-replicas", type=int, default=12)
    args = p.parse_args(argv)

    from kubernetes import client

    backend = LocalBackend()
    print("==> starting the local stack", flush=True)
    timeline: list[dict[str, Any]] = []
    stop = threading.Event()
    try:
        backend.setup()
        r = redis.Redis.from_url(backend.redis_url)
        api = backend.api_client()
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "tide.dev", "v1alpha1", backend.namespace, "queueconsumers", queue_consumer(backend, args)
        )
        api.close()
        phases = [
            ("base", args.base, args.warmup_seconds),
            ("step", args.base * args.factor, args.step_seconds),
            ("tail", args.base, args.tail_seconds),
        ]
        for name, _, _ in phases:
            SENT[name] = 0
        t0 = time.monotonic()
        producer = threading.Thread(target=produce, args=(r, phases, stop), daemon=True)
        producer.start()
        while producer.is_alive():
            want, ready, age = replicas(backend)
            row = {
                "t": round(time.monotonic() - t0, 1),
                "desired": want,
                "ready": ready,
                "oldest_age": age,
                "ready_messages": int(r.llen(QUEUE)),
            }
            timeline.append(row)
            print(row, flush=True)
            time.sleep(2)
        time.sleep(3)  # the handlers' last flushes
        result: dict[str, Any] = {
            "config": {**vars(args), "job_seconds": 0.05},
            "sent": dict(SENT),
            "wait": {name: percentiles(r.hgetall(WAIT_KEY + name)) for name, _, _ in phases},
            "pod_start_seconds": pod_start_seconds(backend),
            "timeline": timeline,
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        starts = result["pod_start_seconds"]
        result["pod_start_median_seconds"] = statistics.median(starts) if starts else None
        p95 = result["wait"]["step"].get("p95_seconds")
        bound = args.target + (max(starts) if starts else 0.0)
        result["step_p95_within_target_plus_pod_start"] = p95 is not None and p95 <= bound
        result["bound_seconds"] = bound
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "wait-objective.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
        r.close()
    finally:
        stop.set()
        print("==> cleaning up", flush=True)
        backend.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
