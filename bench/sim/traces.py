"""Seeded traces for the simulator: the real runs' (flash, long jobs) and the scale runs' (a week, 10,000 queues)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.sim.loops import Trace
from bench.sim.world import WorldConfig

DAY = 86400.0
WEEK = 7 * DAY


def flash(messages: int = 20_000) -> Trace:
    """bench/vs_keda.py ``flash``: all at once onto the idle list."""
    return Trace("flash", [(0.0, messages, None)], horizon=480.0)


def long_jobs(jobs: int = 20, seed: int = 11) -> Trace:
    """bench/vs_keda.py ``long_jobs`` on feat/keda (8057dcd), the same generator and seed: jobs of 30-120 s
    arriving over ~10 s, then none."""
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(jobs):
        arrivals.append((round(t, 3), 1, round(rng.uniform(30, 120), 1)))
        t += rng.expovariate(jobs / 10.0)
    return Trace("long", arrivals, horizon=480.0)


def _poisson_seconds(rate: np.ndarray, rng: np.random.Generator) -> list[tuple[float, int, None, float]]:
    """Per-second Poisson counts of ``rate`` (messages/s, one value a second), each spread over its second."""
    counts = rng.poisson(np.maximum(rate, 0.0))
    idx = np.nonzero(counts)[0]
    return [(float(i), int(counts[i]), None, 1.0) for i in idx]


@dataclass(frozen=True)
class WeekSpec:
    peak_rate: float = 40.0  # messages/s at the diurnal peak of a weekday
    weekend_factor: float = 0.3
    night_start_h: float = 0.0  # idle nights: no background from 00:00...
    night_end_h: float = 6.0  # ...to 06:00
    bursts_per_day: float = 12.0
    burst_median: float = 3000.0  # messages per burst (lognormal)
    burst_sigma: float = 1.0
    burst_spread_s: float = 20.0  # a burst lands over up to this many seconds


def week(seed: int, spec: WeekSpec = WeekSpec()) -> tuple[Trace, dict[str, Any]]:
    """A week, second by second: a diurnal background (sin² over the day, lower at weekends, none at night)
    plus bursts at random times (Poisson) of lognormal sizes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(WEEK), dtype=float)
    hour = (t % DAY) / 3600.0
    day = (t // DAY).astype(int)
    diurnal = np.sin(np.pi * np.clip((hour - spec.night_end_h) / (24.0 - spec.night_end_h), 0, 1)) ** 2
    rate = spec.peak_rate * diurnal * np.where(day >= 5, spec.weekend_factor, 1.0)
    rate[(hour >= spec.night_start_h) & (hour < spec.night_end_h)] = 0.0
    arrivals: list[tuple[Any, ...]] = list(_poisson_seconds(rate, rng))
    n_bursts = rng.poisson(spec.bursts_per_day * 7)
    bursts = []
    for at in np.sort(rng.uniform(0, WEEK - 600, n_bursts)):
        size = int(rng.lognormal(math.log(spec.burst_median), spec.burst_sigma))
        spread = float(rng.uniform(0, spec.burst_spread_s))
        bursts.append((float(at), size))
        if spread < 1:
            arrivals.append((float(at), size, None))
        else:
            per = rng.multinomial(size, [1 / math.ceil(spread)] * math.ceil(spread))
            arrivals.extend((float(at) + k, int(c), None, 1.0) for k, c in enumerate(per) if c)
    arrivals.sort(key=lambda a: a[0])
    info = {
        "seed": seed,
        "spec": spec.__dict__,
        "messages": int(sum(a[1] for a in arrivals)),
        "bursts": len(bursts),
        "burst_messages": int(sum(s for _, s in bursts)),
    }
    return Trace(f"week-{seed}", arrivals, horizon=WEEK + 3600), info  # an hour to drain


@dataclass(frozen=True)
class QueueSpec:
    """One of the many queues: its worker, its scaling target and its traffic."""

    index: int
    kind: str  # "short" (fluid jobs) or "long" (discrete jobs of minutes)
    cfg: WorldConfig
    target: int
    max_replicas: int
    trace: Trace


def many_queue(index: int, seed: int, horizon: float, startup: float) -> QueueSpec:
    """Queue ``index`` of the 10,000: 90 % short jobs (10 ms to 2 s, concurrency 1/4/16, target 10), 10 %
    long jobs (30 s to 5 min, concurrency 1, target 1, maxReplicas 10; short: 20); traffic a lognormal background that is on only part of
    the time, plus Poisson bursts of lognormal sizes."""
    rng = np.random.default_rng([seed, index])
    long = rng.random() < 0.10
    n = int(horizon)
    if long:
        cfg = WorldConfig(concurrency=1, batch=1, startup=startup, discrete=True)
        arrivals: list[tuple[Any, ...]] = []
        for at in np.sort(rng.uniform(0, horizon - 600, rng.poisson(rng.uniform(0.5, 4)))):
            k = 1 + int(rng.lognormal(math.log(4), 0.8))
            starts = at + np.cumsum(rng.exponential(2.0, k))
            arrivals.extend((float(s), 1, float(rng.uniform(30, 300))) for s in starts if s < horizon)
        arrivals.sort(key=lambda a: a[0])
        return QueueSpec(index, "long", cfg, 1, 10, Trace(f"q{index}", arrivals, horizon + 1800))
    job = float(np.exp(rng.uniform(math.log(0.01), math.log(2.0))))
    conc = int(rng.choice([1, 4, 16]))
    cfg = WorldConfig(concurrency=conc, batch=max(1, min(32, 2 * conc)), job_seconds=job, startup=startup)
    base = float(rng.lognormal(math.log(0.05), 1.5))  # messages/s while on
    on_fraction = float(rng.uniform(0.0, 1.0))
    # on/off background in blocks of 10 minutes
    blocks = rng.random(n // 600 + 1) < on_fraction
    rate = np.repeat(blocks, 600)[:n] * base
    arrivals = list(_poisson_seconds(rate, rng))
    for at in np.sort(rng.uniform(0, horizon - 300, rng.poisson(rng.uniform(0, 4) * horizon / 3600))):
        size = 1 + int(rng.lognormal(math.log(100), 1.5))
        arrivals.append((float(at), size, None))
    arrivals.sort(key=lambda a: a[0])
    return QueueSpec(index, "short", cfg, 10, 20, Trace(f"q{index}", arrivals, horizon + 1800))


def wave_times(burst: int, minutes: float, every: float, background: float, seed: int) -> list[float]:
    """The waves trace's enqueue times, sorted: ``burst`` at each multiple of ``every`` s and a Poisson
    background of ``background``/s, for ``minutes``. The one generator of the real runs
    (bench/vs_keda.py) and of the simulator."""
    rng = random.Random(seed)
    span = minutes * 60
    times = [k * every for k in range(int(span // every)) for _ in range(burst)]
    t = rng.expovariate(background)
    while t < span:
        times.append(round(t, 3))
        t += rng.expovariate(background)
    times.sort()
    return times


def waves(
    burst: int = 2000, minutes: float = 15, every: float = 60, background: float = 1.0, seed: int = 12
) -> Trace:
    """bench/vs_keda.py ``waves``, the same generator and seed: ``burst`` messages every ``every`` s over a
    Poisson background of ``background``/s for ``minutes``."""
    span = minutes * 60
    times = wave_times(burst, minutes, every, background, seed)
    arrivals: list[tuple[Any, ...]] = []
    for at in times:  # one entry per instant (a burst is one cohort)
        if arrivals and arrivals[-1][0] == at:
            arrivals[-1] = (at, arrivals[-1][1] + 1, None)
        else:
            arrivals.append((at, 1, None))
    return Trace("waves", arrivals, horizon=span + 480.0)
