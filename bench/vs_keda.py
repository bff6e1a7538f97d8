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

Traces (seeded): ``flash``, 20,000 messages at once onto the idle list, jobs of 20 ms of I/O (concurrency 16
per pod, target 10 per replica); ``long``, 20 jobs of 30 to 120 s arriving over ~10 s and then nothing while
they run (concurrency 1, target 1 per replica, for both systems); ``waves``, 2,000 messages every 60 s over a
Poisson background of 1/s for 15 minutes (the flash worker); ``stream``, 4,000 entries at once onto a stream
read by a consumer group, jobs of 0.5 s (Tide with ``spec.source.stream``; KEDA with two redis-streams
triggers, ``lagCount`` and ``pendingEntriesCount`` at the target, as a careful user sets them).

Measured from Redis (the handler records each start and end, bench/vs_keda_handler.py), the API server (watches
on the Deployment and its pods; the audit log for writes) and /proc, never from either system's metrics:
message wait p50/p95/p99 (enqueue to handler start, first attempt); first pod Ready (a message arriving with
no worker pod up to the first pod Ready after it: ``first_pod_ready_s`` the first such, ``cold_starts`` how
many); pod-seconds (every worker pod from its creation until it is gone, terminating ones included); runs
interrupted (a start without an end from the same pod); ``stopped_busy`` (runs during which their pod was
told to stop, finished in the grace or not); scale changes (``spec.replicas`` changes); API writes by the
scaler (Tide's operator; KEDA's user plus the HPA controller); the scaler's CPU seconds and peak RSS (Tide's
operator process against KEDA's operator plus metrics API server, children included).

The trace starts a random part of the scaler's polling interval after the idle queue was first seen
(``phase_s``; seeded by ``--seed``): a burst lands anywhere in KEDA's 30 s period as it does in production,
where a fixed delay would put every run at the same point of it (24 s before its next poll, near its worst).
``--runs N`` repeats each (trace, system) N times; its record then holds the median of each figure, ``runs``,
``per_run`` (the main figures of each run) and the timeline of the run with the median p99 wait.

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
from tide_worker.keys import QueueKeys, StreamKeys  # noqa: E402
from tide_worker.ops import queue_stats, stream_stats  # noqa: E402
from tide_worker.producer import Producer  # noqa: E402

from bench import vs_keda_figures as figures  # noqa: E402
from bench import vs_keda_handler as handler  # noqa: E402
from bench.sim.traces import wave_times  # noqa: E402
from tests.e2e.backends import LocalBackend  # noqa: E402

QUEUE = "vk:jobs"
GROUP = "vk-group"  # the stream trace's consumer group
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
    stream: bool = False  # a stream with consumer group GROUP, not a list


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


def waves(
    burst: int, minutes: float = 15, every: float = 60, background: float = 1.0, seed: int = 12
) -> Trace:
    """A burst of ``burst`` messages every ``every`` s over a Poisson background of ``background`` per
    second, for ``minutes``; 20 ms jobs (the flash worker)."""
    times = wave_times(burst, minutes, every, background, seed)
    title = f"waves: {burst} messages every {every:.0f} s over {background:g}/s Poisson, {minutes:g} min"
    return Trace("waves", tuple((at, {"i": i}) for i, at in enumerate(times)), TARGET, 16, title)


def stream(entries: int, work: float = 0.5) -> Trace:
    """``entries`` at once onto a stream read by consumer group GROUP; jobs of ``work`` s (lag, then pending)."""
    return Trace("stream", tuple((0.0, {"i": i, "work": work}) for i in range(entries)), TARGET, 16,
                 f"stream: {entries} entries at once, consumer group, {work:g} s jobs", stream=True)  # fmt: skip


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)


class Watch:
    """Every change of the objects at ``path`` (with ``params``, a selector) as the API server reports it,
    stamped on arrival: ``(t, type, object)``. A dropped watch resumes from the last resourceVersion."""

    def __init__(self, kubeconfig: Path, path: str, params: dict[str, str]) -> None:
        self.kubeconfig, self.path, self.params = kubeconfig, path, params
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def run(self) -> None:
        from tide_local.kube import Kube

        kube = Kube(self.kubeconfig)
        listed = kube.get(self.path, **self.params)
        rv = listed["metadata"]["resourceVersion"]
        for obj in listed.get("items", []):
            self.events.append((time.time(), "ADDED", obj))
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for ev in kube.watch(self.path, {**self.params, "resourceVersion": rv}, timeout_seconds=5):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    self.events.append((time.time(), str(ev["type"]), obj))
                    if self.stop.is_set():
                        break


def deployment_counts(obj: dict[str, Any]) -> tuple[int, int, int]:
    """(spec.replicas, status.replicas, status.readyReplicas) of a Deployment."""
    st = obj.get("status", {})
    return (int(obj["spec"].get("replicas") or 0), int(st.get("replicas") or 0),
            int(st.get("readyReplicas") or 0))  # fmt: skip


def _descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cpu_rss(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of ``pids``, from /proc."""
    ticks, rss = 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return ticks / os.sysconf("SC_CLK_TCK"), rss


class ProcSampler:
    """CPU and peak RSS of a system's control processes (and their children) over a run, from /proc."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.stop = threading.Event()
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None
        self.peak_rss = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        cpu, rss = _cpu_rss(_descendants(self.roots))
        now = time.monotonic()
        if self.first is None:
            self.first = (now, cpu)
        self.last = (now, cpu)
        self.peak_rss = max(self.peak_rss, rss)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(1.0)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join(10)
        self.sample()
        assert self.first is not None and self.last is not None
        cpu = self.last[1] - self.first[1]
        span = max(1e-9, self.last[0] - self.first[0])
        return {"operator_cpu_s": round(cpu, 2), "operator_cpu_pct": round(100 * cpu / span, 2),
                "operator_rss_mb": round(self.peak_rss / 2**20, 1)}  # fmt: skip


def worker_env(backend: LocalBackend, trace: Trace) -> list[dict[str, str]]:
    # build_deployment gives the worker the handler timeout (300 s) as its shutdown grace and the pod that plus
    # 15 s: a stopped worker finishes the job it holds (counted as stopped_busy, not interrupted)
    env = {"TIDE_BATCH_SIZE": "32" if trace.concurrency > 1 else "1", "TIDE_HEARTBEAT_TTL": "5",
           "TIDE_REAPER_INTERVAL": "1", **backend.worker_env()}  # fmt: skip
    return [{"name": k, "value": v} for k, v in env.items()]


def worker_deployment(backend: LocalBackend, trace: Trace) -> dict[str, Any]:
    """The Deployment Tide's operator would make for this worker, made here so every system scales the same one."""
    qc: dict[str, Any] = {
        "metadata": {"name": "vk", "uid": "00000000-0000-0000-0000-000000000000"},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": source(trace),
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


def source(trace: Trace) -> dict[str, Any]:
    return {"stream": {"key": QUEUE, "group": GROUP}} if trace.stream else {"list": {"key": QUEUE}}


def queue_consumer(backend: LocalBackend, trace: Trace) -> dict[str, Any]:
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": SCALER},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": source(trace),
            # the rest at the operator's defaults (the target is the trace's: 10 is Tide's default)
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": MAX_REPLICAS,
                "targetBacklogPerReplica": trace.target,
            },
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
        },
    }


def triggers(address: str, trace: Trace) -> list[dict[str, Any]]:
    """KEDA's Redis triggers. A list: the redis scaler on LLEN with listLength = the target. A stream, as a
    careful user sets it: two redis-streams triggers on the group, lagCount (entries not yet delivered) and
    pendingEntriesCount (delivered, not acknowledged: in flight), each at the target; the HPA takes the
    larger of the two (one trigger reads one of them, and nothing in KEDA adds them up)."""
    base = {"address": address, "databaseIndex": "0"}
    if not trace.stream:
        return [{"type": "redis", "metadata": {**base, "listName": QueueKeys(QUEUE).ready,
                                               "listLength": str(trace.target)}}]  # fmt: skip
    group = {**base, "stream": QUEUE, "consumerGroup": GROUP}
    return [
        {"type": "redis-streams", "name": "lag", "metadata": {**group, "lagCount": str(trace.target)}},
        {"type": "redis-streams", "name": "pending",
         "metadata": {**group, "pendingEntriesCount": str(trace.target)}},
    ]  # fmt: skip


def scaled_object(backend: LocalBackend, trace: Trace, tuned: bool) -> dict[str, Any]:
    host, port = backend.redis.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": DEPLOYMENT},
        "minReplicaCount": 0,
        "maxReplicaCount": MAX_REPLICAS,
        "triggers": triggers(f"{host}:{port}", trace),
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


def unfinished(r: redis.Redis, trace: Trace) -> int:
    """Messages not yet handled to the end, read from Redis: ready + in flight + delayed of the list, or
    the group's lag + pending of the stream."""
    if trace.stream:
        st = stream_stats(r, QUEUE, GROUP)
        return int(st["lag"] or 0) + int(st["pending"] or 0)
    stats = queue_stats(r, QUEUE)
    return int(stats["ready"]) + int(stats["in_flight"]) + int(stats["delayed"])


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def operator_pids(kube: Any, backend: LocalBackend, system: str, running: keda.Keda | None) -> list[int]:
    """The control processes of ``system``: Tide's operator pod (a local process: its containerID names
    the pid), or KEDA's operator and metrics API server."""
    if system != "tide":
        assert running is not None
        return list(running.pids().values())
    pods = kube.get(f"/api/v1/namespaces/{backend.namespace}/pods",
                    labelSelector=f"app.kubernetes.io/instance={backend.release}")["items"]  # fmt: skip
    pids = [
        int(c["containerID"].rsplit("//", 1)[1])
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        for c in pod.get("status", {}).get("containerStatuses") or []
        if str(c.get("containerID", "")).startswith("tide-local://")
    ]
    if not pids:
        raise RuntimeError("no running Tide operator pod to measure")
    return pids


def reset_redis(r: redis.Redis, trace: Trace) -> None:
    keys = QueueKeys(QUEUE)
    r.delete(keys.ready, keys.delayed, keys.dead, handler.STARTS, handler.DONES, handler.DONE_IDS)
    if trace.stream:
        sk = StreamKeys(QUEUE, GROUP)
        r.delete(QUEUE, sk.dead, sk.workers)
        # the group exists before anything reads it (as a user's setup makes it): KEDA's scaler needs it
        r.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)


def run_one(
    backend: LocalBackend,
    trace: Trace,
    system: str,
    cap_seconds: float,
    running: keda.Keda | None,
    phase: float = 0.0,
) -> dict[str, Any]:
    from tide_local.kube import Kube

    assert backend.kubeconfig is not None
    kube = Kube(backend.kubeconfig)
    ns = backend.namespace
    r = redis.Redis.from_url(backend.redis_url)
    reset_redis(r, trace)
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
    time.sleep(5 + phase)  # both scalers have seen the idle queue at least once; then the random phase

    deployments = Watch(backend.kubeconfig, f"/apis/apps/v1/namespaces/{ns}/deployments",
                        {"fieldSelector": f"metadata.name={DEPLOYMENT}"})  # fmt: skip
    pods = Watch(
        backend.kubeconfig, f"/api/v1/namespaces/{ns}/pods", {"labelSelector": "tide.dev/queueconsumer=vk"}
    )
    deployments.start()
    pods.start()
    sampler = ProcSampler(operator_pids(kube, backend, system, running))
    sampler.start()
    time.sleep(1)
    producer = Producer(settings=RedisSettings(url=backend.redis_url))
    t0 = time.time()
    schedule, sent = trace.schedule, 0
    tl = Timeline()
    end = t0 + cap_seconds
    next_sample = t0
    while time.time() < end:
        upto = sent
        while upto < len(schedule) and schedule[upto][0] <= time.time() - t0:
            upto += 1
        if upto > sent:
            due = [body for _, body in schedule[sent:upto]]
            if trace.stream:
                producer.xadd_many(QUEUE, due)
            else:
                producer.enqueue_many(QUEUE, due)
            sent = upto
        now = time.time()
        if now < next_sample and sent < len(schedule):
            time.sleep(0.05)
            continue
        next_sample = now + 0.5
        backlog = unfinished(r, trace)
        spec, status, ready = (
            deployment_counts(deployments.events[-1][2]) if deployments.events else (0, 0, 0)
        )
        tl.t.append(round(now - t0, 2))
        tl.backlog.append(backlog)
        tl.replicas.append(spec)
        tl.ready.append(ready)
        if int(tl.t[-1]) % 10 == 0 and (len(tl.t) < 2 or int(tl.t[-2]) != int(tl.t[-1])):
            print(
                f"    {system}: t={tl.t[-1]:.0f}s backlog {backlog} replicas {spec} ready {ready}", flush=True
            )
        finished = sent == len(schedule) and backlog == 0 and r.scard(handler.DONE_IDS) >= messages
        # back to zero: no worker pod left, not even a terminating one
        if finished and status == spec == 0 and all(p.gone for p in figures.pod_lives(pods.events).values()):
            break
        time.sleep(0.05 if sent < len(schedule) else 0.5)
    t_end = time.time()
    deployments.close()
    pods.close()
    usage = sampler.close()

    starts = [_text(line).split() for line in r.lrange(handler.STARTS, 0, -1)]
    ends = {}
    for line in r.lrange(handler.DONES, 0, -1):
        i, pod, at = _text(line).split()[:3]
        ends[(i, pod)] = float(at)
    first_start: dict[str, float] = {}
    for i, _pod, started, enq, _attempt in starts:
        first_start[i] = min(first_start.get(i, math.inf), float(started) - float(enq))
    waits = list(first_start.values())
    interrupted = sum(1 for i, pod, *_ in starts if (i, pod) not in ends)
    runs = [(i, pod, float(started)) for i, pod, started, *_ in starts]
    lives = figures.pod_lives(pods.events)
    # a run whose pod was told to stop (deletionTimestamp) while it ran: finished within the grace, or not
    stopped_busy = figures.stopped_busy(runs, ends, lives)
    pod_seconds = figures.pod_seconds(lives, t0, t_end)
    changes, last_spec = 0, 0
    for _, _, obj in deployments.events:
        spec = deployment_counts(obj)[0]
        if spec != last_spec:
            changes += 1
            last_spec = spec
    cold = figures.cold_starts(lives, [t0 + at for at, _ in schedule])
    users = (f"system:serviceaccount:{ns}:",) if system == "tide" else (
        "keda", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")  # fmt: skip
    audit = Path(os.environ["TIDE_CLUSTER_DIR"]) / cluster.AUDIT_LOG
    time.sleep(2)  # the audit log is written in batches of up to 1 s
    record = {
        "trace": trace.name,
        "system": system,
        "wait_p50_s": round(figures.pct(waits, 0.50), 2) if waits else None,
        "wait_p95_s": round(figures.pct(waits, 0.95), 2) if waits else None,
        "wait_p99_s": round(figures.pct(waits, 0.99), 2) if waits else None,
        "first_pod_ready_s": round(cold[0], 2) if cold else None,
        "pod_seconds": round(pod_seconds, 1),
        "interrupted": interrupted,
        "scale_changes": changes,
        "api_writes": figures.writes_by(audit, t0, t_end, users),
        **usage,
        "cold_starts": len(cold),
        "cold_start_p50_s": round(figures.pct(cold, 0.5), 2) if cold else None,
        "stopped_busy": stopped_busy,
        "pods_started": len(lives),
        "processed": int(r.scard(handler.DONE_IDS)),
        "messages": messages,
        "back_to_zero_s": round(t_end - t0, 1) if t_end < end else None,
        "capped_at_s": None if t_end < end else cap_seconds,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "phase_s": round(phase, 2),
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


COLUMNS = (
    ("wait_p50_s", "p50 wait s"), ("wait_p95_s", "p95"), ("wait_p99_s", "p99"),
    ("first_pod_ready_s", "first pod Ready s"), ("pod_seconds", "pod-s"), ("interrupted", "interrupted"), ("stopped_busy", "stopped busy"),
    ("scale_changes", "scale changes"), ("api_writes", "API writes"), ("operator_cpu_s", "operator CPU s"),
    ("operator_rss_mb", "operator RSS MB"), ("processed", "done"),
)  # fmt: skip


# Seconds between two readings of the queue by each system's scaler (Tide's default; KEDA's pollingInterval).
POLLING_INTERVAL = {"tide": 1.0, "keda-tuned": 1.0, "keda-defaults": 30.0}


def table(records: list[dict[str, Any]]) -> str:
    """The records as a Markdown table (bench/README.md), one row per (trace, system)."""
    head = "| trace | system | " + " | ".join(title for _, title in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    order = {name: k for k, name in enumerate(("flash", "long", "waves", "stream"))}
    for rec in sorted(records, key=lambda r: (order.get(r["trace"], 9), SYSTEMS.index(r["system"]))):
        cells = [rec["trace"], rec["system"]]
        for key, _ in COLUMNS:
            value = rec.get(key)
            cells.append("n/a" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:g}")
        cells[-1] = f"{rec['processed']:,}/{rec['messages']:,}"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-vs-keda", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="flash: messages pushed at once")
    parser.add_argument("--jobs", type=int, default=20, help="long: jobs of 30-120 s")
    parser.add_argument("--burst", type=int, default=2_000, help="waves: messages per burst")
    parser.add_argument("--entries", type=int, default=4_000, help="stream: entries added at once")
    parser.add_argument("--traces", default="flash,long,waves,stream")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--cap-seconds", type=float, default=None,
                        help="stop a run this long after the start even if not back to zero "
                             "(default: 480 s; waves: its 15 minutes + 420 s)")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print bench/results/vs-keda.json as a table")
    parser.add_argument("--runs", type=int, default=1, help="runs per (trace, system); records hold medians")
    parser.add_argument("--seed", type=int, default=1, help="of the start phases")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS / "vs-keda.json").read_text())))
        return 0
    traces = {"flash": flash(args.messages), "long": long_jobs(args.jobs), "waves": waves(args.burst),
              "stream": stream(args.entries)}  # fmt: skip
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
        rng = random.Random(args.seed)
        for name in args.traces.split(","):
            for system in args.systems.split(","):
                trace = traces[name]
                cap = args.cap_seconds or (trace.schedule[-1][0] + 420 if name == "waves" else 480.0)
                runs: list[dict[str, Any]] = []
                for k in range(args.runs):
                    print(f"==> {name} against {system} (run {k + 1} of {args.runs})", flush=True)
                    phase = rng.uniform(0, POLLING_INTERVAL[system])
                    runs.append(run_one(backend, trace, system, cap, running, phase))
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "timeline"}), flush=True)
                records.append(figures.median_record(runs))
                save(records, traces)  # after each (trace, system): a later failure keeps those done
    finally:
        print("==> cleaning up", flush=True)
        if running is not None:
            running.stop()
        backend.teardown()
    save(records, traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
