"""First push onto an idle queue -> /scale patch, with keyspace notifications and with polling alone.

One operator (``TIDE_OPERATOR_KEYSPACE_EVENTS`` at its default, ``use``) serves two QueueConsumers on the
local stack, both polling every ``--interval`` seconds (default 1): one on a redis-server started with
``notify-keyspace-events Kl`` (woken by the push), one on a redis-server without notifications (polling
alone). Rounds alternate between them, so both are measured in the same run under the same load: wait
until the target is at zero, wait a random part of the polling interval (plus 0.3 s), LPUSH one message,
time until a watch on the Deployment sees ``spec.replicas`` 1; delete the list, wait for zero again.

Appends ``{"wake": "notifications"|"polling", "first_push_to_patch_p50_s", "first_push_to_patch_p99_s", ...}``
records under the key ``wake`` of bench/results/operator.json (what else is in the file stays) and draws
bench/results/operator-wake.png. ``--idle N`` (default 1,000) then measures what waiting costs: N resources
at zero on a server with notifications, all subscribed, operator CPU over 10 s; then the server's
notifications turned off and, once the operator's recheck has unsubscribed them, the same again.

``--beside N`` measures the wake-up at scale instead: the same rounds while the operator also serves N idle
QueueConsumers on the server with notifications (all subscribed first); its records, each with
``"resources"``, go under ``wake.beside``, and the rest of ``wake`` stays.

    python bench/operator/wake.py [--rounds 50] [--interval 1] [--idle 1000] [--skip-latency] [--beside 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from kubernetes import client
from tide_local import cluster as local_cluster
from tide_local.cleanup import delete_namespace
from tide_local.redisproc import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CACHE, ROOT, Operator, ScaleWatch, create_all, deployment, kubectl, qc, setup_ns

MODES = {"notifications": ["--notify-keyspace-events", "Kl"], "polling": []}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(info: Any, api_client: Any, rounds: int, interval: float, beside: int = 0) -> dict[str, Any]:
    ns = f"bench-op-wake-{int(time.time())}"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    setup_ns(core, ns)
    servers = {mode: RedisServer(extra_args=args).start() for mode, args in MODES.items()}
    names = {"notifications": "qn", "polling": "qp"}
    for mode, name in names.items():
        apps.create_namespaced_deployment(ns, deployment(name))
        body = qc(name, servers[mode].url, interval)
        body["spec"]["scaling"]["targetBacklogPerReplica"] = 1
        custom.create_namespaced_custom_object("tide.dev", "v1alpha1", ns, "queueconsumers", body)
    if beside:
        create_all(
            api_client, ns, [f"b{i:05d}" for i in range(beside)], servers["notifications"].url, interval
        )
    sw = ScaleWatch(apps, ns)
    op = Operator(info, ns, CACHE / "bench-operator-wake.log")
    clients = {mode: redis.Redis.from_url(s.url) for mode, s in servers.items()}
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    conditions: dict[str, Any] = {}
    gc_rounds: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(conditions) < len(names):  # every loop has said its mode
            for mode, name in names.items():
                obj = custom.get_namespaced_custom_object("tide.dev", "v1alpha1", ns, "queueconsumers", name)
                for c in obj.get("status", {}).get("conditions", []):
                    if c["type"] == "WakeOnPush":
                        conditions[mode] = {k: c[k] for k in ("status", "reason", "message")}
            time.sleep(0.5)
        print(json.dumps(conditions), flush=True)
        deadline = time.monotonic() + 900
        while (
            beside
            and time.monotonic() < deadline
            and len(clients["notifications"].pubsub_channels()) <= beside
        ):
            time.sleep(
                2
            )  # every idle resource subscribed: the rounds run beside all of them, not their start
        if beside:
            time.sleep(20)  # their first status writes are done
        m0 = op.metrics()
        for i in range(2 * rounds):
            mode = ("notifications", "polling")[i % 2]
            name, r = names[mode], clients[mode]
            sw.wait(lambda n=name: sw.replicas.get(n) == 0, 30)
            time.sleep(0.3 + random.random() * interval)  # a random phase of the polling grid
            t0 = time.monotonic()
            r.lpush(name, "first")
            if sw.wait(lambda n=name: sw.replicas.get(n) == 1, 30):
                samples[mode].append(sw.changed[name] - t0)
            r.delete(name)
        m1 = op.metrics()
        gc_rounds = {  # the operator's collections during the rounds (tide_gc_* metrics)
            "gc_pauses": m1["tide_gc_pauses_total"] - m0["tide_gc_pauses_total"],
            "gc_pause_s": round(m1["tide_gc_pause_seconds_total"] - m0["tide_gc_pause_seconds_total"], 3),
            "gc_longest_since_start_s": round(m1["tide_gc_pause_longest_seconds"], 3),
        }
    finally:
        op.stop()
        sw.stop = True
        for c in clients.values():
            c.close()
        for s in servers.values():
            s.cleanup()
        delete_namespace(core.api_client, ns)
    records = []
    for mode, xs in samples.items():
        records.append(
            {
                "wake": mode,
                "resources": len(names) + beside,
                "first_push_to_patch_p50_s": round(statistics.median(xs), 3) if xs else None,
                "first_push_to_patch_p99_s": round(percentile(xs, 0.99), 3) if xs else None,
                "max_s": round(max(xs), 3) if xs else None,
                "pushes": len(xs),
                "polling_interval_s": interval,
                "condition": conditions.get(mode),
                **gc_rounds,
                "samples_s": [round(x, 3) for x in xs],
            }
        )
    return {"records": records}


def idle_cost(info: Any, api_client: Any, n: int, interval: float) -> dict[str, Any]:
    """The waker's idle cost: ``n`` resources at zero on one server with notifications on (every one of
    them subscribed and sleeping ready to be woken), operator CPU over 10 s; then the server's
    notifications turned off, and the same once the operator's recheck has unsubscribed them."""
    ns = f"bench-op-wake-idle-{int(time.time())}"
    core = client.CoreV1Api(api_client)
    setup_ns(core, ns)
    server = RedisServer(extra_args=["--notify-keyspace-events", "Kl"]).start()
    names = [f"i{i:05d}" for i in range(n)]
    create_all(api_client, ns, names, server.url, interval)
    op = Operator(info, ns, CACHE / "bench-operator-wake-idle.log")
    r = redis.Redis.from_url(server.url)
    out: dict[str, Any] = {"resources": n, "polling_interval_s": interval}

    def cpu(seconds: float = 10.0) -> tuple[float, float]:
        """Operator CPU cores and Kubernetes writes per second over ``seconds``."""
        m0 = op.metrics()
        _, c0 = op.stats()
        time.sleep(seconds)
        _, c1 = op.stats()
        m1 = op.metrics()
        writes = sum(
            v - m0.get(k, 0.0) for k, v in m1.items() if k.startswith("tide_kube_requests_total:PATCH")
        )
        return round((c1 - c0) / seconds, 3), round(writes / seconds, 2)

    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(r.pubsub_channels()) < n:  # every resource subscribed
            time.sleep(2)
        out["subscribed_channels"] = len(r.pubsub_channels())
        time.sleep(20)  # the status writes of WakeOnPush=True (one per resource) are done
        out["operator_idle_cpu_cores_notifications"], out["kube_writes_per_s_notifications"] = cpu()
        out["rss_mb_notifications"] = round(op.stats()[0], 1)
        r.config_set("notify-keyspace-events", "")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and r.pubsub_channels():
            time.sleep(2)
        out["subscribed_channels_after_off"] = len(r.pubsub_channels())
        time.sleep(20)  # the status writes of WakeOnPush=False are done
        out["operator_idle_cpu_cores_off"], out["kube_writes_per_s_off"] = cpu()
    finally:
        op.stop()
        r.close()
        server.cleanup()
        delete_namespace(core.api_client, ns)
    return out


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rec in records:
        xs = sorted(rec["samples_s"])
        if xs:
            label = f"{rec['wake']}: p50 {rec['first_push_to_patch_p50_s']:.3f} s, p99 {rec['first_push_to_patch_p99_s']:.3f} s"
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], drawstyle="steps-post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("seconds from the first LPUSH onto an idle queue to the /scale patch (watch)")
    ax.set_ylabel("fraction of pushes")
    ax.set_title(f"waking from zero, polling every {records[0]['polling_interval_s']:g} s")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=50, help="first pushes per mode")
    ap.add_argument("--interval", type=float, default=1.0, help="pollingIntervalSeconds of both resources")
    ap.add_argument("--idle", type=int, default=1000, help="resources at zero for the idle cost (0: skip)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--beside", type=int, default=0, help="idle resources served during the rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where JSON and plot go")
    ap.add_argument(
        "--operator-src",
        type=Path,
        default=Operator.source,
        help="the tide_operator to run (A/B, as bench.py)",
    )
    args = ap.parse_args()
    Operator.source = args.operator_src.resolve()
    info = local_cluster.up(verbose=False)
    kubectl(info, "apply", "-f", str(ROOT / "crds" / "queueconsumer.yaml"))
    kubectl(info, "wait", "--for=condition=established", "crd/queueconsumers.tide.dev")
    api_client = info.api_client()
    load0 = [round(x, 2) for x in os.getloadavg()]
    out = args.out / "operator.json"
    previous = (json.loads(out.read_text()) if out.exists() else {}).get("wake", {})
    if args.beside:
        api_client.configuration.connection_pool_maxsize = 32
        beside = run(info, api_client, args.rounds, args.interval, args.beside)
        beside["machine"] = {"cpus": os.cpu_count(), "load_avg_at_start": load0,
                             "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
        beside["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        api_client.close()
        for rec in beside["records"]:
            print(json.dumps({k: v for k, v in rec.items() if k != "samples_s"}), flush=True)
        doc = json.loads(out.read_text()) if out.exists() else {}
        doc.setdefault("wake", {})["beside"] = beside
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out} (key 'wake.beside')")
        return 0
    if args.skip_latency:  # the latency part of the last run stays, with its own machine load and time
        result = {k: v for k, v in previous.items() if k in ("records", "machine", "time")}
    else:
        result = run(info, api_client, args.rounds, args.interval)
        result["machine"] = {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load0,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        }
        result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.idle:
        api_client.configuration.connection_pool_maxsize = 32
        load1 = [round(x, 2) for x in os.getloadavg()]
        idle = idle_cost(info, api_client, args.idle, args.interval)
        idle["machine"] = {
            "load_avg_at_start": load1,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        }
        idle["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        result["idle"] = idle
        print(json.dumps(idle), flush=True)
    api_client.close()
    for rec in result["records"]:
        print(json.dumps({k: v for k, v in rec.items() if k != "samples_s"}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc["wake"] = result  # under its own key: the other parts of the file stay as they are
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(result["records"], args.out / "operator-wake.png")
    print(f"wrote {out} (key 'wake') and {args.out / 'operator-wake.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
