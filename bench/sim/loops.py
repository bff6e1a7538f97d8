"""The control loops on a simulated clock, and one run of a trace against one system.

- ``tide``: ``tide_operator.policy.decide`` itself, unchanged, fed as ``consumer.Consumer.poll`` feeds it:
  every ``pollingIntervalSeconds`` a ``Backlog`` (ready = ``LLEN``, in flight = what the workers hold,
  ``oldest_age`` of the message at the consuming end), the workers' rates, the current ``/scale`` replicas,
  the ``PolicyState`` the last decision returned, and ``now``; a change is written to ``/scale`` at once,
  and before a scale-down each pod's deletion cost (``World.scale(idle_first=True)``, which calls
  ``tide_operator.deletion_cost.pod_costs``).
- ``keda-*``: ``keda_hpa.Keda.poll`` every ``pollingInterval`` and ``keda_hpa.Hpa.sync`` every 15 s, each on
  a phase of its own (seeded), both writing the same ``/scale``.

The phases of the loops against the trace are drawn from the seed: the real runs had one phase each, so a
validation replays many seeds and reports their spread.
"""

from __future__ import annotations

import datetime
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tide_operator.consumer import RAMP_READS, RAMP_SECONDS
from tide_operator.policy import PolicyState, decide
from tide_operator.spec import Scaling, parse_scaling
from tide_worker.backlog import Backlog

from bench.sim import keda_hpa
from bench.sim.world import World, WorldConfig, percentiles

EPOCH = datetime.datetime(2026, 1, 5, tzinfo=datetime.UTC).timestamp()  # a Monday, 00:00 UTC: t = 0


@dataclass(frozen=True)
class KedaConfig:
    """A ScaledObject as bench/vs_keda.py writes it."""

    list_length: int
    max_replicas: int
    polling: float = keda_hpa.KEDA_DEFAULT_POLLING
    cooldown: float = keda_hpa.KEDA_DEFAULT_COOLDOWN
    activation_list_length: int = 0
    behavior: dict[str, Any] | None = None  # advanced.horizontalPodAutoscalerConfig.behavior
    hpa_sync: float = keda_hpa.DEFAULT_SYNC_SECONDS


def keda_defaults(target: int, max_replicas: int) -> KedaConfig:
    return KedaConfig(target, max_replicas)


def keda_tuned(target: int, max_replicas: int, cooldown: float = 30.0) -> KedaConfig:
    """bench/vs_keda.py ``scaled_object(tuned=True)``: polling 1 s, Tide's cooldown, Tide's behavior."""
    return KedaConfig(
        target,
        max_replicas,
        polling=1.0,
        cooldown=cooldown,
        behavior={
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": max_replicas, "periodSeconds": 1}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": 30,
                "policies": [{"type": "Percent", "value": 50, "periodSeconds": 5}],
            },
        },
    )


@dataclass
class Trace:
    """Arrivals ``(time, count, duration or None[, spread])`` in time order (``count`` messages evenly
    over [time, time + spread]), and the end of the run."""

    name: str
    arrivals: Sequence[tuple[Any, ...]]
    horizon: float  # stop here at the latest
    stop_when_idle: bool = True  # stop once everything is done and no pod is left (after the last arrival)


@dataclass
class Result:
    system: str
    wait_p50_s: float | None
    wait_p95_s: float | None
    wait_p99_s: float | None
    pod_seconds: float
    interrupted: int
    scale_changes: int
    messages: int
    processed: int
    end_s: float
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, spec, ready) at each change
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, spec, ready) every sample_every
    waits: list[tuple[float, int]] | None = None  # (wait, count) of every first start, when kept
    steps: int = 0
    seconds: float = 0.0  # the simulator's own run time

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("timeline", "samples", "waits")}


class TideLoop:
    def __init__(self, scaling: Scaling, deletion_costs: bool = True) -> None:
        self.scaling = scaling
        self.deletion_costs = deletion_costs  # TIDE_OPERATOR_DELETION_COST (default on)
        self.interval = scaling.polling_interval_seconds
        self.state = PolicyState()
        self.ramp_until: float | None = None

    def tick(self, now: float, world: World) -> float:
        """One poll; the seconds to the next: RAMP_READS times an interval while a scale-up's pods start
        and messages wait, with live workers (tide_operator.consumer's ramp reads)."""
        reading = Backlog(
            ready=world.in_list(now), inflight=world.held(now), oldest_age=world.oldest_age(now)
        )
        rates = world.rates(now)
        d = decide(self.scaling, reading, rates, world.spec, self.state, EPOCH + now)
        self.state = d.state
        if reading.total <= reading.busy:
            self.ramp_until = None
        elif (d.desired > world.spec or d.read_soon) and rates:
            self.ramp_until = now + RAMP_SECONDS
        if d.desired != world.spec:
            world.scale(now, d.desired, idle_first=self.deletion_costs and d.desired < world.spec)
        ramping = self.ramp_until is not None and now < self.ramp_until
        return self.interval / RAMP_READS if ramping else self.interval


class KedaLoop:
    def __init__(self, cfg: KedaConfig) -> None:
        self.cfg = cfg
        self.keda = keda_hpa.Keda(cooldown=cfg.cooldown, activation_list_length=cfg.activation_list_length)
        self.hpa = keda_hpa.Hpa(
            min_replicas=1,  # GetHPAMinReplicas: minReplicaCount 0 -> 1
            max_replicas=cfg.max_replicas,
            target=float(cfg.list_length),
            behavior=keda_hpa.behavior_from_spec(cfg.behavior),
        )

    def poll(self, now: float, world: World) -> None:
        n = self.keda.poll(now, world.in_list(now), world.spec)
        if n != world.spec:
            world.scale(now, n, idle_first=False)

    def sync(self, now: float, world: World) -> None:
        n = self.hpa.sync(now, world.spec, len(world.pods), float(world.in_list(now)))
        if n != world.spec:
            world.scale(now, n, idle_first=False)


def _next_tick(first: float, interval: float, t: float) -> float:
    """The first tick of the grid ``first + k x interval`` at or after ``t``."""
    if t <= first:
        return first
    return first + math.ceil((t - first) / interval - 1e-9) * interval


def simulate(
    trace: Trace,
    cfg: WorldConfig,
    system: str,
    *,
    tide: Scaling | None = None,
    keda: KedaConfig | None = None,
    dt: float = 0.1,
    seed: int = 0,
    sample_every: float | None = None,
    keep_waits: bool = False,
    deletion_costs: bool = True,
) -> Result:
    """Replay ``trace`` against ``system`` ("tide" with ``tide`` set, or a KEDA system with ``keda``)."""
    started = time.perf_counter()
    rng = random.Random(f"{seed}:{system}:{trace.name}")
    world = World(cfg, seed=rng.randrange(2**32))
    ticks: list[list[Any]] = []  # [next time, interval, action]
    if tide is not None:
        loop = TideLoop(tide, deletion_costs)
        ticks.append([rng.uniform(0, loop.interval), loop.interval, loop.tick])
    else:
        assert keda is not None
        k = KedaLoop(keda)
        ticks.append([rng.uniform(0, keda.polling), keda.polling, k.poll])
        ticks.append([rng.uniform(0, keda.hpa_sync), keda.hpa_sync, k.sync])
    arrivals = trace.arrivals
    i, t, steps = 0, 0.0, 0
    carry: tuple[Any, ...] | None = None  # the part of a spread cohort that arrives after this step
    last_arrival = max((a[0] + (a[3] if len(a) > 3 else 0.0) for a in arrivals), default=0.0)
    samples: list[tuple[float, int, int]] = []
    next_sample = 0.0
    while t < trace.horizon:
        upcoming = carry if carry is not None else (arrivals[i] if i < len(arrivals) else None)
        if upcoming is not None and world.idle() and world.spec == 0 and upcoming[0] > t + dt:
            # nothing to do until the next arrival: every loop would hold 0 (exact for the default specs;
            # Tide's recommendations at 0 never raise a later window's maximum)
            t = upcoming[0]
            for tk in ticks:
                tk[0] = _next_tick(tk[0], tk[1], t)
        # event-driven: the world runs up to the next loop tick (at most dt at a time), then the loop acts
        end = min(t + dt, min(tk[0] for tk in ticks), trace.horizon)
        if end <= t:
            end = t + 1e-9
        while True:
            if carry is not None:
                cur, carry = carry, None
            elif i < len(arrivals):
                cur = arrivals[i]
                i += 1
            else:
                break
            if cur[0] >= end:
                carry = cur
                break
            at, count, duration, *rest = cur
            spread = rest[0] if rest else 0.0
            if spread > 0 and at + spread > end:  # only what has arrived by the end of this step
                k = round(count * (end - at) / spread)
                world.arrive(at, k, duration, end - at)
                carry = (end, count - k, duration, at + spread - end)
                break
            world.arrive(at, count, duration, spread)
        world.step(t, end - t)
        steps += 1
        t = end
        for tk in ticks:
            while tk[0] <= t:
                nxt = tk[2](t, world)  # Tide's loop says when it reads next; KEDA's keep their period
                tk[0] += nxt if nxt is not None else tk[1]
        if sample_every is not None and t >= next_sample:
            samples.append((round(t, 3), world.spec, world.ready_pods(t)))
            next_sample = t + sample_every
        done = i >= len(arrivals) and carry is None and t > last_arrival
        if trace.stop_when_idle and done and world.idle() and world.spec == 0:
            break
    s = world.stats
    p50, p95, p99 = percentiles(s.waits, (0.50, 0.95, 0.99))
    return Result(
        system=system,
        wait_p50_s=_round(p50),
        wait_p95_s=_round(p95),
        wait_p99_s=_round(p99),
        pod_seconds=round(s.pod_seconds, 1),
        interrupted=s.interrupted,
        scale_changes=s.scale_changes,
        messages=s.created,
        processed=s.done,
        end_s=round(t, 2),
        timeline=s.timeline,
        samples=samples,
        waits=s.waits if keep_waits else None,
        steps=steps,
        seconds=round(time.perf_counter() - started, 3),
    )


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def tide_scaling(**spec: Any) -> Scaling:
    """A QueueConsumer's ``spec.scaling`` through the operator's own parser (its defaults included)."""
    return parse_scaling(spec)
