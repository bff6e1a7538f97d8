"""The wait-time objective under a step load, on the local stack (issue 12, part 2).

A steady ``--base`` msgs/s of 50 ms jobs, stepped up ``--factor`` times for ``--step-seconds``, then back;
a QueueConsumer with ``targetWaitSeconds`` and a ``worker:`` section runs real ``tide worker`` processes
(pods of the node agent). Each job records its own queue wait (envelope time to handler start) by phase
in Redis (``bench.handlers:wait50``). The pod start time is measured in the same run, for every pod a
scale-up made: from the ``/scale`` patch (the Deployment's ``spec.replicas`` rising, seen by a watch) to
the pod Ready (a watch on the pods), to its worker's first heartbeat (the registry, sampled every 0.1 s)
and to its first message (the handler's ``HSETNX``). Writes ``bench/results/wait-objective.json`` (the
p50/p95/p99 wait of each phase, the target, the pod start times, replicas, age and machine load over time)
and ``wait-objective.png``. The issue's bar: the step's p95 within target + pod start time.

    PYTHONPATH=. .venv/bin/python bench/wait_objective.py            # 200/s, x10 for 120 s, target 2 s
    PYTHONPATH=. .venv/bin/python bench/wait_objective.py --base 50 --step-seconds 30   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer
from tide_worker.records import Heartbeat

from bench.handlers import FIRST_KEY, WAIT_BUCKET, WAIT_KEY
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


class StartWatch:
    """When each scale-up was patched and when each new pod was created, Ready, heartbeating and consuming.

    Local clock, sub-second: watches on the Deployment (``spec.replicas`` rising is the operator's
    ``/scale`` patch landing) and on the worker pods, and the worker registry sampled every 0.1 s for the
    first heartbeat naming each pod (Kubernetes timestamps have 1 s resolution, too coarse here)."""

    def __init__(self, backend: LocalBackend, r: redis.Redis) -> None:
        self.backend, self.r = backend, r
        self.scale_ups: list[tuple[float, int, int]] = []  # (time, from, to)
        self.created: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.heartbeat: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=f, daemon=True) for f in (self._deployments, self._pods, self._beats)
        ]
        for t in self.threads:
            t.start()

    def _stream(self, list_fn: str, on_event: Any, **kw: Any) -> None:
        from kubernetes import client, watch

        while not self.stop.is_set():
            api = self.backend.api_client()
            try:
                fn = getattr(client.AppsV1Api(api), list_fn, None) or getattr(client.CoreV1Api(api), list_fn)
                for ev in watch.Watch().stream(fn, self.backend.namespace, timeout_seconds=30, **kw):
                    on_event(time.time(), ev["object"])
                    if self.stop.is_set():
                        break
            except Exception as e:  # a dropped watch: list and watch again
                print(f"watch {list_fn}: {e!r}", flush=True)
                time.sleep(0.2)
            finally:
                api.close()

    def _deployments(self) -> None:
        last: list[int] = []

        def seen(t: float, d: Any) -> None:
            n = int(d.spec.replicas or 0)
            if last and n > last[0]:
                self.scale_ups.append((t, last[0], n))
            last[:] = [n]

        self._stream("list_namespaced_deployment", seen, field_selector=f"metadata.name={QC}-worker")

    def _pods(self) -> None:
        def seen(t: float, p: Any) -> None:
            name = p.metadata.name
            self.created.setdefault(name, t)
            if name not in self.ready and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or []
            ):
                self.ready[name] = t

        self._stream("list_namespaced_pod", seen, label_selector="app.kubernetes.io/name=tide-worker")

    def _beats(self) -> None:
        keys = QueueKeys(QUEUE)
        while not self.stop.wait(0.1):
            try:
                ids = [w.decode() for w in self.r.zrange(keys.workers, 0, -1)]
                raw = self.r.mget([keys.worker(i) for i in ids]) if ids else []
                now = time.time()
                for x in raw:
                    if x:
                        self.heartbeat.setdefault(Heartbeat.decode(x).pod, now)
            except (redis.RedisError, ValueError):
                continue

    def result(self) -> dict[str, Any]:
        """Per pod a scale-up made: seconds from the patch before its creation to Ready, first heartbeat
        and first message; and their median, p95 and max."""
        self.stop.set()
        first = {k.decode(): float(v) for k, v in self.r.hgetall(FIRST_KEY).items()}
        pods = []
        for name, created in sorted(self.created.items(), key=lambda kv: kv[1]):
            patches = [t for t, _, _ in self.scale_ups if t <= created + 0.05]
            if not patches:
                continue  # the Deployment's first pod: made with the Deployment, not by a /scale patch
            patched = patches[-1]
            row: dict[str, Any] = {"pod": name, "created": round(created - patched, 3)}
            for what, seen in (
                ("ready", self.ready),
                ("first_heartbeat", self.heartbeat),
                ("first_message", first),
            ):
                if name in seen:
                    row[what] = round(seen[name] - patched, 3)
            pods.append(row)
        summary: dict[str, Any] = {}
        for what in ("created", "ready", "first_heartbeat", "first_message"):
            xs = sorted(p[what] for p in pods if what in p)
            if xs:
                summary[what] = {
                    "pods": len(xs),
                    "median_seconds": round(statistics.median(xs), 3),
                    "p95_seconds": xs[max(0, math.ceil(0.95 * len(xs)) - 1)],
                    "max_seconds": xs[-1],
                }
        return {
            "scale_ups": [(round(t, 3), a, b) for t, a, b in self.scale_ups],
            "pods": pods,
            "summary": summary,
        }


def replicas(backend: LocalBackend) -> tuple[int, int, float | None]:
    from kubernetes import client

    api = backend.api_client()
    try:
        d = client.AppsV1Api(api).read_namespaced_deployment(f"{QC}-worker", backend.namespace)
        q = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "tide.dev", "v1alpha1", backend.namespace, "queueconsumers", QC
        )
        status = q.get("status") or {}
        age = (status.get("backlog") or {}).get("oldestAgeSeconds")
        return int(d.spec.replicas or 0), int(d.status.ready_replicas or 0), age, status.get("lastRule")
    finally:
        api.close()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["timeline"]
    t = [x["t"] for x in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    cfg = result["config"]
    step0, step1 = cfg["warmup_seconds"], cfg["warmup_seconds"] + cfg["step_seconds"]
    for ax in (top, bottom):
        ax.axvspan(step0, step1, color="0.92", label=f"{cfg['base'] * cfg['factor']:g} msgs/s")
    top.step(t, [x["desired"] for x in rows], where="post", label="desired replicas")
    top.step(t, [x["ready"] for x in rows], where="post", label="ready replicas")
    top.set_ylabel("replicas")
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(t, [x["oldest_age"] or 0 for x in rows], ".-", label="oldest message's age (status)")
    bottom.axhline(cfg["target"], color="r", ls="--", label=f"targetWaitSeconds {cfg['target']:g}")
    bottom.set_ylabel("seconds")
    bottom.set_xlabel("seconds since the start")
    bottom.legend(loc="upper right", fontsize=8)
    step = result["wait"]["step"]
    fig.suptitle(
        f"{cfg['base']:g} -> {cfg['base'] * cfg['factor']:g} msgs/s of 50 ms jobs: step wait p95 "
        f"{step.get('p95_seconds')} s (target {cfg['target']:g} s, pod start to first message "
        f"{result['pod_start_to_first_message_median_seconds']} s median)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        deadline = time.monotonic() + 120  # the operator makes the Deployment; its first pod consumes
        while True:
            try:
                if replicas(backend)[1] >= 1:
                    break
            except client.ApiException as e:
                if e.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"{QC}-worker has no ready pod after 120 s")
            time.sleep(0.5)
        load_start = os.getloadavg()
        starts = StartWatch(backend, r)
        t0 = time.monotonic()
        producer = threading.Thread(target=produce, args=(r, phases, stop), daemon=True)
        producer.start()
        while producer.is_alive():
            want, ready, age, rule = replicas(backend)
            row = {
                "t": round(time.monotonic() - t0, 1),
                "desired": want,
                "ready": ready,
                "oldest_age": age,
                "rule": rule,
                "ready_messages": int(r.llen(QUEUE)),
                "load1": round(os.getloadavg()[0], 2),
            }
            timeline.append(row)
            print(row, flush=True)
            time.sleep(2)
        time.sleep(3)  # the handlers' last flushes
        result: dict[str, Any] = {
            "config": {**vars(args), "job_seconds": 0.05},
            "sent": dict(SENT),
            "wait": {name: percentiles(r.hgetall(WAIT_KEY + name)) for name, _, _ in phases},
            "pod_start": starts.result(),
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg_at_start": [round(x, 2) for x in load_start],
                "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "timeline": timeline,
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        # the pod start time: /scale patch -> the new pod's first message, the median over the run's pods
        first = result["pod_start"]["summary"].get("first_message", {})
        start = first.get("median_seconds")
        result["pod_start_to_first_message_median_seconds"] = start
        p95 = result["wait"]["step"].get("p95_seconds")
        bound = args.target + (start or 0.0)
        result["bound_seconds"] = round(bound, 3)
        result["step_p95_within_target_plus_pod_start"] = (
            p95 is not None and start is not None and p95 <= bound
        )
        result["step_p95_within_target"] = p95 is not None and p95 <= args.target
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "wait-objective.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, RESULTS / "wait-objective.png")
        print(json.dumps({k: v for k, v in result.items() if k not in ("timeline", "pod_start")}, indent=2))
        print(json.dumps(result["pod_start"]["summary"], indent=2))
        r.close()
    finally:
        stop.set()
        print("==> cleaning up", flush=True)
        backend.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
