"""The API server's floor under a burst at scale: what no controller on this control plane can beat.

The same resources as ``bench.py``'s scale part (N QueueConsumers with their Deployments, 100 per
namespace) and no operator. Each burst, a bare client sets ``--hot`` Deployments to 10 replicas at once:
the operator's own ``tide_operator.kube.Kube`` (aiohttp, its 64 connections), in a process of its own, with
no Redis read, no polling interval and no status write before or after. The same Deployment watch as
``bench.py`` times each change from the moment the client is told to go, and the kube-controller-manager
creates the pods of every scaled Deployment meanwhile, as in ``bench.py``. A controller that reads Redis
first and waits for its poll is slower than this, so when this floor is above the issue's goal (all of a
burst on 1,000 of 10,000 resources scaled within 3 s, its p99 within 2 s) the goal is out of reach here.

    python bench/operator/ceiling.py [--sizes 10000] [--hot 1000] [--runs 3] [--out bench/results]

Writes ``ceiling`` into ``--out/operator.json`` (the other keys are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from tide_local.cleanup import delete_namespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, ScaleWatch, cpu_seconds, create_all, local_stack, p99, per_second, setup_ns


async def _patch_all(keys: list[str], replicas: int) -> None:
    from tide_operator.kube import Kube
    from tide_operator.spec import TargetRef

    kube = Kube()
    targets = [(k.split("/")[0], TargetRef("apps/v1", "Deployment", k.split("/")[1])) for k in keys]
    await kube.get_replicas(*targets[0])  # connect and discover the plural first, as a running operator has
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(kube.set_replicas(ns, target, replicas) for ns, target in targets))
    took, cpu = time.monotonic() - t0, time.process_time() - cpu0
    print(json.dumps({"client_s": round(took, 3), "client_cpu_s": round(cpu, 3)}), flush=True)
    await kube.close()


def patcher(info: Any, keys: list[str], replicas: int) -> subprocess.Popen[str]:
    """The bare client, started and connected, waiting for a line on stdin to send every PATCH."""
    env = {**os.environ, "KUBECONFIG": str(info.kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--patch", str(replicas)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(keys) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"the bare client did not start: {line!r}")
    return proc


def go(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result: dict[str, Any] = json.loads(proc.stdout.readline())
    proc.wait(timeout=60)
    return result


def floor(info: Any, api_client: Any, n: int, hot: int, runs: int) -> dict[str, Any]:
    prefix = f"bench-ceiling-{n}-{int(time.time())}-"
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    namespaces = [f"{prefix}{i:03d}" for i in range(max(1, n // 100))]
    for ns in namespaces:
        setup_ns(core, ns)
    keys = [f"{namespaces[i % len(namespaces)]}/q{i:05d}" for i in range(n)]
    t = time.monotonic()
    for ns in namespaces:
        create_all(
            api_client, ns, [k.split("/")[1] for k in keys if k.startswith(ns + "/")], "redis://x", 1.0
        )
    out: dict[str, Any] = {"resources": n, "hot": hot, "create_s": round(time.monotonic() - t, 1)}
    sw = ScaleWatch(apps, None)
    per_run = []
    try:
        time.sleep(10)
        plane0 = cpu_seconds(info)
        time.sleep(20)
        plane1 = cpu_seconds(info)
        # the control plane with these resources, the bench's own Deployment watch and no operator
        out["idle_plane_cores"] = per_second(plane0, plane1, 20, 3)
        print(json.dumps({"idle_plane_cores": out["idle_plane_cores"]}), flush=True)
        step = max(1, n // hot)
        for run in range(runs):
            hot_keys = keys[run % step :: step][:hot]
            proc = patcher(info, hot_keys, 10)
            cpu0 = cpu_seconds(info)
            t0 = time.monotonic()
            answer = go(proc)
            ok = sw.wait(lambda hk=hot_keys: all(sw.replicas.get(x) == 10 for x in hk), 180)
            lat = sorted(sw.changed[x] - t0 for x in hot_keys if sw.replicas.get(x) == 10)
            window = time.monotonic() - t0
            cpu1 = cpu_seconds(info)
            per_run.append(
                {
                    "all_scaled_s": round(lat[-1], 3) if ok else None,
                    "p50_s": round(statistics.median(lat), 3),
                    "p99_s": round(p99(lat), 3),
                    **answer,
                    # cores each control-plane process used from the go to the last change seen
                    "cores": per_second(cpu0, cpu1, window, 2),
                    "load_avg": [round(x, 2) for x in os.getloadavg()],
                }
            )
            print(json.dumps(per_run[-1]), flush=True)
            go(patcher(info, hot_keys, 0))  # back to zero before the next burst, as bench.py's bursts are
            sw.wait(lambda hk=hot_keys: all(sw.replicas.get(x) == 0 for x in hk), 180)
            time.sleep(10)  # the controller-manager deletes the pods of the last burst
    finally:
        sw.stop = True
        for ns in namespaces:
            delete_namespace(core.api_client, ns)
    done = [r["all_scaled_s"] for r in per_run if r["all_scaled_s"] is not None]
    out.update(
        all_scaled_max_s=max(done) if len(done) == len(per_run) else None,
        all_scaled_median_s=round(statistics.median(done), 3) if done else None,
        p99_max_s=max(r["p99_s"] for r in per_run),
        per_run=per_run,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, help=argparse.SUPPRESS)  # the child: the bare client itself
    ap.add_argument("--sizes", default="10000")
    ap.add_argument("--hot", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.patch is not None:
        asyncio.run(_patch_all(json.loads(sys.stdin.readline()), args.patch))
        return 0
    info, api_client = local_stack()
    result: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "sizes": [floor(info, api_client, int(n), args.hot, args.runs) for n in args.sizes.split(",")],
    }
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    api_client.close()
    print(json.dumps(result, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "operator.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, "ceiling": result}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
