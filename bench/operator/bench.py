"""Operator benchmarks on the local stack (control plane + real Redis); writes bench/results/operator.json
and bench/results/operator.png.

1. burst -> /scale latency: one QueueConsumer on an idle list; LPUSH a burst, time until a watch on the
   target Deployment sees spec.replicas change; empty the list, wait for zero, repeat (50 bursts).
2. scale, once per size (``--sizes 1000,10000``): N QueueConsumers, 100 per namespace, each with its own
   Deployment, one operator watching every namespace; bursts land on a tenth of the lists at once; time
   until each burst's Deployments are all scaled and its p99; operator RSS (peak) and CPU, idle and during
   the bursts; Kubernetes writes the operator made while idle. ``--runs`` repeats the burst on other lists
   (after everything is back to zero); the worst burst is reported. One record per size goes into
   ``records`` ``{"resources", "replicas", "rss_mb", "all_scaled_s", "burst_p99_s", "idle_cpu_cores"}``;
   records of other kinds already in operator.json (the wake records) are kept, and so are the records
   and scale runs of other (resources, replicas).
3. ``--replicas N`` (N > 1): N operator processes sharing the resources through shard Leases
   (``TIDE_SHARDS``, ``--shards``); the runs wait until the leases are split evenly; ``rss_mb`` is the
   largest replica's peak (what each replica's limit must hold), ``rss_mb_total`` the sum, CPU the sum.

``--profile`` samples the operator with py-spy (``pip install py-spy``) during the idle window and the
first burst and prints the functions that took the most samples (collapsed stacks in ``.cache/``).

    python bench/operator/bench.py [--bursts 50] [--sizes 1000,10000] [--hot-fraction 0.1] [--runs 3] [--interval 1]
        [--replicas 2 --shards 8]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from kubernetes import client, watch
from tide_local import cluster as local_cluster
from tide_local.cleanup import delete_namespace
from tide_local.redisproc import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
# The operator as its image runs it (`hack/extra-venv.sh .cache/operator-venv operator`: the operator extra
# alone); the test venv's kopf also imports the kubernetes client the local stack installs, 16 MB that no
# operator image holds.
PRODUCT_KOPF = ROOT / ".cache" / "operator-venv" / "bin" / "kopf"
KOPF = PRODUCT_KOPF if PRODUCT_KOPF.exists() else Path(sys.executable).parent / "kopf"
OPERATOR_VENV = "product" if KOPF == PRODUCT_KOPF else "test (kopf imports the kubernetes client: +16 MB)"
PY_SPY = Path(sys.executable).parent / "py-spy"
CLK = os.sysconf("SC_CLK_TCK")
CACHE = ROOT / ".cache"


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


class Operator:
    source = ROOT / "operator"  # --operator-src: the directory holding the tide_operator package to run

    def __init__(self, info: Any, ns: str | None, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        env = dict(
            os.environ,
            KUBECONFIG=str(info.kubeconfig),
            TIDE_OPERATOR_METRICS_PORT=str(self.metrics_port),
            PYTHONPATH=os.pathsep.join([str(self.source), str(ROOT)]),
            **(extra_env or {}),
        )
        self.proc = subprocess.Popen(
            # ns None: every namespace (one watch, as a cluster-wide install runs)
            [
                str(KOPF),
                "run",
                "-m",
                "tide_operator",
                "--standalone",
                *(["-n", ns] if ns else ["-A"]),
                "--quiet",
            ],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def stats(self) -> tuple[float, float]:
        """(RSS MB, CPU seconds)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / CLK
        rss = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return rss / 2**20, cpu

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed over labels other than the ones kept in the key."""
        out: dict[str, float] = collections.defaultdict(float)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            m = re.match(
                r"(tide_kube_requests_total|tide_redis_round_trips_total|tide_kube_request_seconds_(?:sum|count)"
                r"|tide_gc_pauses_total|tide_gc_pause_seconds_total|tide_gc_pause_longest_seconds)"
                r"(\{[^}]*\})? (\S+)",
                line,
            )
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                key = m.group(1) + "".join(f":{labels[k]}" for k in ("verb", "resource") if k in labels)
                out[key] += float(m.group(3))
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Profiler:
    """py-spy attached to the operator for one window; collapsed stacks go to ``path``."""

    def __init__(self, pid: int, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "-p",
                str(pid),
                "-r",
                "50",
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self, top: int = 25) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return summarize_profile(self.path, top)


def summarize_profile(path: Path, top: int) -> dict[str, Any]:
    """Share of samples in which each function (file:function) is on the stack, and where it is the leaf."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(([^)]*?)(:\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        leaf[frames[-1]] += n
    share = {f: round(c / total, 3) for f, c in inclusive.most_common(top)} if total else {}
    return {
        "samples": total,
        "inclusive": share,
        "leaf": {f: round(c / total, 3) for f, c in leaf.most_common(top)},
    }


class ScaleWatch:
    """Watches Deployments in a namespace; records when each one's spec.replicas last changed.

    Raw JSON events (no model deserialization), so the watcher keeps up with a thousand Deployments
    and the recorded time is when the event arrived, not when a backlog of parsing reached it."""

    def __init__(self, api: client.AppsV1Api, ns: str | None) -> None:
        """``ns`` None: every namespace, keys ``namespace/name``; else keys are names in ``ns``."""
        self.api, self.ns = api, ns
        self.replicas: dict[str, int] = {}
        self.changed: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while not self.stop:
            w = watch.Watch()
            stream = (
                w.stream(self.api.list_namespaced_deployment, self.ns, timeout_seconds=30, deserialize=False)
                if self.ns
                else w.stream(
                    self.api.list_deployment_for_all_namespaces, timeout_seconds=30, deserialize=False
                )
            )
            for ev in stream:
                obj = ev.get("object") or {}
                meta = obj.get("metadata") or {}
                name = meta.get("name") if self.ns else f"{meta.get('namespace')}/{meta.get('name')}"
                n = (obj.get("spec") or {}).get("replicas") or 0
                now = time.monotonic()
                with self.cond:
                    if name and self.replicas.get(name) != n:
                        self.replicas[name] = n
                        self.changed[name] = now
                        self.cond.notify_all()
                if self.stop:
                    w.stop()

    def wait(self, pred: Any, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)


def cpu_seconds(info: Any) -> dict[str, float]:
    """CPU seconds so far of each control-plane process (its pid in the cluster's state.json)."""
    pids = json.loads((info.directory / "state.json").read_text())["pids"]
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def per_second(
    before: dict[str, float], after: dict[str, float], seconds: float, digits: int
) -> dict[str, float]:
    """What each counter of ``after`` (``cpu_seconds``, ``apiserver_requests``) gained per second since
    ``before``."""
    return {k: round((v - before.get(k, 0.0)) / seconds, digits) for k, v in after.items()}


def apiserver_requests(info: Any) -> dict[str, float]:
    """The API server's own request counters, ``verb resource/subresource`` -> count so far."""
    text = subprocess.run(
        [str(info.kubectl), "--kubeconfig", str(info.kubeconfig), "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        key = f"{labels.get('verb')} {labels.get('resource')}" + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        out[key] += float(line.rsplit(" ", 1)[1])
    return out


def local_stack() -> tuple[Any, Any]:
    """The local control plane (started or reused) with the QueueConsumer CRD established, and an admin
    client with room for 32 connections."""
    info = local_cluster.up(verbose=False)
    kubectl(info, "apply", "-f", str(ROOT / "crds" / "queueconsumer.yaml"))
    kubectl(info, "wait", "--for=condition=established", "crd/queueconsumers.tide.dev")
    api_client = info.api_client()
    api_client.configuration.connection_pool_maxsize = 32
    return info, api_client


def setup_ns(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def latency_bench(info: Any, api_client: Any, url: str, bursts: int, interval: float) -> dict[str, Any]:
    ns = f"bench-op-lat-{int(time.time())}"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    setup_ns(core, ns)
    apps.create_namespaced_deployment(ns, deployment("q"))
    custom.create_namespaced_custom_object(
        "tide.dev", "v1alpha1", ns, "queueconsumers", qc("q", url, interval)
    )
    sw = ScaleWatch(apps, ns)
    op = Operator(info, ns, CACHE / "bench-operator-latency.log")
    r = redis.Redis.from_url(url)
    samples = []
    try:
        time.sleep(3)
        for _ in range(bursts):
            sw.wait(lambda: sw.replicas.get("q") == 0, 30)
            # a random phase of the polling grid (a phase derived from the clock repeats: the scale-down
            # that ends each round is itself on the grid)
            time.sleep(0.3 + random.random() * interval)
            t0 = time.monotonic()
            r.lpush("q", *range(500))
            ok = sw.wait(lambda: sw.replicas.get("q") == 10, 30)
            if ok:
                samples.append(sw.changed["q"] - t0)
            r.delete("q")
    finally:
        op.stop()
        sw.stop = True
        r.close()
        delete_namespace(core.api_client, ns)
    samples.sort()
    return {
        "bursts": len(samples),
        "polling_interval_s": interval,
        "p50_s": round(statistics.median(samples), 3),
        "p99_s": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
        "max_s": round(samples[-1], 3),
        "samples_s": [round(s, 3) for s in samples],
    }


def create_all(api_client: Any, ns: str, names: list[str], url: str, interval: float) -> None:
    apps, custom = client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)

    def one(name: str) -> None:
        apps.create_namespaced_deployment(ns, deployment(name))
        custom.create_namespaced_custom_object(
            "tide.dev", "v1alpha1", ns, "queueconsumers", qc(name, url, interval)
        )

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(one, names))


def serving(api_client: Any, prefix: str) -> int:
    """QueueConsumers with conditions in the namespaces starting with ``prefix`` (raw JSON: a list of
    10,000 objects parsed into client models would take the bench seconds)."""
    try:
        resp = client.CustomObjectsApi(api_client).list_cluster_custom_object(
            "tide.dev", "v1alpha1", "queueconsumers", _preload_content=False
        )
        items = json.loads(resp.data)["items"]
    except Exception as exc:  # an API server on two busy cores may cut a long answer: look again
        print(f"listing QueueConsumers failed ({exc!r}); again", flush=True)
        return 0
    return sum(
        1
        for i in items
        if i["metadata"]["namespace"].startswith(prefix) and (i.get("status") or {}).get("conditions")
    )


class Operators:
    """One operator, or ``replicas`` sharded ones (``TIDE_SHARDS``, leases in ``lease_ns``): RSS per
    process, CPU and metrics summed."""

    def __init__(self, info: Any, n: int, replicas: int, shards: int, lease_ns: str) -> None:
        if replicas == 1:
            self.ops = [Operator(info, None, CACHE / f"bench-operator-scale-{n}.log")]
            return
        self.ops = [
            Operator(
                info,
                None,
                CACHE / f"bench-operator-scale-{n}-r{i}.log",
                {"TIDE_SHARDS": str(shards), "TIDE_SHARD_NAMESPACE": lease_ns, "POD_NAME": f"bench-op-{i}"},
            )
            for i in range(replicas)
        ]

    def stats(self) -> tuple[list[float], float]:
        """(RSS MB of each process, CPU seconds of all)."""
        each = [op.stats() for op in self.ops]
        return [rss for rss, _ in each], sum(cpu for _, cpu in each)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for op in self.ops:
            for k, v in op.metrics().items():
                out[k] += v
        return out

    def stop(self) -> None:
        for op in self.ops:
            op.stop()


def leases_split(api_client: Any, ns: str, replicas: int, shards: int) -> bool:
    """Every shard's Lease held, each replica holding its share (ceil(shards / replicas) at most)."""
    items = client.CoordinationV1Api(api_client).list_namespaced_lease(ns).items
    holders = collections.Counter(
        i.spec.holder_identity for i in items if "-shard-" in i.metadata.name and i.spec.holder_identity
    )
    return (
        sum(holders.values()) == shards
        and len(holders) == replicas
        and max(holders.values()) <= -(-shards // replicas)
    )


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def scale_bench(
    info: Any,
    api_client: Any,
    url: str,
    n: int,
    hot: int,
    runs: int,
    interval: float,
    profile: bool,
    per_namespace: int = 100,
    replicas: int = 1,
    shards: int = 8,
) -> dict[str, Any]:
    """N resources in N / per_namespace namespaces, one operator (or ``replicas`` sharded ones) watching
    every namespace; bursts on ``hot`` lists at once (spread over the namespaces), ``runs`` times on
    other lists."""
    prefix = f"bench-op-{n}-{int(time.time())}-"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    namespaces = [f"{prefix}{i:03d}" for i in range(max(1, n // per_namespace))]
    for ns in namespaces:
        setup_ns(core, ns)
    lease_ns = f"{prefix}leases"
    if replicas > 1:
        setup_ns(core, lease_ns)
    t = time.monotonic()
    keys = [f"{namespaces[i % len(namespaces)]}/q{i:05d}" for i in range(n)]
    by_ns: dict[str, list[str]] = collections.defaultdict(list)
    for k in keys:
        ns, name = k.split("/")
        by_ns[ns].append(name)
    for ns, names in by_ns.items():
        create_all(api_client, ns, names, url, interval)
    create_s = time.monotonic() - t
    sw = ScaleWatch(apps, None)
    op = Operators(info, n, replicas, shards, lease_ns)
    r = redis.Redis.from_url(url)
    out: dict[str, Any] = {
        "resources": n,
        "replicas": replicas,
        **({"shards": shards} if replicas > 1 else {}),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "namespaces": len(namespaces),
        "hot": hot,
        "polling_interval_s": interval,
        "create_s": round(create_s, 1),
    }
    per_run: list[dict[str, Any]] = []
    try:
        t = time.monotonic()
        deadline = t + 900
        while replicas > 1 and time.monotonic() < deadline:  # the shards split between the replicas
            if leases_split(api_client, lease_ns, replicas, shards):
                break
            time.sleep(1)
        if replicas > 1:
            out["leases_split_after_s"] = round(time.monotonic() - t, 1)
        while time.monotonic() < deadline:  # all loops up: every resource has a status
            if serving(api_client, prefix) >= n:
                break
            time.sleep(5)
        out["all_serving_after_s"] = round(time.monotonic() - t, 1)
        # every resource has a status, but the operator's later status writes of the start may still be
        # queued (at 10,000, ~120 a second for over a minute, the API server's busiest work): the idle
        # window and the bursts start once the API server sees them stop
        before = apiserver_requests(info)
        while time.monotonic() < deadline:
            time.sleep(5)
            now = apiserver_requests(info)
            writes = now["PATCH queueconsumers/status"] - before.get("PATCH queueconsumers/status", 0.0)
            before = now
            if writes <= 5:
                break
        out["status_writes_settled_after_s"] = round(time.monotonic() - t, 1)
        time.sleep(10)
        # scrapes stay outside the CPU and profile windows: exposing ~9 series a resource is not the loop's cost
        m0 = op.metrics()
        time.sleep(1)
        prof = Profiler(op.ops[0].pid, CACHE / f"bench-operator-profile-idle-{n}.txt") if profile else None
        _rss0, cpu0 = op.stats()
        plane0, requests0 = cpu_seconds(info), apiserver_requests(info)
        time.sleep(20)
        rss1, cpu1 = op.stats()
        plane1, requests1 = cpu_seconds(info), apiserver_requests(info)
        rates = per_second(requests0, requests1, 20, 1)
        out["idle_apiserver_requests_per_s"] = dict(
            sorted(((k, v) for k, v in rates.items() if v), key=lambda kv: -kv[1])
        )
        out["idle_plane_cores"] = per_second(plane0, plane1, 20, 3)
        if prof:
            out["profile_idle"] = prof.stop()
        m1 = op.metrics()
        out["operator_idle_cpu_cores"] = round((cpu1 - cpu0) / 20, 3)
        out["idle_kube_writes_per_s"] = round(
            sum(v - m0.get(k, 0.0) for k, v in m1.items() if k.startswith("tide_kube_requests_total:PATCH"))
            / 21,
            2,
        )
        if "tide_redis_reads_total" in m1:  # resources / interval when every poll keeps to the grid
            out["idle_redis_reads_per_s"] = round(
                (m1["tide_redis_reads_total"] - m0.get("tide_redis_reads_total", 0.0)) / 21, 1
            )
        if "tide_redis_round_trips_total" in m1:
            out["idle_redis_round_trips_per_s"] = round(
                (m1["tide_redis_round_trips_total"] - m0.get("tide_redis_round_trips_total", 0.0)) / 21, 1
            )
        out["idle_rss_mb"] = round(max(rss1), 1)
        if replicas > 1:
            out["idle_rss_mb_per_replica"] = [round(x, 1) for x in rss1]
            out["idle_rss_mb_total"] = round(sum(rss1), 1)
        rss_max = list(rss1)
        step = max(1, n // hot)
        for run in range(runs):
            hot_keys = keys[run % step :: step][:hot]
            time.sleep(random.random() * interval)  # a varied phase against the operator's polling grid
            prof = (
                Profiler(op.ops[0].pid, CACHE / f"bench-operator-profile-burst-{n}.txt")
                if profile and run == 0
                else None
            )
            m_before = op.metrics()
            _, cpu0 = op.stats()
            plane0 = cpu_seconds(info)
            pipe = r.pipeline(transaction=False)
            t0 = time.monotonic()
            for key in hot_keys:
                pipe.lpush(key.split("/")[1], *range(500))
            pipe.execute()
            ok = sw.wait(lambda hk=hot_keys: all(sw.replicas.get(x) == 10 for x in hk), 180)
            elapsed = time.monotonic() - t0
            rss, cpu1 = op.stats()
            plane1 = cpu_seconds(info)
            rss_max = [max(a, b) for a, b in zip(rss_max, rss, strict=True)]
            if prof:
                out["profile_burst"] = prof.stop()
            lat = sorted(sw.changed[x] - t0 for x in hot_keys if sw.replicas.get(x) == 10)
            m_after = op.metrics()  # after the CPU window: the API server's share of the wait
            api = {
                what: round(
                    (
                        m_after[f"tide_kube_request_seconds_sum:{what}"]
                        - m_before.get(f"tide_kube_request_seconds_sum:{what}", 0)
                    )
                    / max(
                        1.0,
                        m_after[f"tide_kube_request_seconds_count:{what}"]
                        - m_before.get(f"tide_kube_request_seconds_count:{what}", 0),
                    ),
                    3,
                )
                for what in ("PATCH:scale", "PATCH:status")
                if f"tide_kube_request_seconds_count:{what}" in m_after
            }
            per_run.append(
                {
                    "all_scaled_s": round(lat[-1], 3) if ok else None,
                    "p50_s": round(statistics.median(lat), 3) if lat else None,
                    "p99_s": round(p99(lat), 3) if lat else None,
                    "scaled": len(lat),
                    "cpu_cores": round((cpu1 - cpu0) / elapsed, 2),
                    # the control plane's processes over the same window (the API server's share)
                    "plane_cores": per_second(plane0, plane1, elapsed, 2),
                    "load_avg": [round(x, 2) for x in os.getloadavg()],
                    "mean_api_call_s": api,
                    "latencies_s": [round(x, 3) for x in lat],
                }
            )
            print(json.dumps({k: v for k, v in per_run[-1].items() if k != "latencies_s"}), flush=True)
            pipe = r.pipeline(transaction=False)
            for key in hot_keys:
                pipe.delete(key.split("/")[1])
            pipe.execute()
            sw.wait(lambda hk=hot_keys: all(sw.replicas.get(x) == 0 for x in hk), 180)
            rss_max = [max(a, b) for a, b in zip(rss_max, op.stats()[0], strict=True)]
            time.sleep(5)
    finally:
        op.stop()
        sw.stop = True
        r.close()
        for ns in namespaces + ([lease_ns] if replicas > 1 else []):
            delete_namespace(core.api_client, ns)
    done = [x for x in per_run if x["all_scaled_s"] is not None]
    out.update(
        runs=len(per_run),
        # the worst burst: every burst must be scaled within the goal, not the median one
        all_hot_scaled_within_s=max(x["all_scaled_s"] for x in done) if len(done) == len(per_run) else None,
        all_hot_scaled_median_s=round(statistics.median(x["all_scaled_s"] for x in done), 3)
        if done
        else None,
        burst_p99_max_s=max(x["p99_s"] for x in done) if done else None,
        hot_p50_s=round(statistics.median(x["p50_s"] for x in done), 3) if done else None,
        burst_cpu_cores=round(statistics.median(x["cpu_cores"] for x in per_run), 2) if per_run else None,
        operator_rss_mb=round(max(rss_max), 1),
        **(
            {
                "operator_rss_mb_per_replica": [round(x, 1) for x in rss_max],
                "operator_rss_mb_total": round(sum(rss_max), 1),
            }
            if replicas > 1
            else {}
        ),
        per_run=per_run,
    )
    return out


def size_record(run: dict[str, Any]) -> dict[str, Any]:
    """The issue's one record per size (worst burst, peak RSS)."""
    record = {
        "resources": run["resources"],
        "replicas": run.get("replicas", 1),
        "rss_mb": run["operator_rss_mb"],  # sharded: the largest replica's peak
        "all_scaled_s": run["all_hot_scaled_within_s"],
        "burst_p99_s": run["burst_p99_max_s"],
        "idle_cpu_cores": run["operator_idle_cpu_cores"],  # sharded: all replicas together
        "operator_venv": OPERATOR_VENV,
    }
    if run.get("replicas", 1) > 1:
        record["rss_mb_per_replica"] = run["operator_rss_mb_per_replica"]
        record["rss_mb_total"] = run["operator_rss_mb_total"]
        record["load_avg_at_start"] = run["load_avg_at_start"]
    return record


def merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's size records replace those of the same (resources, replicas); every other record (the
    wake records another script writes, sizes not run now) is kept."""
    fresh = {(r["resources"], r["replicas"]) for r in new}
    kept = [r for r in old if "resources" not in r or (r["resources"], r.get("replicas")) not in fresh]
    return kept + new


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = results.get("scale", [])
    fig, axes = plt.subplots(1, 1 + max(1, len(scale)), figsize=(5.5 * (1 + max(1, len(scale))), 4))
    lat = results.get("burst_to_patch", {}).get("samples_s")
    if lat:
        axes[0].plot(sorted(lat), [(i + 1) / len(lat) for i in range(len(lat))], drawstyle="steps-post")
        axes[0].set_title(f"one resource: burst -> /scale ({len(lat)} bursts)")
    for ax, many in zip(axes[1:], scale, strict=False):
        for i, run in enumerate(many.get("per_run", [])):
            xs = run["latencies_s"]
            ax.plot(
                xs,
                [(j + 1) / len(xs) for j in range(len(xs))],
                drawstyle="steps-post",
                label=f"burst {i + 1}",
            )
        reps = many.get("replicas", 1)
        rss = (
            f"RSS {many['operator_rss_mb']:.0f} MB"
            if reps == 1
            else f"RSS {' + '.join(f'{x:.0f}' for x in many['operator_rss_mb_per_replica'])} MB"
        )
        ax.set_title(
            f"{many['resources']:,} resources ({many['namespaces']} ns), {reps} replica{'s' * (reps > 1)}, "
            f"bursts on {many['hot']:,}\n{rss}, idle {many['operator_idle_cpu_cores']} cores"
        )
        ax.legend()
    for ax in axes:
        ax.set_xlabel("seconds after the LPUSH")
        ax.set_ylabel("fraction of Deployments scaled")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=50, help="bursts on one resource (latency part)")
    ap.add_argument(
        "--sizes",
        default="1000,10000",
        help="QueueConsumers in the scale part, one run each (comma-separated); 100 per namespace",
    )
    ap.add_argument("--hot-fraction", type=float, default=0.1, help="share of the lists a burst lands on")
    ap.add_argument("--runs", type=int, default=3, help="bursts on other hot lists; the worst is reported")
    ap.add_argument("--interval", type=float, default=1.0, help="pollingIntervalSeconds of every resource")
    ap.add_argument("--replicas", type=int, default=1, help="operator processes (more than 1: sharded)")
    ap.add_argument("--shards", type=int, default=8, help="TIDE_SHARDS with --replicas above 1")
    ap.add_argument(
        "--notifications",
        action="store_true",
        help="the scale part's redis-server with keyspace notifications on (notify-keyspace-events Kl): the "
        "operator re-reads a list on its first push instead of at its next poll",
    )
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--profile", action="store_true", help="sample the operator with py-spy (scale part)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where JSON and plot go")
    ap.add_argument(
        "--operator-src",
        type=Path,
        default=Operator.source,
        help="directory holding the tide_operator package to run (A/B against another revision: "
        "git archive REV operator | tar -x -C /tmp/old, then --operator-src /tmp/old/operator)",
    )
    args = ap.parse_args()
    Operator.source = args.operator_src.resolve()
    if args.profile and not (PY_SPY.exists() or shutil.which("py-spy")):
        ap.error("--profile needs py-spy: pip install py-spy")
    info, api_client = local_stack()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "operator_src": str(
            Operator.source.relative_to(ROOT) if Operator.source.is_relative_to(ROOT) else Operator.source
        ),
    }
    with RedisServer(extra_args=["--notify-keyspace-events", "Kl"] if args.notifications else []) as server:
        if not args.skip_latency:
            results["burst_to_patch"] = latency_bench(
                info, api_client, server.url, args.bursts, args.interval
            )
            print(
                json.dumps({k: v for k, v in results["burst_to_patch"].items() if k != "samples_s"}),
                flush=True,
            )
        if not args.skip_scale:
            results["scale"] = []
            for n in (int(x) for x in args.sizes.split(",")):
                run = scale_bench(
                    info,
                    api_client,
                    server.url,
                    n,
                    max(1, int(n * args.hot_fraction)),
                    args.runs,
                    args.interval,
                    args.profile,
                    replicas=args.replicas,
                    shards=args.shards,
                )
                run["notifications"] = args.notifications
                results["scale"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "per_run"}, indent=1), flush=True)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    api_client.close()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "operator.json"
    # keys this run did not produce (the wake records of bench/operator's wake script, a part skipped) stay
    old = json.loads(out.read_text()) if out.exists() else {}
    records = merge_records(old.get("records", []), [size_record(r) for r in results.get("scale", [])])
    if "scale" in results:  # the scale runs of other (resources, replicas) stay beside this run's
        fresh = {(r["resources"], r.get("replicas", 1)) for r in results["scale"]}
        kept = [r for r in old.get("scale", []) if (r["resources"], r.get("replicas", 1)) not in fresh]
        results["scale"] = sorted(
            kept + results["scale"], key=lambda r: (r["resources"], r.get("replicas", 1))
        )
    results = {**{k: v for k, v in old.items() if k != "many_resources"}, **results, "records": records}
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "operator.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
