"""CPU of the operator's idle loops alone: N real ``Consumer`` loops (the fleet's tasks, the polling grid, the
waker, the read batcher) on one real redis-server, polling idle lists every ``--interval`` seconds, in this
process. The API server is left out: a stand-in answers the replica reads (0) and counts the writes, so the
figure is the loop's own cost, not the API server's (``bench.py`` measures the whole operator against the
local control plane; this one takes a minute instead of fifteen, to try changes of the read path).

    python bench/operator/poll_cost.py [--resources 10000] [--seconds 20] [--interval 1] [--profile]

Prints JSON: polls per second achieved (the goal: resources / interval), CPU cores, CPU microseconds per
poll, Redis round trips per second, writes while idle (must be 0), and with ``--profile`` the functions
py-spy sampled most (own time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack"), str(ROOT / "worker-image")]

from tide_local.redisproc import RedisServer  # noqa: E402
from tide_operator import fleet as fleet_mod  # noqa: E402
from tide_operator import heap  # noqa: E402
from tide_operator.consumer import Shared  # noqa: E402
from tide_operator.fleet import Fleet  # noqa: E402

from bench.operator.bench import qc  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


class StandInKube:
    """Replica reads answer 0; writes are counted (an idle fleet must make none after its first status)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def get_replicas(self, namespace: str, target: Any) -> int:
        self.calls["get_replicas"] += 1
        return 0

    async def set_replicas(self, namespace: str, target: Any, replicas: int) -> int:
        self.calls["set_replicas"] += 1
        return replicas

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls["patch_status"] += 1

    async def close(self) -> None:
        pass


def body(i: int, url: str, interval: float) -> dict[str, Any]:
    """bench.py's QueueConsumer, in 100 namespaces, with what the API server would add."""
    ns, name = f"ns{i // 100:03d}", f"q{i:05d}"
    out = qc(name, url, interval)
    out["metadata"] = {"name": name, "namespace": ns, "uid": f"uid-{i}", "generation": 1}
    return out


async def measure(
    url: str,
    n: int,
    seconds: float,
    interval: float,
    profile: bool,
    tune: bool = True,
    freeze: float = heap.FREEZE_SECONDS,
) -> dict[str, Any]:
    if tune:
        heap.tune_gc()  # as the operator's startup handler does
    kube = StandInKube()
    shared = Shared()
    shared.kube = kube  # type: ignore[assignment]
    fleet = Fleet(shared)
    fleet.start()
    freezer = asyncio.create_task(heap.collect_and_freeze(freeze)) if tune else None
    for i in range(n):
        fleet.event(None, body(i, url, interval))
    # warm: every loop has polled and written its first status
    deadline = time.monotonic() + 120
    while kube.calls["patch_status"] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(3 * interval)
    reads0 = await _reads()
    batchers = list(shared.pool._batchers.values())
    trips0 = sum(b.round_trips for b in batchers)
    writes0 = kube.calls["patch_status"] + kube.calls["set_replicas"]
    spy = None
    if profile:
        out = ROOT / ".cache" / f"poll-cost-{n}.txt"
        spy = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "-p",
                str(os.getpid()),
                "-r",
                "50",
                "-f",
                "raw",
                "-o",
                str(out),
                "-d",
                str(int(seconds)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    reads1 = await _reads()
    trips1 = sum(b.round_trips for b in batchers)
    writes1 = kube.calls["patch_status"] + kube.calls["set_replicas"]
    elapsed = t1 - t0
    polls = reads1 - reads0
    result: dict[str, Any] = {
        "resources": n,
        "interval_s": interval,
        "polls_per_s": round(polls / elapsed, 1),
        "polls_goal_per_s": round(n / interval, 1),
        "cpu_cores": round((c1 - c0) / elapsed, 3),
        "cpu_us_per_poll": round((c1 - c0) * 1e6 / max(1, polls), 1),
        "redis_round_trips_per_s": round((trips1 - trips0) / elapsed, 1),
        "idle_writes": writes1 - writes0,
        "gc_thresholds": list(gc.get_threshold()),
        "rss_mb": round(
            int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1
        ),
        "full_collections": gc.get_stats()[2]["collections"],
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    if freezer is not None:
        freezer.cancel()
    await fleet.close()
    await shared.close()
    if spy is not None:
        spy.wait()
        result["profile_top_own"] = _top(ROOT / ".cache" / f"poll-cost-{n}.txt")
    return result


async def _reads() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("tide_redis_reads_total") or 0.0


def _top(path: Path, top: int = 30) -> list[tuple[str, float]]:
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true", help="sample this process with py-spy")
    ap.add_argument("--default-gc", action="store_true", help="CPython's collector thresholds (A/B)")
    ap.add_argument(
        "--freeze-seconds", type=float, default=heap.FREEZE_SECONDS, help="collect-and-freeze period"
    )
    ap.add_argument(
        "--gc-thresholds", help="collector thresholds to try instead of heap.GC_THRESHOLDS: a,b,c"
    )
    args = ap.parse_args()
    if args.gc_thresholds:
        heap.GC_THRESHOLDS = tuple(int(x) for x in args.gc_thresholds.split(","))  # type: ignore[assignment]
    logging.basicConfig(level=logging.WARNING)
    fleet_mod.log.setLevel(logging.WARNING)
    kopf.event = lambda *a, **k: None  # type: ignore[assignment]  # no API server to post Events to
    with RedisServer() as server:
        out = asyncio.run(
            measure(
                server.url,
                args.resources,
                args.seconds,
                args.interval,
                args.profile,
                not args.default_gc,
                args.freeze_seconds,
            )
        )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
