"""`make bench-sim`: the simulator validated against the real KEDA/Tide runs, then past one machine.

1. Validation: the traces of ``bench/results/vs-keda.json`` (flash) and of the long-jobs run on feat/keda
   (commit 8057dcd, read with ``git show`` when the file here has no ``long`` records), replayed with the
   same scaler configurations (bench/vs_keda.py) and a world calibrated from those runs' own timelines
   (per-pod rate, the machine's total rate, pod start-up). Each system is replayed over many seeds (the loops'
   phases against the trace); the figures are the seeds' median and range, and sim/real ratios.
2. A week-long bursty trace (seeded: diurnal background, idle nights, bursts) on a cluster (pods start in
   5 s, every pod its own capacity), three seeds.
3. 10,000 queues, each an hour of its own traffic (90 % short jobs, 10 % jobs of minutes), summed and as
   per-queue distributions.

Writes bench/results/sim.json, sim-validation.png, sim-week.png and sim-many.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tide_operator import policy  # noqa: E402

from bench.sim import traces  # noqa: E402
from bench.sim.loops import KedaConfig, Result, Trace, keda_defaults, keda_tuned, simulate, tide_scaling  # noqa: E402
from bench.sim.world import WorldConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SYSTEMS = ("tide", "keda-tuned", "keda-defaults")
# Tide with the drains-first and fewest-pods rules off (policy.SPARE_STARTUPS 0), on the same loop phases as "tide":
# what the rule changes
TIDE_OFF = "tide (drains-first off)"
ARMS = (*SYSTEMS, TIDE_OFF)
SPARE_STARTUPS = policy.SPARE_STARTUPS
LONG_COMMIT = "8057dcd"  # feat/keda: bench: long-jobs trace results
TIDE_COOLDOWN = 30.0  # bench/vs_keda.py TIDE_COOLDOWN (Tide's default), given to keda-tuned
MAX_REPLICAS = 10  # bench/vs_keda.py MAX_REPLICAS
CLUSTER_STARTUP = 5.0  # scale runs: a pod on a node with the image cached, to Ready
# waits are summed over queues in a histogram: 10 ms bins to 60 s, then 1 s bins to 3 h
WAIT_EDGES = np.concatenate([np.arange(0, 60, 0.01), np.arange(60, 3 * 3600 + 1, 1.0)])


def scalers(system: str, target: int, max_replicas: int) -> dict[str, Any]:
    """The scaler of each system as bench/vs_keda.py configures it: Tide at its defaults (the trace's
    target and maxReplicas), KEDA tuned or at its defaults with listLength = the same target."""
    if system == "tide":
        return {"tide": tide_scaling(minReplicas=0, maxReplicas=max_replicas, targetBacklogPerReplica=target)}
    keda: KedaConfig = (
        keda_tuned(target, max_replicas, TIDE_COOLDOWN)
        if system == "keda-tuned"
        else keda_defaults(target, max_replicas)
    )
    return {"keda": keda}


def sim(trace: Trace, cfg: WorldConfig, system: str, target: int, max_replicas: int, **kw: Any) -> Result:
    """``simulate`` one arm: a system of SYSTEMS with its scaler, or TIDE_OFF (Tide, the rule off)."""
    policy.SPARE_STARTUPS = 0.0 if system == TIDE_OFF else SPARE_STARTUPS
    base = "tide" if system == TIDE_OFF else system
    try:
        r = simulate(trace, cfg, base, **kw, **scalers(base, target, max_replicas))
    finally:
        policy.SPARE_STARTUPS = SPARE_STARTUPS
    r.system = system
    return r


# --- 1. validation ----------------------------------------------------------------------------------------


def real_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The real runs: bench/results/vs-keda.json, plus the long-jobs records from feat/keda when absent."""
    path = RESULTS / "vs-keda.json"
    records = json.loads(path.read_text())
    source = {rec["trace"]: "bench/results/vs-keda.json" for rec in records}
    if "long" not in source:
        try:
            raw = subprocess.run(
                ["git", "show", f"{LONG_COMMIT}:bench/results/vs-keda.json"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            print(f"    (no long-jobs records: git show {LONG_COMMIT} failed: {exc})", flush=True)
        else:
            longs = [rec for rec in json.loads(raw) if rec["trace"] == "long"]
            records += longs
            if longs:
                source["long"] = f"git show {LONG_COMMIT}:bench/results/vs-keda.json (feat/keda)"
    return records, source


def _rows(rec: dict[str, Any]) -> list[tuple[float, int, int, int]]:
    tl = rec["timeline"]
    return list(zip(tl["t"], tl["backlog"], tl["replicas"], tl["ready"], strict=True))


def calibrate(records: list[dict[str, Any]]) -> dict[str, float]:
    """The world of the real runs, measured from their own timelines (sampled every 0.5 s)."""
    flash = [r for r in records if r["trace"] == "flash"]
    # one Ready pod draining: messages/s of one pod (16 lanes of 20 ms jobs, plus the worker's overhead)
    one_pod = []
    for rec in flash:
        seg = [(t, b) for t, b, spec, ready in _rows(rec) if spec == 1 and ready == 1 and 1000 < b < 19000]
        if len(seg) >= 4:
            one_pod.append((seg[0][1] - seg[-1][1]) / (seg[-1][0] - seg[0][0]))
    # ten Ready pods draining: what the shared 2-core machine (Redis, workers, control plane) gave in all
    full = []
    for rec in flash:
        seg = [(t, b) for t, b, spec, ready in _rows(rec) if ready == MAX_REPLICAS and 1000 < b < 16000]
        if len(seg) >= 3:
            full.append((seg[0][1] - seg[-1][1]) / (seg[-1][0] - seg[0][0]))
    # a scale-up to the first sample whose Ready count reached it: pod start-up (to +-0.5 s)
    delays = []
    for rec in records:
        rows = _rows(rec)
        for k in range(1, len(rows)):
            if rows[k][2] > rows[k - 1][2]:
                want = rows[k][2]
                for j in range(k, len(rows)):
                    if rows[j][3] >= want:
                        delays.append(rows[j][0] - (rows[k - 1][0] + rows[k][0]) / 2)
                        break
    return {
        "pod_rate_msgs_s": round(statistics.median(one_pod), 1) if one_pod else 745.0,
        "machine_rate_msgs_s": round(statistics.median(full), 1) if full else 3400.0,
        "startup_s": round(max(0.1, statistics.median(delays)), 2) if delays else 1.0,
        "one_pod_samples": len(one_pod),
        "full_samples": len(full),
        "startup_samples": len(delays),
    }


def validation_worlds(cal: dict[str, float]) -> dict[str, tuple[Trace, WorldConfig, int]]:
    """The traces of the real runs with their worker settings (bench/vs_keda.py) and the calibrated world."""
    flash_cfg = WorldConfig(
        concurrency=16,
        batch=32,  # TIDE_BATCH_SIZE 32
        job_seconds=16 / cal["pod_rate_msgs_s"],  # 20 ms of I/O plus the worker's own time per message
        startup=cal["startup_s"],
        grace=300.0,  # the generated shutdown grace: the handler timeout (bench/vs_keda.py worker_env)
        machine_rate=cal["machine_rate_msgs_s"],
    )
    long_cfg = WorldConfig(concurrency=1, batch=1, startup=cal["startup_s"], grace=300.0, discrete=True)
    return {
        "flash": (traces.flash(), flash_cfg, 10),
        "long": (traces.long_jobs(), long_cfg, 1),
        "waves": (traces.waves(), flash_cfg, 10),  # the flash worker
    }


def _spec_at(rows: list[tuple[float, int, int]], t: float) -> int:
    """The spec replicas of a change list [(t, spec, ready)] at time t."""
    n = 0
    for at, spec, _ in rows:
        if at > t:
            break
        n = spec
    return n


def _spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(vals), 2),
        "min": round(min(vals), 2),
        "max": round(max(vals), 2),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def validate(records: list[dict[str, Any]], cal: dict[str, float], seeds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (trace, cfg, target) in validation_worlds(cal).items():
        per: dict[str, Any] = {}
        for system in SYSTEMS:
            real = next((r for r in records if r["trace"] == name and r["system"] == system), None)
            if real is None:
                continue
            runs = [
                simulate(
                    trace,
                    cfg,
                    system,
                    dt=0.1,
                    seed=s,
                    sample_every=0.5,
                    **scalers(system, target, MAX_REPLICAS),
                )
                for s in range(seeds)
            ]
            rows = _rows(real)
            real_t = [r[0] for r in rows]
            real_spec = [r[2] for r in rows]
            # replicas over time: mean |sim - real| of spec replicas on the real run's samples
            errors = [
                statistics.fmean(
                    abs(_spec_at(run.timeline, t) - n) for t, n in zip(real_t, real_spec, strict=True)
                )
                for run in runs
            ]
            figures = {
                k: _spread([getattr(r, k) for r in runs])
                for k in ("wait_p50_s", "wait_p95_s", "wait_p99_s", "pod_seconds", "interrupted", "scale_changes", "processed", "end_s")
            }  # fmt: skip
            real_end = real.get("back_to_zero_s") or real.get("capped_at_s")
            per[system] = {
                "real": {
                    k: real.get(k)
                    for k in (
                        "wait_p50_s",
                        "wait_p95_s",
                        "wait_p99_s",
                        "pod_seconds",
                        "interrupted",
                        "scale_changes",
                        "processed",
                        "messages",
                    )
                }
                | {"end_s": real_end},
                "sim": figures,
                "ratio_sim_over_real": {
                    "wait_p99": _ratio(figures["wait_p99_s"]["median"], real["wait_p99_s"]),
                    "wait_p50": _ratio(figures["wait_p50_s"]["median"], real["wait_p50_s"]),
                    "pod_seconds": _ratio(figures["pod_seconds"]["median"], real["pod_seconds"]),
                    "end": _ratio(figures["end_s"]["median"], real_end),
                },
                # where the one real run falls among the seeds (0: below every seed, 1: above every seed)
                "real_rank_among_seeds": {
                    k: round(sum(1 for r in runs if (getattr(r, k) or 0) < (real.get(k) or 0)) / len(runs), 2)
                    for k in ("wait_p99_s", "pod_seconds", "scale_changes")
                },
                "replicas_mean_abs_error": _spread(errors),
                "real_timeline": {"t": real_t, "replicas": real_spec},
                "sim_timelines": [[list(x) for x in run.timeline] for run in runs[:5]],
            }
            print(
                f"    {name:5s} {system:13s} p99 real {real['wait_p99_s']:7.2f} sim {figures['wait_p99_s']['median']:7.2f}"
                f"  pod-s real {real['pod_seconds']:7.1f} sim {figures['pod_seconds']['median']:7.1f}"
                f"  |replicas error| {statistics.median(errors):.2f}",
                flush=True,
            )
        # the same trace without idle-first deletion costs (the ReplicaSet's own order), for comparison
        costs = [
            simulate(
                trace,
                cfg,
                "tide",
                dt=0.1,
                seed=s,
                deletion_costs=False,
                **scalers("tide", target, MAX_REPLICAS),
            )
            for s in range(seeds)
        ]
        per["tide (no deletion costs)"] = {
            "sim": {
                k: _spread([getattr(r, k) for r in costs])
                for k in ("wait_p99_s", "pod_seconds", "interrupted", "scale_changes", "end_s")
            }
        }
        off = [sim(trace, cfg, TIDE_OFF, target, MAX_REPLICAS, dt=0.1, seed=s) for s in range(seeds)]
        per[TIDE_OFF] = {
            "sim": {
                k: _spread([getattr(r, k) for r in off])
                for k in ("wait_p99_s", "pod_seconds", "interrupted", "scale_changes", "end_s")
            }
        }
        tide_sim = per.get("tide", {}).get("sim", {})
        if tide_sim:
            print(
                f"    {name:5s} {TIDE_OFF:13s} p99 sim {per[TIDE_OFF]['sim']['wait_p99_s']['median']:7.2f}"
                f"  pod-s sim {per[TIDE_OFF]['sim']['pod_seconds']['median']:7.1f}",
                flush=True,
            )
        out[name] = per
    return out


def waves_startup(
    cal: dict[str, float], seeds: int, startups: tuple[float, ...] = (1.6, 3.0, 5.0)
) -> dict[str, Any]:
    """The waves trace in the calibrated world but with slower pod start-ups (the calibrated one first):
    drains-first measures a worker's rate only between two polls with the same workers, so it acts only when
    a pod takes longer than a poll to start (1.6 s: the `make bench-wait` pod start, /scale to first message)."""
    trace, cfg, target = validation_worlds(cal)["waves"]
    out: dict[str, Any] = {}
    for startup in (cal["startup_s"], *startups):
        world = replace(cfg, startup=startup)
        per: dict[str, Any] = {}
        for system in ARMS:
            runs = [sim(trace, world, system, target, MAX_REPLICAS, dt=0.1, seed=s) for s in range(seeds)]
            per[system] = {
                k: _spread([getattr(r, k) for r in runs])
                for k in ("wait_p99_s", "pod_seconds", "scale_changes")
            }
            print(
                f"    waves startup {startup:4.2f} s {system:24s} p99 {per[system]['wait_p99_s']['median']:6.2f}"
                f"  pod-s {per[system]['pod_seconds']['median']:7.1f}",
                flush=True,
            )
        out[f"{startup:g}"] = per
    return out


# --- 2. the week -----------------------------------------------------------------------------------------

WEEK_WORLD = WorldConfig(concurrency=16, batch=32, job_seconds=0.05, startup=CLUSTER_STARTUP)
WEEK_TARGET, WEEK_MAX = 10, 20


def _week_one(args: tuple[int, str]) -> dict[str, Any]:
    seed, system = args
    trace, info = traces.week(seed)
    r = sim(trace, WEEK_WORLD, system, WEEK_TARGET, WEEK_MAX, dt=1.0, seed=seed)
    return {"seed": seed, "trace": info, **r.figures(), "timeline": r.timeline if seed == 1 else None}


def week(seeds: int, pool: Any) -> dict[str, Any]:
    jobs = [(s, system) for s in range(1, seeds + 1) for system in ARMS]
    runs = pool.map(_week_one, jobs)
    out: dict[str, Any] = {
        "world": WEEK_WORLD.__dict__,
        "target_backlog_per_replica": WEEK_TARGET,
        "max_replicas": WEEK_MAX,
        "seeds": seeds,
        "systems": {},
    }
    for system in ARMS:
        mine = [r for r in runs if r["system"] == system]
        out["systems"][system] = {
            "runs": [{k: v for k, v in r.items() if k not in ("timeline", "trace")} for r in mine],
            "median": {
                k: _spread([r[k] for r in mine])["median"]
                for k in (
                    "wait_p50_s",
                    "wait_p95_s",
                    "wait_p99_s",
                    "pod_seconds",
                    "interrupted",
                    "scale_changes",
                )
            },
            "run_seconds": round(sum(r["seconds"] for r in mine), 1),
        }
    out["traces"] = [r["trace"] for r in runs if r["system"] == "tide"]
    out["timeline_seed_1"] = {r["system"]: r["timeline"] for r in runs if r["seed"] == 1}
    for system in ARMS:
        m = out["systems"][system]["median"]
        print(
            f"    week  {system:13s} p99 {m['wait_p99_s']:6.2f} s  pod-s {m['pod_seconds']:10.0f}  changes {m['scale_changes']:7.0f}",
            flush=True,
        )
    return out


# --- 3. 10,000 queues ------------------------------------------------------------------------------------


def _many_chunk(args: tuple[int, int, int, float]) -> dict[str, Any]:
    start, stop, seed, horizon = args
    hist = {
        f"{s}/{k}": np.zeros(len(WAIT_EDGES) - 1, dtype=np.int64) for s in ARMS for k in ("short", "long")
    }
    rows = []
    for q in range(start, stop):
        spec = traces.many_queue(q, seed, horizon, CLUSTER_STARTUP)
        row: dict[str, Any] = {
            "q": q,
            "kind": spec.kind,
            "messages": int(sum(a[1] for a in spec.trace.arrivals)),
        }
        for system in ARMS:
            r = simulate_waits(spec, system, seed, hist[f"{system}/{spec.kind}"])
            row[system] = [
                r.wait_p99_s,
                r.pod_seconds,
                r.interrupted,
                r.messages - r.processed,
                r.scale_changes,
                r.seconds,
            ]
        rows.append(row)
    return {"rows": rows, "hist": {s: h.tolist() for s, h in hist.items()}}


def simulate_waits(spec: traces.QueueSpec, system: str, seed: int, hist: np.ndarray) -> Result:
    """One queue against one system; its waits are added to ``hist``."""
    r = sim(spec.trace, spec.cfg, system, spec.target, spec.max_replicas, dt=1.0,
            seed=seed * 100_003 + spec.index, keep_waits=True)  # fmt: skip
    if r.waits:
        w = np.array([x for x, _ in r.waits])
        c = np.array([n for _, n in r.waits])
        hist += np.histogram(np.minimum(w, WAIT_EDGES[-1] - 1e-6), bins=WAIT_EDGES, weights=c)[0].astype(
            np.int64
        )
    return r


def _hist_pct(hist: np.ndarray, q: float) -> float | None:
    """The upper edge of the bin holding rank ceil(q x n)."""
    cum = np.cumsum(hist)
    if cum[-1] == 0:
        return None
    k = np.searchsorted(cum, math.ceil(q * cum[-1]))
    return round(float(WAIT_EDGES[k + 1]), 2)


def many(queues: int, horizon: float, seed: int, pool: Any, chunk: int = 250) -> dict[str, Any]:
    started = time.perf_counter()
    jobs = [(a, min(queues, a + chunk), seed, horizon) for a in range(0, queues, chunk)]
    parts = pool.map(_many_chunk, jobs)
    rows = [row for p in parts for row in p["rows"]]
    hist = {key: np.sum([np.array(p["hist"][key]) for p in parts], axis=0) for key in parts[0]["hist"]}
    elapsed = time.perf_counter() - started
    totals: dict[str, Any] = {}
    for system in ARMS:
        col = [row[system] for row in rows]
        every = hist[f"{system}/short"] + hist[f"{system}/long"]
        totals[system] = {
            "wait_p50_s": _hist_pct(every, 0.50),
            "wait_p95_s": _hist_pct(every, 0.95),
            "wait_p99_s": _hist_pct(every, 0.99),
            "short_jobs_wait_p99_s": _hist_pct(hist[f"{system}/short"], 0.99),
            "long_jobs_wait_p99_s": _hist_pct(hist[f"{system}/long"], 0.99),
            "pod_seconds": round(sum(c[1] for c in col), 0),
            "interrupted": int(sum(c[2] for c in col)),
            "unfinished_at_end": int(sum(c[3] for c in col)),
            "scale_changes": int(sum(c[4] for c in col)),
            "sim_seconds": round(sum(c[5] for c in col), 1),
        }

    def qs(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p10": None, "p50": None, "p90": None}
        arr = np.array(values)
        return {f"p{int(q * 100)}": round(float(np.quantile(arr, q)), 3) for q in (0.1, 0.5, 0.9)}

    def per_queue(kind: str | None) -> dict[str, Any]:
        sel = [r for r in rows if kind is None or r["kind"] == kind]
        d: dict[str, Any] = {"queues": len(sel)}
        for mine, other in itertools.product(("tide", TIDE_OFF), ("keda-tuned", "keda-defaults")):
            p99 = [
                (r[mine][0], r[other][0]) for r in sel if r[mine][0] is not None and r[other][0] is not None
            ]
            pods = [(r[mine][1], r[other][1]) for r in sel if r[other][1] > 0]
            d[f"vs_{other}" if mine == "tide" else f"{mine} vs_{other}"] = {
                "p99_ratio_tide_over": qs([a / b for a, b in p99 if b > 0]),
                "pod_seconds_ratio_tide_over": qs([a / b for a, b in pods]),
                "queues_tide_p99_le": sum(1 for a, b in p99 if a <= b),
                "queues_tide_p99_le_fifth": sum(1 for a, b in p99 if a <= b / 5),
                "queues_tide_pod_seconds_le": sum(1 for a, b in pods if a <= b),
                "queues_compared": len(p99),
            }
        for system in ARMS:
            d[system] = {
                "p99": qs([r[system][0] for r in sel if r[system][0] is not None]),
                "pod_seconds": qs([r[system][1] for r in sel]),
                "interrupted_queues": sum(1 for r in sel if r[system][2] > 0),
            }
        return d

    out = {
        "queues": queues,
        "horizon_s": horizon,
        "seed": seed,
        "kinds": {k: sum(1 for r in rows if r["kind"] == k) for k in ("short", "long")},
        "messages": int(sum(r["messages"] for r in rows)),
        "totals": totals,
        "per_queue": {"all": per_queue(None), "short": per_queue("short"), "long": per_queue("long")},
        "wall_seconds": round(elapsed, 1),
        "processes": getattr(pool, "_processes", 1),
        "p99_per_queue": {s: [r[s][0] for r in rows] for s in ARMS},
        "pod_seconds_per_queue": {s: [r[s][1] for r in rows] for s in ARMS},
    }
    for system in ARMS:
        t = totals[system]
        print(
            f"    many  {system:13s} p99 {t['wait_p99_s']:6.2f} s  pod-s {t['pod_seconds']:10.0f}  interrupted {t['interrupted']:6d}",
            flush=True,
        )
    return out


# --- plots -----------------------------------------------------------------------------------------------

COLORS = {"tide": "tab:blue", "keda-tuned": "tab:orange", "keda-defaults": "tab:red", TIDE_OFF: "tab:cyan"}


def plot_validation(v: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("flash", "long", "waves") if n in v]
    fig, axes = plt.subplots(len(names), 3, figsize=(14, 3.2 * len(names)), squeeze=False, sharey=True)
    for i, name in enumerate(names):
        for j, system in enumerate(SYSTEMS):
            ax = axes[i][j]
            rec = v[name].get(system)
            if rec is None:
                continue
            horizon = max(rec["real_timeline"]["t"])
            for k, tl in enumerate(rec["sim_timelines"]):
                ts = [0.0] + [p[0] for p in tl] + [horizon]
                ns = [0] + [p[1] for p in tl] + [tl[-1][1] if tl else 0]
                ax.step(ts, ns, where="post", color=COLORS[system], alpha=0.35, lw=1,
                        label="sim (5 seeds)" if k == 0 else None)  # fmt: skip
            ax.step(
                rec["real_timeline"]["t"],
                rec["real_timeline"]["replicas"],
                where="post",
                color="black",
                lw=1.6,
                label="real",
            )
            r, s = rec["real"], rec["sim"]
            ax.set_title(
                f"{name} / {system}: p99 real {r['wait_p99_s']:.1f} s, sim {s['wait_p99_s']['median']:.1f} s\n"
                f"pod-s real {r['pod_seconds']:.0f}, sim {s['pod_seconds']['median']:.0f}",
                fontsize=9,
            )
            ax.set_xlim(0, horizon)
            if j == 0:
                ax.set_ylabel("replicas (spec)")
            if i == len(names) - 1:
                ax.set_xlabel("seconds since the trace started")
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("Simulator vs the real runs (same trace, scalers, cluster settings)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_week(w: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace, _ = traces.week(1)
    per_min = np.zeros(int(traces.WEEK // 60) + 61)
    for a in trace.arrivals:
        per_min[int(a[0] // 60)] += a[1]
    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(14, 9), height_ratios=(2, 3, 3))
    hours = np.arange(len(per_min)) / 60.0
    top.plot(hours, per_min / 60.0, color="gray", lw=0.6)
    top.set_ylabel("arrivals / s (per minute)")
    top.set_yscale("symlog", linthresh=10)
    top.set_xlim(0, 168)
    top.set_title(
        "week-long bursty trace (seed 1): diurnal background, idle nights 00-06, weekend x0.3, bursts"
    )
    # zoom on Tuesday's largest burst in working hours (over the diurnal background)
    day = [a for a in trace.arrivals if traces.DAY + 10 * 3600 <= a[0] < traces.DAY + 17 * 3600]
    zoom_at = max(day, key=lambda a: a[1])[0]
    z0, z1 = zoom_at - 300, zoom_at + 1200
    fine = np.arange(0, traces.WEEK, 10.0)
    for system in ARMS:
        tl = w["timeline_seed_1"][system]
        ts = np.array([0.0] + [p[0] for p in tl])
        ns = np.array([0] + [p[1] for p in tl])
        # replicas averaged over each 10 minutes (the step function sampled every 10 s)
        vals = ns[np.searchsorted(ts, fine, side="right") - 1].reshape(-1, 60).mean(axis=1)
        m = w["systems"][system]["median"]
        mid.plot(np.arange(len(vals)) / 6, vals, color=COLORS[system], lw=0.8,
                 label=f"{system}: p99 {m['wait_p99_s']:.1f} s, pod-s {m['pod_seconds']:.0f} (median of seeds)")  # fmt: skip
        sel = (ts >= z0 - 3600) & (ts <= z1)
        bottom.step(ts[sel] - zoom_at, ns[sel], where="post", color=COLORS[system], lw=1.2, label=system)
    mid.set_ylabel("replicas (10-min mean)")
    mid.set_xlabel("hours since Monday 00:00")
    mid.set_xlim(0, 168)
    mid.legend(loc="upper right", fontsize=8)
    bottom.set_xlim(-300, 1200)
    bottom.set_ylabel("replicas (spec)")
    bottom.set_xlabel("seconds around Tuesday's largest burst in working hours (seed 1)")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_many(m: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for system in ARMS:
        vals = np.sort([v for v in m["p99_per_queue"][system] if v is not None])
        left.plot(
            np.maximum(vals, 0.01),
            np.arange(1, len(vals) + 1) / len(vals),
            color=COLORS[system],
            label=system,
        )
        pods = np.sort(m["pod_seconds_per_queue"][system])
        right.plot(
            np.maximum(pods, 1), np.arange(1, len(pods) + 1) / len(pods), color=COLORS[system], label=system
        )
    left.set_xscale("log")
    left.set_xlabel("per-queue p99 wait (s)")
    left.set_ylabel("fraction of queues")
    left.legend()
    right.set_xscale("log")
    right.set_xlabel("per-queue pod-seconds")
    right.legend()
    fig.suptitle(
        f"{m['queues']:,} queues, {m['horizon_s'] / 3600:g} h each ({m['kinds']['short']} short-job, {m['kinds']['long']} long-job)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=30, help="validation: seeds (loop phases) per system")
    parser.add_argument("--week-seeds", type=int, default=3)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--queue-hours", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--skip", default="", help="comma list of parts to skip: validation,week,many")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": "make bench-sim",
    }
    with multiprocessing.Pool(args.processes) as pool:
        if "validation" not in skip:
            print("==> validation against the real runs", flush=True)
            records, source = real_records()
            cal = calibrate(records)
            print(f"    calibrated from the real timelines: {cal}", flush=True)
            t0 = time.perf_counter()
            v = validate(records, cal, args.seeds)
            out["validation"] = {"source": source, "calibration": cal, "seeds": args.seeds, "traces": v,
                                 "run_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            plot_validation(v, RESULTS / "sim-validation.png")
            print("==> waves with slower pod start-ups", flush=True)
            out["waves_startup"] = {"seeds": args.seeds, "by_startup_s": waves_startup(cal, args.seeds)}
        if "week" not in skip:
            print("==> a week-long bursty trace", flush=True)
            t0 = time.perf_counter()
            out["week"] = week(args.week_seeds, pool)
            out["week"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
            plot_week(out["week"], RESULTS / "sim-week.png")
            out["week"].pop("timeline_seed_1")
        if "many" not in skip:
            print(f"==> {args.queues:,} queues, {args.queue_hours:g} h each", flush=True)
            out["many"] = many(args.queues, args.queue_hours * 3600, 1, pool)
            plot_many(out["many"], RESULTS / "sim-many.png")
            out["many"].pop("p99_per_queue")
            out["many"].pop("pod_seconds_per_queue")
    out["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "sim.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(out)  # a run with --skip keeps the parts it did not redo
    path.write_text(json.dumps(previous, indent=1))
    print(f"==> wrote {path} ({out['wall_seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
