"""Where the operator's memory goes with N QueueConsumers: one operator on the local stack, N resources (each
with its own Deployment, idle lists on one redis-server), then the RSS once every resource has a status and,
with ``--trace``, a tracemalloc/gc breakdown from ``bench/operator/memprobe.py`` (JSON to ``--out``).

    python bench/operator/memory.py [--resources 1000] [--trace] [--out .cache/mem.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client
from tide_local import cluster as local_cluster
from tide_local.cleanup import delete_namespace
from tide_local.redisproc import RedisServer, free_port

from bench import CACHE, KOPF, ROOT, create_all, kubectl, setup_ns


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--trace", action="store_true", help="run under tracemalloc and dump a breakdown")
    ap.add_argument(
        "--process", action="store_true", help="no tracemalloc: threads, sockets, RSS after malloc_trim"
    )
    ap.add_argument("--out", type=Path, default=CACHE / "memory.json")
    ap.add_argument("--idle", type=float, default=15.0, help="seconds to wait once every resource serves")
    args = ap.parse_args()
    info = local_cluster.up(verbose=False)
    kubectl(info, "apply", "-f", str(ROOT / "crds" / "queueconsumer.yaml"))
    api_client = info.api_client()
    api_client.configuration.connection_pool_maxsize = 32
    custom = client.CustomObjectsApi(api_client)
    ns = f"bench-mem-{int(time.time())}"
    core = client.CoreV1Api(api_client)
    setup_ns(core, ns)
    names = [f"q{i:05d}" for i in range(args.resources)]
    dump = args.out.with_suffix(".trace.json")
    with RedisServer() as server:
        create_all(api_client, ns, names, server.url, 1.0)
        env = dict(
            os.environ,
            KUBECONFIG=str(info.kubeconfig),
            TIDE_OPERATOR_METRICS_PORT=str(free_port()),
            PYTHONPATH=os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
            TIDE_MEMPROBE_OUT=str(dump),
            TIDE_MEMPROBE_TRACE="1" if args.trace else "0",
        )
        run = ["run", "-m", "tide_operator", "--standalone", "-n", ns, "--quiet"]
        argv = (
            [sys.executable, str(ROOT / "bench/operator/memprobe.py"), *run]
            if args.trace or args.process
            else [str(KOPF), *run]
        )
        log = (CACHE / "bench-memory.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 600:
                items = custom.list_namespaced_custom_object("tide.dev", "v1alpha1", ns, "queueconsumers")[
                    "items"
                ]
                if sum(1 for i in items if (i.get("status") or {}).get("conditions")) >= len(names):
                    break
                time.sleep(2)
            serving = time.monotonic() - t0
            time.sleep(args.idle)
            out = {
                "resources": len(names),
                "serving_after_s": round(serving, 1),
                "rss_mb": round(rss_mb(proc.pid), 1),
            }
            if args.trace or args.process:
                proc.send_signal(signal.SIGUSR1)
                for _ in range(600):
                    time.sleep(1)
                    if dump.exists() and dump.stat().st_mtime > time.time() - 60:
                        time.sleep(2)
                        break
                out["trace"] = json.loads(dump.read_text())
            args.out.write_text(json.dumps(out, indent=1) + "\n")
            print(json.dumps({k: v for k, v in out.items() if k != "trace"}))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            delete_namespace(api_client, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
