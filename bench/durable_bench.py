"""What a durable enqueue costs: Producer with and without ``wait_replicas=1``, through Sentinel.

One master, one replica and three sentinels started for the run (loopback, no persistence). Each mode
enqueues the same messages, alternating modes per round so drift on a shared machine hits both; the
result is the ratio durable / plain per mode, medians over the rounds. Writes bench/results/durable.json.

    .venv/bin/python bench/durable_bench.py [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

from tide_local.redisproc import RedisSentinelSet  # noqa: E402
from tide_worker.connection import RedisSettings  # noqa: E402
from tide_worker.producer import Producer  # noqa: E402

SENTINEL_PASSWORD = "bench-sentinel"


def run_once(settings: RedisSettings, durable: bool, bulk: bool, n: int) -> float:
    with Producer(settings=settings, wait_replicas=1 if durable else 0, wait_timeout=5) as p:
        p.client.delete("bench")
        bodies = [{"i": i} for i in range(n)]
        t0 = time.perf_counter()
        if bulk:
            p.enqueue_many("bench", bodies, chunk=100)
        else:
            for b in bodies:
                p.enqueue("bench", b)
        elapsed = time.perf_counter() - t0
        assert p.client.llen("bench") == n
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with RedisSentinelSet(sentinel_password=SENTINEL_PASSWORD) as s:
        settings = RedisSettings(url=s.url(), sentinel_password=SENTINEL_PASSWORD)
        for _ in range(args.rounds):
            for bulk in (False, True):
                mode = "enqueue_many (chunks of 100)" if bulk else "enqueue (one per call)"
                for durable in (False, True):
                    rate = run_once(settings, durable, bulk, args.messages * (10 if bulk else 1))
                    by_mode = results.setdefault(mode, {})
                    by_mode.setdefault("durable" if durable else "plain", []).append(rate)
    out = {}
    for mode, r in results.items():
        plain, durable = statistics.median(r["plain"]), statistics.median(r["durable"])
        out[mode] = {"plain_msgs_per_s": round(plain), "durable_msgs_per_s": round(durable),
                     "durable_over_plain": round(durable / plain, 3)}  # fmt: skip
        print(f"{mode}: durable/plain = {durable / plain:.2f} (plain {plain:.0f}/s, durable {durable:.0f}/s)")
    path = ROOT / "bench" / "results" / "durable.json"
    path.write_text(
        json.dumps({"messages": args.messages, "rounds": args.rounds, "modes": out}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
