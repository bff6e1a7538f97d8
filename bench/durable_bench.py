"""What a durable enqueue costs: Producer with and without ``wait_replicas=1``, through Sentinel.

One master, one replica and three sentinels started for the run (loopback, no persistence). A plain and a
durable producer enqueue call by call in turn (the order swapped every call, so drift on a shared
machine hits both alike); each call is timed, and the result per mode is the median (and p90) time of a
call and the throughput ratio durable / plain from the medians. The replica has finished its
initial sync before the first round (``RedisSentinelSet`` waits for it). Writes bench/results/durable.json
(with the machine's load average before and after) and bench/results/durable.png.

    .venv/bin/python bench/durable_bench.py [--messages 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed_calls(plain: Producer, durable: Producer, bulk: bool, calls: int) -> dict[str, list[float]]:
    """``calls`` enqueue calls of each producer, interleaved call by call (the order swapped every call) so
    a shared machine's drift hits both alike; each call's duration in seconds. A call is one message
    (``enqueue``) or one chunk of 100 (``enqueue_many``)."""
    times: dict[str, list[float]] = {"plain": [], "durable": []}
    pair = (("plain", plain), ("durable", durable))
    for i in range(calls):
        for kind, p in pair if i % 2 == 0 else pair[::-1]:
            bodies = [{"i": i, "j": j} for j in range(CHUNK if bulk else 1)]
            t0 = time.perf_counter()
            if bulk:
                p.enqueue_many(f"bench-{kind}", bodies, chunk=CHUNK)
            else:
                p.enqueue(f"bench-{kind}", bodies[0])
            times[kind].append(time.perf_counter() - t0)
    return times


CHUNK = 100


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000, help="calls of each kind per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    load_before = os.getloadavg()
    out: dict[str, dict[str, float]] = {}
    with RedisSentinelSet(sentinel_password=SENTINEL_PASSWORD) as s:
        settings = RedisSettings(url=s.url(), sentinel_password=SENTINEL_PASSWORD)
        with (
            Producer(settings=settings) as plain,
            Producer(settings=settings, wait_replicas=1, wait_timeout=5) as durable,
        ):
            for bulk in (False, True):
                mode = f"enqueue_many (chunks of {CHUNK})" if bulk else "enqueue (one per call)"
                times: dict[str, list[float]] = {"plain": [], "durable": []}
                for _ in range(args.rounds):
                    plain.client.delete("bench-plain", "bench-durable")
                    for kind, ts in timed_calls(
                        plain, durable, bulk, args.messages // (10 if bulk else 1)
                    ).items():
                        times[kind] += ts
                p50 = {k: statistics.median(v) for k, v in times.items()}
                p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
                size = CHUNK if bulk else 1
                out[mode] = {
                    "calls_each": len(times["plain"]),
                    "plain_p50_ms": round(p50["plain"] * 1e3, 3),
                    "durable_p50_ms": round(p50["durable"] * 1e3, 3),
                    "plain_p90_ms": round(p90["plain"] * 1e3, 3),
                    "durable_p90_ms": round(p90["durable"] * 1e3, 3),
                    "plain_msgs_per_s": round(size / p50["plain"]),
                    "durable_msgs_per_s": round(size / p50["durable"]),
                    "durable_over_plain": round(p50["plain"] / p50["durable"], 3),  # throughput ratio
                }
                print(
                    f"{mode}: per call p50 plain {p50['plain'] * 1e3:.3f} ms, durable {p50['durable'] * 1e3:.3f} ms;"
                    f" durable/plain throughput {p50['plain'] / p50['durable']:.2f}"
                )
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    path = ROOT / "bench" / "results" / "durable.json"
    path.write_text(
        json.dumps(
            {"calls_per_round": args.messages, "rounds": args.rounds, "load_average": load, "modes": out},
            indent=2,
        )
        + "\n"
    )
    plot(out, path.with_suffix(".png"))
    return 0


def plot(out: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(out)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.38
    for i, mode in enumerate(modes):
        for j, (kind, colour) in enumerate((("plain", "#888888"), ("durable", "#1f77b4"))):
            value = out[mode][f"{kind}_msgs_per_s"]
            ax.barh(i + (j - 0.5) * width, value, width, color=colour, label=kind if i == 0 else None)
            ax.text(value, i + (j - 0.5) * width, f" {value:,.0f}/s", va="center", fontsize=8)
    ax.set_yticks(
        range(len(modes)), [f"{m}\ndurable/plain {out[m]['durable_over_plain']:.2f}" for m in modes]
    )
    ax.set_xlabel("messages/s enqueued through Sentinel (from the median call)")
    ax.set_title("Producer: plain vs durable enqueue (WAIT 1 after each push / chunk)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
