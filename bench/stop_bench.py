"""How fast an idle worker stops: `tide worker` next to RQ, Dramatiq, Celery, arq, SAQ and BullMQ, each as
bench/worker_bench.py runs it, on one private redis-server started for the run.

A scale-down or a rollout stops pods with SIGTERM, and a pod counts (and holds its node's share) until
its process exits: an idle worker that takes seconds to go costs those seconds on every pod it stops. For
every system and mode: preload a few messages, start one worker process, wait until its own signal says
all of them were processed (bench/worker_bench.py's), leave it idle for ``--idle`` seconds (so it is
waiting on Redis, as between bursts), send SIGTERM to its process group and time until the process
exits. ``--runs`` rounds per mode; the median and the slowest are reported. A worker still running
10 s after the signal is recorded at 10 s (``"timed_out": true``) and SIGKILLed.

``--baseline GIT_REF`` also runs Tide's modes with ``tide_worker`` as of that commit, in the same run.
Results go to bench/results/stop.json and bench/results/stop.png. Usage:

    .venv/bin/python bench/stop_bench.py [--runs 7] [--only tide,rq,...] [--baseline HEAD~1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack"), str(ROOT / "worker-image")]

from tide_local.redisproc import RedisServer  # noqa: E402

from bench import worker_bench as wb  # noqa: E402

MESSAGES = 50
STOP_LIMIT = 10.0  # seconds after SIGTERM before a worker is SIGKILLed (and recorded at this)


def modes(baseline: tuple[str, Path] | None) -> list[wb.Config]:
    """Tide's sync and async paths at their defaults and one message at a time, and every peer's modes
    from bench/worker_bench.py (the stop path differs with the fetch, not with the batch size)."""
    n = MESSAGES
    tide = [
        wb.tide_config("defaults (sync handler: the direct lane)", n, None, None),
        wb.tide_config("sync handler, --batch-size 100", n, None, 100),
        wb.tide_config("async handler, --concurrency 16", n, 16, None, "anoop"),
    ]
    if baseline:
        ref, src = baseline
        tide += [
            wb.tide_config(f"defaults (sync handler: the direct lane) at {ref}", n, None, None, src=src),
            wb.tide_config(f"async handler, --concurrency 16 at {ref}", n, 16, None, "anoop", src=src),
        ]
    # every peer mode but rq's burst mode, which exits once the queue is empty
    peers = [
        c
        for c in wb.configs(n, {"peer": n, "slow": n})
        if c.system not in ("tide", "raw") and "burst" not in c.mode
    ]
    return tide + peers


def stop_once(cfg: wb.Config, server: RedisServer, log: Path, idle: float) -> tuple[float, bool]:
    r = server.client()
    r.flushall()
    cfg.preload(r, cfg.messages)
    env = {k: v for k, v in os.environ.items() if k not in wb.APP_KNOBS}
    env |= {"BENCH_REDIS_URL": server.url, **cfg.env}
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [cfg.env.get("PYTHONPATH")]), str(ROOT)])
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cfg.command(server.url), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wb.wait_for(lambda: cfg.done(r, cfg.messages), 120, "the preloaded messages to be done", proc)
        time.sleep(idle)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} while idle")
        ended: list[float] = []
        # a blocking wait in a thread: Popen.wait(timeout) polls, at up to 50 ms a turn
        waiter = threading.Thread(target=lambda: (proc.wait(), ended.append(time.perf_counter())))
        t0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGTERM)
        waiter.start()
        waiter.join(STOP_LIMIT)
        if not ended:
            return STOP_LIMIT, True
        return ended[0] - t0, False
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        wb.stop(proc)
        r.close()


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(records, key=lambda rec: rec["stop_p50_s"], reverse=True)
    labels = [wb.label(rec) for rec in rows]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    bars = ax.barh(
        labels,
        [rec["stop_p50_s"] for rec in rows],
        xerr=[[0] * len(rows), [rec["stop_max_s"] - rec["stop_p50_s"] for rec in rows]],
        color=["#1f77b4" if rec["system"] == "tide" else "#ff7f0e" for rec in rows],
        hatch=["//" if rec.get("defaults") else "" for rec in rows],
        edgecolor="black",
        linewidth=0.3,
    )
    ax.bar_label(bars, labels=[f"{rec['stop_p50_s']:.2f} s" for rec in rows], padding=3, fontsize=8)
    ax.set_xlabel("seconds from SIGTERM to exit, idle worker (median of runs; whisker: slowest)")
    ax.set_title("Stopping an idle worker (hatched: the system at its defaults)")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--idle", type=float, default=3.0, help="seconds idle before the signal")
    p.add_argument("--only", help="comma-separated systems (tide,rq,dramatiq,celery,arq,saq,bullmq)")
    p.add_argument("--baseline", metavar="GIT_REF", help="also run Tide's modes as of this commit")
    p.add_argument("--out", type=Path, default=wb.RESULTS)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the worker and redis-server
    baseline = None
    if args.baseline:
        baseline = (args.baseline, wb.checkout_package(args.baseline, Path(tempfile.mkdtemp(prefix="tide-"))))
    only = set(args.only.split(",")) if args.only else None
    todo = [c for c in modes(baseline) if only is None or c.system in only]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "stop-bench.log"
    log.write_bytes(b"")
    records: list[dict[str, Any]] = []
    with RedisServer() as server:
        os.environ["BENCH_REDIS_URL"] = server.url  # the peers' app modules read it on import
        for cfg in todo:
            times: list[float] = []
            timed_out = 0
            try:
                for _ in range(args.runs):
                    took, out = stop_once(cfg, server, log, args.idle)
                    times.append(took)
                    timed_out += out
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                print(f"{cfg.system}: {cfg.mode}: failed: {exc} (see {log})", flush=True)
                continue
            rec = {
                "system": cfg.system,
                "mode": cfg.mode,
                "defaults": cfg.defaults,
                "stop_p50_s": round(statistics.median(times), 3),
                "stop_max_s": round(max(times), 3),
                "runs": len(times),
                "timed_out": timed_out,
                "idle_s": args.idle,
            }
            records.append(rec)
            print(f"{cfg.system}: {cfg.mode}: p50 {rec['stop_p50_s']:.2f} s, slowest {rec['stop_max_s']:.2f} s"
                  + (f", {timed_out} past {STOP_LIMIT:g} s" if timed_out else ""), flush=True)  # fmt: skip
    (args.out / "stop.json").write_text(json.dumps(records, indent=1) + "\n")
    plot(records, args.out / "stop.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
