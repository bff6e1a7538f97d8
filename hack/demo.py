"""`make demo`: a burst absorbed on the local stack, scaled up and back to zero, with a live table.

Starts (or reuses) the local control plane, a private redis-server, installs the chart, runs the operator
and the worker pods as local processes, pushes a burst in waves, prints a live table, then writes
bench/results/demo.json and bench/results/demo.png and cleans up.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tests.e2e import scenario
from tests.e2e.backends import LocalBackend

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KEYS = ("sent", "processed", "dead_lettered", "lost", "peak_replicas", "seconds_to_first_scale_up",
        "seconds_back_to_zero")  # fmt: skip


def print_row(s: scenario.Sample) -> None:
    bar = "#" * min(40, s.backlog // 500)
    print(f"{s.t:7.1f}s  backlog {s.backlog:7d}  desired {s.desired:2d}  ready {s.ready:2d}  "
          f"processed {s.processed:7d}  {s.rate:8.0f}/s  {bar}", flush=True)  # fmt: skip


def plot(out: scenario.Outcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in out.timeline]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(
        t, [s.backlog for s in out.timeline], color="tab:blue", label="backlog (ready + in flight + retries)"
    )
    ax.set_xlabel("seconds since the first wave")
    ax.set_ylabel("messages", color="tab:blue")
    ax2 = ax.twinx()
    ax2.step(t, [s.desired for s in out.timeline], where="post", color="tab:orange", label="desired replicas")
    ax2.step(
        t,
        [s.ready for s in out.timeline],
        where="post",
        color="tab:green",
        linestyle="--",
        label="ready replicas",
    )
    ax2.set_ylabel("replicas")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center left")
    ax.set_title(
        f"Tide: {out.sent} messages in waves, {out.lost} lost, back to zero at {out.seconds_back_to_zero}s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--kills", type=int, default=2, help="worker processes SIGKILLed during the drain")
    args = parser.parse_args(argv)
    cfg = scenario.Config(messages=args.messages, waves=args.waves, wave_gap_seconds=4.0, kills=args.kills,
                          restart_operator=False)  # fmt: skip
    backend = LocalBackend()
    print("==> starting the local stack (control plane, redis-server, chart, node agent)", flush=True)
    try:
        backend.setup()
        print(f"==> pushing {cfg.messages} messages in {cfg.waves} waves", flush=True)
        out = scenario.run(backend, cfg, on_sample=print_row)
    finally:
        print("==> cleaning up", flush=True)
        backend.teardown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = out.summary()
    record = {k: summary[k] for k in KEYS}
    (RESULTS / "demo.json").write_text(
        json.dumps({**record, "timeline": [asdict(x) for x in out.timeline]}, indent=2)
    )
    plot(out, RESULTS / "demo.png")
    print(json.dumps(record, indent=2))
    print(f"==> wrote {RESULTS / 'demo.json'} and {RESULTS / 'demo.png'}")
    try:
        scenario.check(out, chaos=cfg.kills > 0)
    except AssertionError as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
