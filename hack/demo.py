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
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2))
    top.plot(
        t,
        [s.backlog for s in out.timeline],
        color="tab:blue",
        label="unfinished (ready + in flight + retries)",
    )
    top.set_ylabel("messages")
    top.set_ylim(bottom=0)
    rate = top.twinx()
    rate.plot(
        t, [s.rate for s in out.timeline], color="tab:gray", linewidth=0.8, label="processed per second"
    )
    rate.set_ylabel("messages / s")
    rate.set_ylim(bottom=0)
    handles = top.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], loc="upper right", framealpha=0.9)
    bottom.step(
        t, [s.desired for s in out.timeline], where="post", color="tab:orange", label="desired replicas"
    )
    bottom.step(t, [s.ready for s in out.timeline], where="post", color="tab:green", linestyle="--",
                label="ready replicas")  # fmt: skip
    bottom.set_ylabel("replicas")
    bottom.set_ylim(bottom=0, top=max([s.desired for s in out.timeline] + [1]) + 1)
    bottom.set_xlabel("seconds since the first wave")
    bottom.legend(loc="upper right", framealpha=0.9)
    top.set_title(
        f"Tide: {out.sent} messages in waves, {out.lost} lost, {out.dead_lettered} dead letters, "
        f"back to zero at {out.seconds_back_to_zero}s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument(
        "--work-ms", type=float, default=20.0, help="milliseconds each job waits, like a call"
    )
    parser.add_argument("--kills", type=int, default=2, help="worker processes SIGKILLed during the drain")
    args = parser.parse_args(argv)
    # Jobs that wait on I/O (20 ms each, 16 at a time per worker) make replicas matter: the backlog drains as
    # fast as there are workers, and a short scale-down window shows replicas stepping down as it falls.
    cfg = scenario.Config(messages=args.messages, waves=args.waves, wave_gap_seconds=4.0, kills=args.kills,
                          restart_operator=False, max_replicas=10, target_backlog_per_replica=1000,
                          concurrency=16, batch_size=32, work_seconds=args.work_ms / 1000,
                          scale_down={"stabilizationSeconds": 3, "periodSeconds": 2, "maxStepPercent": 50})  # fmt: skip
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
        scenario.check(out, chaos=cfg.kills > 0, operator_restart=cfg.restart_operator)
    except AssertionError as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
