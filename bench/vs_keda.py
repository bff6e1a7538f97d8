"""`make bench-vs-keda`: Tide against KEDA v2.21.0 on the same local cluster, Redis, Deployment and trace.

One local stack (hack/tide_local, in a cluster directory of its own with the aggregation layer, the HPA
controller and the API audit log), one redis-server, the Tide chart (its operator as a pod run by the node
agent) and KEDA's operator and metrics API server as local processes (tide_local.keda). For each system in
turn, the same worker Deployment (real Tide workers, run as pods by the node agent, at zero replicas) is
created, then its scaler:

- ``tide``: a QueueConsumer with ``scaleTargetRef`` at the operator's defaults;
- ``keda-defaults``: a ScaledObject with the redis scaler (``listLength`` = Tide's target), pollingInterval
  30, cooldownPeriod 300, the HPA's defaults;
- ``keda-tuned``: pollingInterval 1, cooldownPeriod = Tide's cooldown, the HPA's behavior set to Tide's
  scale-up and scale-down defaults.

Traces: ``flash``, 20,000 messages at once onto the idle list, jobs of 20 ms of I/O (concurrency 16 per
pod, target 10 per replica); ``long``, 20 jobs of 30 to 120 s arriving over ~10 s and then nothing while
they run (concurrency 1, target 1 per replica, for both systems). Measured from Redis
(the handler records each start and end, bench/vs_keda_handler.py) and the API server (a watch on the
Deployment, and the audit log for writes): message wait p50/p95/p99 (enqueue to handler start), first
message to first pod Ready, pod-seconds (status.replicas integrated until back to zero or the time cap),
runs interrupted (a start without an end from the same pod), scale changes (spec.replicas changes) and API
writes by the scaler (Tide's operator; KEDA's user plus the HPA controller).

Writes bench/results/vs-keda.json (the records and the timelines; a run of some traces replaces only
theirs) and bench/results/vs-keda-<trace>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# A cluster of its own (the flags below need a fresh start) and the audit log for counting API writes.
os.environ.setdefault("TIDE_CLUSTER_DIR", str(ROOT / ".cache" / "cluster-vs-keda"))
os.environ["TIDE_APISERVER_AUDIT"] = "1"

import redis  # noqa: E402
from tide_local import cluster, keda  # noqa: E402
from tide_local.kube import KubeError  # noqa: E402
from tide_operator.spec import parse_spec  # noqa: E402
from tide_operator.workload import build_deployment  # noqa: E402
from tide_worker.connection import RedisSettings  # noqa: E402
from tide_worker.keys import QueueKeys  # noqa: E402
from tide_worker.ops import queue_stats  # noqa: E402
from tide_worker.producer import Producer  # noqa: E402

from bench import vs_keda_handler as handler  # noqa: E402
from tests.e2e.backends import LocalBackend  # noqa: E402

QUEUE = "vk:jobs"
DEPLOYMENT = "vk-worker"
SCALER = "vk"
TARGET = 10  # backlog per replica: Tide's default, given to KEDA's listLength too
MAX_REPLICAS = 10  # Tide's default maxReplicas, given to KEDA's maxReplicaCount (its own default is 100)
TIDE_COOLDOWN = 30
SYSTEMS = ("tide", "keda-tuned", "keda-defaults")


@dataclass(frozen=True)
class Trace:
    """A seeded schedule: ``(seconds after the start, body)`` per message, and the worker it is for."""

    name: str
    schedule: tuple[tuple[float, dict[str, Any]], ...]
    target: int  # backlog per replica, for Tide and for KEDA's listLength
    concurrency: int  # handler slots per worker pod
    title: str


def flash(messages: int) -> Trace:
    """All at once onto the idle list; each job 20 ms of I/O."""
    return Trace("flash", tuple((0.0, {"i": i}) for i in range(messages)), TARGET, 16,
                 f"flash: {messages} messages at once, 20 ms jobs")  # fmt: skip


def long_jobs(jobs: int, seed: int = 11) -> Trace:
    """Jobs of 30 to 120 s arriving over the first ~10 s, then nothing while they run: the in-flight case.
    One job per pod (concurrency 1, target 1 per replica for both systems), so a pod stopped mid-job shows."""
    rng = random.Random(seed)
    t, schedule = 0.0, []
    for i in range(jobs):
        schedule.append((round(t, 3), {"i": i, "work": round(rng.uniform(30, 120), 1)}))
        t += rng.expovariate(jobs / 10.0)
    return Trace("long", tuple(schedule), 1, 1, f"long jobs: {jobs} jobs of 30-120 s over ~10 s, then none")


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)


@dataclass
class DeploymentWatch:
    """Every change of the Deployment as the API server reports it, stamped on arrival."""

    events: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, spec, status, ready)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, kubeconfig: Path, namespace: str) -> None:
        from tide_local.kube import Kube

        kube = Kube(kubeconfig)
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
        rv = kube.get(path, fieldSelector=f"metadata.name={DEPLOYMENT}")["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for ev in kube.watch(
                    path,
                    {"fieldSelector": f"metadata.name={DEPLOYMENT}", "resourceVersion": rv},
                    timeout_seconds=5,
                ):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    st = obj.get("status", {})
                    self.events.append(
                        (
                            time.time(),
                            int(obj["spec"].get("replicas") or 0),
                            int(st.get("replicas") or 0),
                            int(st.get("readyReplicas") or 0),
                        )
                    )
                    if self.stop.is_set():
                        break


def worker_env(backend: LocalBackend, trace: Trace) -> list[dict[str, str]]:
    # the worker's own shutdown grace (25 s) inside the pod's 30 s: a job still running then is interrupted
    env = {"TIDE_BATCH_SIZE": "32" if trace.concurrency > 1 else "1", "TIDE_HEARTBEAT_TTL": "5",
           "TIDE_REAPER_INTERVAL": "1", **backend.worker_env()}  # fmt: skip
    return [{"name": k, "value": v} for k, v in env.items()]


def worker_deployment(backend: LocalBackend, trace: Trace) -> dict[str, Any]:
    """The Deployment Tide's operator would make for this worker, made here so every system scales the same one."""
    qc: dict[str, Any] = {
        "metadata": {"name": "vk", "uid": "00000000-0000-0000-0000-000000000000"},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": {"list": {"key": QUEUE}},
            "scaling": {"minReplicas": 0},
            "worker": {
                "image": backend.worker_image,
                "handler": "bench.vs_keda_handler:handle",
                "concurrency": trace.concurrency,
                "env": worker_env(backend, trace),
            },
        },
    }
    dep = build_deployment(qc, parse_spec(qc["spec"]))
    dep["metadata"].pop("ownerReferences")
    dep["metadata"]["name"] = DEPLOYMENT
    dep["spec"]["replicas"] = 0
    return dep


def queue_consumer(backend: LocalBackend, trace: Trace) -> dict[str, Any]:
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": SCALER},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": {"list": {"key": QUEUE}},
            # the rest at the operator's defaults (the target is the trace's: 10 is Tide's default)
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": MAX_REPLICAS,
                "targetBacklogPerReplica": trace.target,
            },
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
        },
    }


def scaled_object(backend: LocalBackend, trace: Trace, tuned: bool) -> dict[str, Any]:
    host, port = backend.redis.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": DEPLOYMENT},
        "minReplicaCount": 0,
        "maxReplicaCount": MAX_REPLICAS,
        "triggers": [
            {
                "type": "redis",
                "metadata": {
                    "address": f"{host}:{port}",
                    "listName": QueueKeys(QUEUE).ready,
                    "listLength": str(trace.target),
                    "databaseIndex": "0",
                },
            }
        ],
    }
    if tuned:
        # As a careful user would: poll every second, Tide's cooldown, and Tide's default behavior
        # (scale up at once without a step limit; down after 30 s of stability, at most 50 % per 5 s).
        spec["pollingInterval"] = 1
        spec["cooldownPeriod"] = TIDE_COOLDOWN
        spec["advanced"] = {
            "horizontalPodAutoscalerConfig": {
                "behavior": {
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Pods", "value": MAX_REPLICAS, "periodSeconds": 1}],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": 30,
                        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 5}],
                    },
                }
            }
        }
    else:
        spec["pollingInterval"] = 30  # KEDA's defaults, written out
        spec["cooldownPeriod"] = 300
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": SCALER},
        "spec": spec,
    }


def unfinished(r: redis.Redis) -> int:
    stats = queue_stats(r, QUEUE)
    return int(stats["ready"]) + int(stats["in_flight"]) + int(stats["delayed"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def writes_by(audit: Path, since: float, until: float, users: tuple[str, ...]) -> int:
    """Write requests the audit log shows from users starting with one of ``users`` in [since, until]."""
    import datetime

    count = 0
    with contextlib.suppress(FileNotFoundError), audit.open() as handle:
        for line in handle:
            ev = json.loads(line)
            if ev.get("stage") != "ResponseComplete":
                continue
            name = ev.get("user", {}).get("username", "")
            if not name.startswith(users):
                continue
            t = datetime.datetime.fromisoformat(
                ev["requestReceivedTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if since <= t <= until:
                count += 1
    return count


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def run_one(backend: LocalBackend, trace: Trace, system: str, cap_seconds: float) -> dict[str, Any]:
    from tide_local.kube import Kube

    assert backend.kubeconfig is not None
    kube = Kube(backend.kubeconfig)
    ns = backend.namespace
    r = redis.Redis.from_url(backend.redis_url)
    keys = QueueKeys(QUEUE)
    r.delete(keys.ready, keys.delayed, keys.dead, handler.STARTS, handler.DONES, handler.DONE_IDS)
    messages = len(trace.schedule)
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", worker_deployment(backend, trace))
    if system == "tide":
        kube.post(f"/apis/tide.dev/v1alpha1/namespaces/{ns}/queueconsumers", queue_consumer(backend, trace))
    else:
        kube.post(
            f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects",
            scaled_object(backend, trace, system == "keda-tuned"),
        )
        deadline = time.monotonic() + 60  # KEDA makes its HPA; the HPA controller then sees its metric
        while True:
            with contextlib.suppress(Exception):
                kube.get(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/keda-hpa-{SCALER}")
                break
            if time.monotonic() > deadline:
                raise RuntimeError("KEDA did not create its HPA")
            time.sleep(0.5)
    time.sleep(5)  # both scalers have seen the idle queue at least once

    watch = DeploymentWatch()
    thread = threading.Thread(target=watch.run, args=(backend.kubeconfig, ns), daemon=True)
    thread.start()
    time.sleep(1)
    producer = Producer(settings=RedisSettings(url=backend.redis_url))
    t0 = time.time()
    pending = list(trace.schedule)
    tl = Timeline()
    end = t0 + cap_seconds
    while time.time() < end:
        due = [body for at, body in pending if at <= time.time() - t0]
        if due:
            producer.enqueue_many(QUEUE, due)
            pending = pending[len(due) :]
        now = time.time()
        backlog = unfinished(r)
        spec, _, ready = watch.events[-1][1:] if watch.events else (0, 0, 0)
        tl.t.append(round(now - t0, 2))
        tl.backlog.append(backlog)
        tl.replicas.append(spec)
        tl.ready.append(ready)
        if int(tl.t[-1]) % 10 == 0 and (len(tl.t) < 2 or int(tl.t[-2]) != int(tl.t[-1])):
            print(
                f"    {system}: t={tl.t[-1]:.0f}s backlog {backlog} replicas {spec} ready {ready}", flush=True
            )
        finished = not pending and backlog == 0 and r.scard(handler.DONE_IDS) >= messages
        if finished and watch.events and watch.events[-1][2] == 0:
            break
        time.sleep(0.1 if pending else 0.5)
    t_end = time.time()
    watch.stop.set()
    thread.join(10)

    starts = [_text(line).split() for line in r.lrange(handler.STARTS, 0, -1)]
    dones = {tuple(_text(line).split()[:2]) for line in r.lrange(handler.DONES, 0, -1)}
    first_start: dict[str, float] = {}
    for i, _pod, started, enq, _attempt in starts:
        first_start[i] = min(first_start.get(i, math.inf), float(started) - float(enq))
    waits = list(first_start.values())
    interrupted = sum(1 for i, pod, *_ in starts if (i, pod) not in dones)
    # pod-seconds: status.replicas (pods not yet terminated) integrated from the push to the end
    pod_seconds, prev_t, prev_n = 0.0, t0, 0
    changes, last_spec, first_ready = 0, 0, None
    for at, spec, status, ready in watch.events:
        tt = max(at, t0)
        pod_seconds += prev_n * (tt - prev_t)
        prev_t, prev_n = tt, status
        if spec != last_spec:
            changes += 1
            last_spec = spec
        if ready > 0 and first_ready is None:
            first_ready = at - t0
    pod_seconds += prev_n * (t_end - prev_t)
    users = (f"system:serviceaccount:{ns}:",) if system == "tide" else (
        "keda", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")  # fmt: skip
    audit = Path(os.environ["TIDE_CLUSTER_DIR"]) / cluster.AUDIT_LOG
    time.sleep(2)  # the audit log is written in batches of up to 1 s
    record = {
        "trace": trace.name,
        "system": system,
        "wait_p50_s": round(pct(waits, 0.50), 2) if waits else None,
        "wait_p95_s": round(pct(waits, 0.95), 2) if waits else None,
        "wait_p99_s": round(pct(waits, 0.99), 2) if waits else None,
        "first_pod_ready_s": round(first_ready, 2) if first_ready is not None else None,
        "pod_seconds": round(pod_seconds, 1),
        "interrupted": interrupted,
        "scale_changes": changes,
        "api_writes": writes_by(audit, t0, t_end, users),
        "processed": int(r.scard(handler.DONE_IDS)),
        "messages": messages,
        "back_to_zero_s": round(t_end - t0, 1) if t_end < end else None,
        "capped_at_s": None if t_end < end else cap_seconds,
        "timeline": {"t": tl.t, "backlog": tl.backlog, "replicas": tl.replicas, "ready": tl.ready},
    }

    # clean up for the next system: the scaler first, then the Deployment and its pods
    if system == "tide":
        kube.delete(f"/apis/tide.dev/v1alpha1/namespaces/{ns}/queueconsumers/{SCALER}")
    else:
        kube.delete(f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{SCALER}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # gone once its finalizer ran
        try:
            kind = (
                "tide.dev/v1alpha1/namespaces/{}/queueconsumers"
                if system == "tide"
                else "keda.sh/v1alpha1/namespaces/{}/scaledobjects"
            )
            kube.get(f"/apis/{kind.format(ns)}/{SCALER}")
        except Exception:
            break
        time.sleep(0.5)
    kube.delete(
        f"/apis/apps/v1/namespaces/{ns}/deployments/{DEPLOYMENT}", {"propagationPolicy": "Foreground"}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the pods, then the Deployment itself (foreground deletion)
        pods = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="tide.dev/queueconsumer=vk")["items"]
        if not pods:
            try:
                kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{DEPLOYMENT}")
            except KubeError:
                break
        time.sleep(0.5)
    r.close()
    return record


def plot(records: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tide": "tab:blue", "keda-tuned": "tab:orange", "keda-defaults": "tab:red"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(3, 2))
    for rec in records:
        tl = rec["timeline"]
        c = colors.get(rec["system"], "black")
        top.plot(tl["t"], tl["backlog"], color=c, label=f"{rec['system']}")
        bottom.step(tl["t"], tl["replicas"], where="post", color=c, label=f"{rec['system']} replicas")
    top.set_ylabel("unfinished messages")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right")
    top.set_title(f"{title} (same Deployment, Redis, cluster)")
    bottom.set_ylabel("replicas (spec)")
    bottom.set_xlabel("seconds since the push")
    bottom.set_ylim(bottom=0, top=MAX_REPLICAS + 1)
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save(records: list[dict[str, Any]], traces: dict[str, Trace]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "vs-keda.json"
    # a run of some traces or systems replaces only their records
    new = {(rec["trace"], rec["system"]) for rec in records}
    kept = [
        rec
        for rec in (json.loads(out.read_text()) if out.exists() else [])
        if (rec["trace"], rec["system"]) not in new
    ]
    merged = kept + records
    out.write_text(json.dumps(merged, indent=1))
    for name in sorted({rec["trace"] for rec in merged}):
        recs = [rec for rec in merged if rec["trace"] == name]
        plot(recs, traces[name].title if name in traces else name, RESULTS / f"vs-keda-{name}.png")
        print(f"==> wrote {RESULTS / f'vs-keda-{name}.png'}")
    print(f"==> wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-vs-keda", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="flash: messages pushed at once")
    parser.add_argument("--jobs", type=int, default=20, help="long: jobs of 30-120 s")
    parser.add_argument("--traces", default="flash,long")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--cap-seconds", type=float, default=480.0,
                        help="stop a run this long after the start even if not back to zero")  # fmt: skip
    args = parser.parse_args(argv)
    traces = {"flash": flash(args.messages), "long": long_jobs(args.jobs)}
    backend = LocalBackend()
    records: list[dict[str, Any]] = []
    running: keda.Keda | None = None
    try:
        print(
            "==> starting the local stack (control plane with aggregation + HPA, redis, chart, node agent)",
            flush=True,
        )
        backend.setup()
        info = cluster.current()
        assert info is not None
        print(
            "==> starting KEDA (operator, metrics API server) and registering external.metrics.k8s.io",
            flush=True,
        )
        running = keda.start(info, Path(os.environ["TIDE_CLUSTER_DIR"]) / "keda")
        for name in args.traces.split(","):
            for system in args.systems.split(","):
                print(f"==> {name} against {system}", flush=True)
                records.append(run_one(backend, traces[name], system, args.cap_seconds))
                print(json.dumps({k: v for k, v in records[-1].items() if k != "timeline"}), flush=True)
                save(records, traces)  # after each run: a later failure keeps the runs done
    finally:
        print("==> cleaning up", flush=True)
        if running is not None:
            running.stop()
        backend.teardown()
    save(records, traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
