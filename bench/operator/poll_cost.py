"""CPU of the operator's idle loops alone: N real ``Consumer`` loops (the fleet's tasks, the polling grid, the
waker, the read batcher) on one real redis-server, polling idle lists every ``--interval`` seconds, in this
process. The API server is left out: a stand-in answers the replica reads (0) and counts the writes, so the
figure is the loop's own cost, not the API server's (``bench.py`` measures the whole operator against the
local control plane; this one takes a minute instead of fifteen, to try changes of the read path).

    python bench/operator/poll_cost.py [--resources 10000] [--seconds 20] [--interval 1] [--profile]

Prints JSON: polls per second achieved (the goal: resources / interval), CPU cores, CPU microseconds per
poll, Redis round trips per second, writes while idle (must be 0), the collector's pauses in the window
(``gc_pause_max_ms`` by generation), how fast the young collection's count grows and what one young
collection at the end costs (``young_collection_ms``), the event loop's lag (a 5 ms timer: what a keyspace
event or a burst's read waits behind), and with ``--profile`` the functions py-spy sampled most (own time).
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
    """Replica reads answer what was last written (0 at first); writes are counted (an idle fleet must make
    none after its first status), and the time of each /scale write is kept per target (``--wake``)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.replicas: dict[str, int] = {}
        self.scaled: dict[str, asyncio.Event] = {}

    async def get_replicas(self, namespace: str, target: Any) -> int:
        self.calls["get_replicas"] += 1
        return self.replicas.get(_target(namespace, target), 0)

    async def set_replicas(self, namespace: str, target: Any, replicas: int) -> int:
        self.calls["set_replicas"] += 1
        key = _target(namespace, target)
        self.replicas[key] = replicas
        event = self.scaled.get(key)
        if event is not None:
            event.set()
        return replicas

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls["patch_status"] += 1

    async def close(self) -> None:
        pass


def _target(namespace: str, target: Any) -> str:
    return f"{namespace}/{getattr(target, 'name', target)}"


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
    wake_rounds: int = 0,
) -> dict[str, Any]:
    if tune:
        heap.tune_gc()  # as the operator's startup handler does
    kube = StandInKube()
    shared = Shared()
    shared.kube = kube  # type: ignore[assignment]
    fleet = Fleet(shared)
    fleet.start()
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
    pauses = GcPauses()
    stalls: list[float] = []
    lag = asyncio.create_task(_loop_lag(stalls))
    c0, t0 = time.process_time(), time.monotonic()
    young0 = gc.get_count()[0]
    with pauses:
        await asyncio.sleep(seconds)
    c1, t1 = time.process_time(), time.monotonic()
    young1 = gc.get_count()[0]
    lag.cancel()
    # what the next young collection will cost the event loop: it walks what the loops hold right now
    g0 = time.perf_counter()
    gc.collect(0)
    young_ms = (time.perf_counter() - g0) * 1e3
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
        "gc_pause_max_ms": {str(g): round(max(ms), 1) for g, ms in sorted(pauses.ms.items())},
        "gc_pauses": {str(g): len(ms) for g, ms in sorted(pauses.ms.items())},
        # what brings the next young collection nearer (its threshold is gc_thresholds[0]); None when
        # a collection reset the count within the window
        "young_count_per_s": None if pauses.ms else round((young1 - young0) / (t1 - t0), 1),
        "young_collection_ms": round(young_ms, 1),
        # how late a 5 ms timer fired: what a keyspace event or a burst's read waits behind
        "loop_stall_p99_ms": round(sorted(stalls)[int(0.99 * len(stalls))], 1) if stalls else None,
        "loop_stall_max_ms": round(max(stalls), 1) if stalls else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    if spy is not None:
        spy.wait()
        result["profile_top_own"] = _top(ROOT / ".cache" / f"poll-cost-{n}.txt")
    if wake_rounds:
        result.update(await _wake(url, n, kube, wake_rounds, interval))
    await fleet.close()
    await shared.close()
    return result


async def _wake(url: str, n: int, kube: StandInKube, rounds: int, interval: float) -> dict[str, Any]:
    """First push onto the queue of an idle resource at zero -> its /scale write, beside the other n - 1
    (all subscribed: the server publishes keyspace events), at a random phase of the grid each time."""
    import random

    import redis.asyncio as aredis

    rng = random.Random(7)
    client = aredis.Redis.from_url(url)
    samples: list[float] = []
    try:
        for _ in range(rounds):
            i = rng.randrange(n)
            meta = body(i, url, interval)["metadata"]
            key, target = meta["name"], f"{meta['namespace']}/{meta['name']}"
            event = kube.scaled[target] = asyncio.Event()
            await asyncio.sleep(rng.uniform(0.3, 0.3 + interval))
            t0 = time.perf_counter()
            await client.lpush(key, "first")
            try:
                await asyncio.wait_for(event.wait(), 10)
                samples.append(time.perf_counter() - t0)
            except TimeoutError:
                pass
            del kube.scaled[target]
            await client.delete(key)
            kube.replicas[target] = 0  # back at zero: subscribed again after its next poll
            await asyncio.sleep(2 * interval)
    finally:
        await client.aclose()
    samples.sort()
    return {
        "wake_rounds": rounds,
        "wake_scaled": len(samples),
        "wake_p50_ms": round(1e3 * samples[len(samples) // 2], 1) if samples else None,
        "wake_p99_ms": round(1e3 * samples[min(len(samples) - 1, int(0.99 * len(samples)))], 1)
        if samples
        else None,
        "wake_samples_ms": [round(1e3 * x, 1) for x in samples],
    }


class GcPauses:
    """The duration of every collection while inside the ``with``, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.ms: dict[int, list[float]] = collections.defaultdict(list)
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.ms[info["generation"]].append((time.perf_counter() - self._start) * 1e3)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)


async def _loop_lag(out: list[float], every: float = 0.005) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(every)
        out.append((time.perf_counter() - t - every) * 1e3)


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
    ap.add_argument(
        "--wake",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="then this many first pushes onto idle resources' queues, each timed to its /scale write"
        " (the server publishes keyspace events: every resource at zero is subscribed)",
    )
    ap.add_argument("--default-gc", action="store_true", help="CPython's collector thresholds (A/B)")
    ap.add_argument(
        "--gc-thresholds", help="collector thresholds to try instead of heap.GC_THRESHOLDS: a,b,c"
    )
    args = ap.parse_args()
    if args.gc_thresholds:
        heap.GC_THRESHOLDS = tuple(int(x) for x in args.gc_thresholds.split(","))  # type: ignore[assignment]
    logging.basicConfig(level=logging.WARNING)
    fleet_mod.log.setLevel(logging.WARNING)
    kopf.event = lambda *a, **k: None  # type: ignore[assignment]  # no API server to post Events to
    extra = ["--notify-keyspace-events", "Kl"] if args.wake else []
    with RedisServer(extra_args=extra) as server:
        out = asyncio.run(
            measure(
                server.url,
                args.resources,
                args.seconds,
                args.interval,
                args.profile,
                not args.default_gc,
                args.wake,
            )
        )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
