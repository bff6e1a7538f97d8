"""The scaling policy: a pure function from what the operator knows to how many replicas it wants, and why.

No I/O and no clock reads: ``now`` is an argument and the state (recommendation history, recent scale
events, consecutive read failures, last active time) goes in and comes back out, so every rule is a
table-driven test. The rules, in order:

1. ``paused``: the annotation freezes the count.
2. A failed Redis read never moves the count (``read-failed``), except that after
   ``fallback.failureThreshold`` failures in a row a configured ``fallback.replicas`` is applied
   (``fallback``); nothing here ever scales to zero because Redis could not be read.
3. Raw recommendation: ``ceil(backlog / targetBacklogPerReplica)`` (``target``), raised to what drains the
   backlog within ``targetDrainSeconds`` at the mean per-replica rate workers report (``drain-time``).
   Then, when ``targetWaitSeconds`` is set and the oldest waiting message has waited longer, raised again
   (``wait-time``): to at least ``ceil(current * age / target)`` and one more than now, and, with measured
   per-replica rates and an arrival rate (throughput + the backlog's growth since the last reading), to what
   absorbs the arrivals and drains the backlog within the target: ``ceil((arrivals + backlog / target) /
   per-replica rate)``. It only ever raises the count; scale-down keeps its stabilization and limits.
   With a wait objective the count also never falls below what the arrival rate needs (``arrival-rate``):
   ``ceil(ARRIVAL_HEADROOM x arrivals / per-replica capacity)``, so that an age back under the target does
   not let capacity go while messages still arrive (a saw-tooth: age under target, scale down, age over
   target, scale up). Above that floor the wait rule scales in proportion to the age:
   ``ceil(max(current, floor) x age / target)``. The per-replica capacity is the mean rate workers report
   while messages wait past the target (then every worker is busy, so its rate is what it can do; the
   highest of one such episode, since a heartbeat's rate lags by its window): a rate measured without a
   backlog is only what arrived, and dividing the arrivals by it would hold any count forever. Until a
   capacity is measured, or when no worker reports a rate (arrivals stopped), the floor does not apply.
   A scale-up is not made for a backlog the current pods drain first (``drains-first``): with a per-replica
   rate measured from the backlog's own fall (two readings in a row with messages waiting: every worker is
   busy, so the fall per second and worker is what one can do, less any arrivals) and a pod start-up
   measured from this resource's own scale-ups (the decision to the first reading with a new worker's
   heartbeat), the current workers drain the backlog in ``D = backlog / (workers x rate - arrivals)``
   (arrivals: the workers' recent rates). A scale-up onto working pods asks the fewest replicas that
   drain the backlog within ``SPARE_STARTUPS`` (one) start-up of the time the full scale-up would take
   (``fewest-pods``), keeping every pod that would work at least its own start-up: a pod started for less
   work costs its start-up and its idle tail for little. Holding is the fewest at the current count
   (``drains-first``): when ``D`` is at most the start-up, no pod started now could be Ready before the
   backlog is gone. Pods asked for and not yet up count from when their start-up ends. Objectives still
   decide: a count is fewer only while ``oldest age`` plus its drain stays within ``targetWaitSeconds``
   and its drain within ``targetDrainSeconds`` (or it is no slower than the full scale-up). At 0
   replicas, with no worker, over the ``arrival-rate`` floor, when the working pods do not keep up (the
   arrivals are then unknown), or before a rate and a start-up are measured, the rules above apply
   unchanged. The rate is the one measured at the
   current worker count when there is one (a shared bottleneck makes it depend on the count).
   No more pods than add throughput (``knee``): the total drain measured per worker count (the highest
   fall of each count within ``KNEE_MEMORY``; arrivals only hide work, so each is a lower bound) shows
   where pods stop adding throughput, as on a node or a database that every pod shares. With ``r`` the
   per-worker rate at the fewest workers measured and ``best`` the highest total at any count, the count is
   capped at ``ceil(best / r)``, the fewest that reach ``best`` at ``r`` each, once more workers than that
   were measured (so the cap is evidence, not a guess) and never below the current count. When the
   backlog did not fall between two readings with messages waiting at a count at or above the cap, the cap
   does not apply: those workers do not keep up, so the measurements may understate what more pods add. A
   measurement older than ``KNEE_MEMORY`` is forgotten, so a bottleneck that went away is probed again.
4. From zero, only a backlog above ``activationBacklog`` wakes the workload (``below-activation``) - but a
   retry that came due or work held in-flight always wakes it (``retry-due``, ``in-flight``): only a
   worker moves due retries back and reaps orphaned processing lists.
5. Clamped to ``[minReplicas, maxReplicas]`` (``min``, ``max``), tightened by the scheduled windows open
   at ``now`` (``schedule.active``): the highest open floor and the lowest open cap
   (``schedule-min``, ``schedule-max``). A window never loosens the spec: a floor above
   ``maxReplicas`` is cut to it. When a floor (a window's, or ``minReplicas``) exceeds a window's cap,
   the cap wins (a cap guards a downstream service or a budget; a floor only warms up), and the reason
   says so.
6. To zero only once the whole backlog, in-flight included, has been zero for ``cooldownSeconds``
   (``cooldown`` holds one replica until then; ``to-zero`` then skips the scale-down window, which the
   cooldown replaces).
7. Stabilization windows as the HPA's ``behavior``: scale up to the lowest recommendation of the up window,
   down to the highest of the down window (``stabilized``). Except when idle: once the whole backlog,
   in-flight included, has been zero for ``IDLE_SECONDS`` (or the scale-down period, if longer), every pod
   is idle and the down window would only hold idle pods until the cooldown ends; then the count falls by
   the scale-down rate limit alone (``idle``), towards the one replica the cooldown holds (or the floor).
   The same holds for each pod while others work (``idle-pods``): with nothing waiting, a worker whose
   heartbeat says it has been idle that long (``Heartbeat.idle_for``) is not held by the down window, so
   a pod that finished its job goes within seconds, not after the window; the deletion cost picks the
   idle ones, and the busy ones keep working.
8. Rate limits per period: at most ``maxStepPods`` or ``maxStepPercent`` (the more permissive when both
   are set) relative to the count at the start of the period (``rate-limit-up``/``rate-limit-down``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tide_worker.backlog import Backlog

from tide_operator import schedule
from tide_operator.spec import Behavior, Scaling


@dataclass(frozen=True)
class PolicyState:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation) within the windows
    scale_events: tuple[tuple[float, int], ...] = ()  # (time, replica delta) within the periods
    last_scale_time: float | None = None
    failures: int = 0  # consecutive failed reads
    last_active_time: float | None = None  # last time the backlog (in-flight included) was non-zero
    last_reading: tuple[float, int] | None = None  # (time, backlog total) of the last reading: arrivals
    capacity: float | None = None  # messages/s per replica, measured while messages waited past the target
    saturated: bool = False  # the last reading had messages waiting past the target (one capacity episode)
    # drains-first: (time, backlog total, workers) of the last reading if messages waited in it
    last_waiting: tuple[float, int, int] | None = None
    drain_rate: float | None = None  # messages/s per worker, from the backlog's fall while messages waited
    startup: float | None = None  # seconds from a scale-up to the first reading with a new worker
    awaiting: tuple[float, int] | None = (
        None  # (time, workers then) of a scale-up no new worker has shown for
    )
    # knee: (workers, total messages/s drained, when measured), one per worker count, in count order
    throughput: tuple[tuple[int, float, float], ...] = ()


# Idle this long (nothing waiting, running or due) and the scale-down window no longer holds idle pods: long
# enough that a backlog dipping to zero between two pushes does not count, short next to the cooldown.
IDLE_SECONDS = 5.0

# The arrival-rate floor keeps this much more capacity than the arrivals need (workers at most ~83 % busy):
# at exactly the arrival rate any burst would queue, and the rates it divides are 30 s averages.
ARRIVAL_HEADROOM = 1.2

# drains-first and fewest-pods: a hold, or fewer pods than asked, may finish a backlog this many pod
# start-ups after the scale-up asked would (a pod started for less work than that costs its start-up and
# its idle tail for little). 0 switches both rules off.
SPARE_STARTUPS = 1.0


# knee: a count's measured drain is kept this long (the highest of the fresh ones), then forgotten, so a
# bottleneck that went away (a bigger node, a faster database) is measured again by the next burst.
KNEE_MEMORY = 600.0


@dataclass(frozen=True)
class Decision:
    desired: int
    rule: str
    reason: str
    state: PolicyState
    fallback: bool = False  # a fallback replica count is applied
    windows: tuple[schedule.Window, ...] = ()  # the scheduled windows open at this decision
    read_soon: bool = False  # read again within a fraction of the interval (the ramp reads): "measuring"


def _record(state: PolicyState, current: int, desired: int, now: float) -> PolicyState:
    if desired == current:
        return state
    return replace(state, scale_events=(*state.scale_events, (now, desired - current)), last_scale_time=now)


def _up_limit(b: Behavior, current: int, events: Sequence[tuple[float, int]], now: float) -> float:
    if b.max_step_pods is None and b.max_step_percent is None:
        return math.inf
    start = current - sum(d for t, d in events if d > 0 and now - t < b.period_seconds)
    limits = []
    if b.max_step_pods is not None:
        limits.append(start + b.max_step_pods)
    if b.max_step_percent is not None:
        # from zero a percentage allows nothing; one pod is the least step that makes progress
        limits.append(max(start + 1, math.ceil(start * (1 + b.max_step_percent / 100))))
    return max(current, max(limits))


def _down_limit(b: Behavior, current: int, events: Sequence[tuple[float, int]], now: float) -> float:
    if b.max_step_pods is None and b.max_step_percent is None:
        return -math.inf
    start = current + sum(-d for t, d in events if d < 0 and now - t < b.period_seconds)
    limits = []
    if b.max_step_pods is not None:
        limits.append(start - b.max_step_pods)
    if b.max_step_percent is not None:
        limits.append(math.ceil(start * (1 - b.max_step_percent / 100)))
    return min(current, min(limits))


def _arrivals(last: tuple[float, int] | None, total: int, live: Sequence[float], now: float) -> float | None:
    """Messages/s arriving: what workers process plus how fast the backlog grew since the last reading."""
    if last is None or now - last[0] <= 0 or not live:
        return None
    return max(0.0, sum(live) + (total - last[1]) / (now - last[0]))


def _drain_rate(state: PolicyState, total: int, waiting: int, workers: int, now: float) -> float | None:
    """Messages/s one worker drains, measured in this reading, or None: from the backlog's fall between two
    readings with messages waiting in both (every worker busy throughout) and the same workers at both (a
    worker that joined in between worked for an unknown part of it): what fell, per second and worker. A
    lower bound: arrivals in between hide some of the work done. A backlog that did not fall says the
    workers do not keep up: 0."""
    last = state.last_waiting
    if last is None or waiting <= 0 or now - last[0] <= 0 or workers <= 0 or last[2] != workers:
        return None
    return max(0.0, last[1] - total) / ((now - last[0]) * workers)


def _throughput(
    state: PolicyState, workers: int, measured: float | None, now: float
) -> tuple[tuple[int, float, float], ...]:
    """The fresh per-count drains, with this reading's measurement (a positive one) kept if it is the
    highest of its count."""
    if not measured and not state.throughput:
        return ()  # the idle poll of a resource that never drained with messages waiting: most of them
    fresh = {n: (r, t) for n, r, t in state.throughput if now - t < KNEE_MEMORY}
    if measured:
        total = measured * workers
        if workers not in fresh or total >= fresh[workers][0]:
            fresh[workers] = (total, now)
    return tuple((n, r, t) for n, (r, t) in sorted(fresh.items()))


@dataclass(frozen=True)
class Knee:
    count: int  # the fewest workers that reach ``best``
    per: float  # messages/s per worker at the fewest workers measured
    best: float  # the highest total drain measured at any count
    how: str

    def total(self, workers: int) -> float:
        """What ``workers`` drain in all, by these measurements: each ``per`` until ``best``."""
        return min(workers * self.per, self.best)


def _knee(throughput: Sequence[tuple[int, float, float]]) -> Knee | None:
    """The fewest workers that reach the best measured drain at the per-worker rate of the fewest measured,
    with how it was found, or None while no count above it was measured (no evidence of a bottleneck)."""
    if len(throughput) < 2:
        return None
    low, low_total, _ = throughput[0]
    per = low_total / low
    top, best, _ = max(throughput, key=lambda m: m[1])
    knee = max(low, math.ceil(round(best / per, 6)))
    if throughput[-1][0] <= knee:
        return None
    how = (
        f"{top} workers drained {best:.0f}/s, {low} drained {per:.0f}/s each (measured from the backlog's"
        f" fall): {knee} reach that, more add no throughput"
    )
    return Knee(knee, per, best, how)


def _fewest(
    scaling: Scaling,
    total: int,
    age: float | None,
    rates: Sequence[float],
    pods: int,
    drain_rate: float,
    startup: float,
    current: int,
    up: int,
    knee: Knee | None = None,
    starting_for: float | None = None,
) -> tuple[int, str] | None:
    """The fewest replicas, from ``current`` (a hold) up to ``up`` (the scale-up asked), that drain this
    backlog within ``SPARE_STARTUPS`` start-ups of the time ``up`` would take, with every pod that would work
    at least its own start-up kept and the objectives set (the oldest message's wait, the drain time) met,
    and why; None when that is ``up`` or the working pods do not keep up (then the arrivals, hidden behind
    their rates, are unknown). The ``pods`` working drain ``drain_rate`` each less what arrives (their recent
    rates); pods asked for and not yet up join when their start-up ends (``starting_for``: how long ago they
    were asked; unknown: as if now); pods added now are Ready after ``startup``; each adds ``drain_rate`` (up to
    the knee's total, when one is measured). With no worker up (from 0 replicas, or all of them starting) the
    rate is one measured on an earlier backlog (the caller passes it only while fresh)."""
    arriving = sum(rates)  # the workers' recent rates: what has been arriving, as long as they keep up
    now_rate = pods * drain_rate - arriving
    if total <= 0 or (pods >= 1 and now_rate <= 0):
        return None

    def rate(n: int) -> float:
        return (knee.total(n) if knee is not None else n * drain_rate) - arriving

    # when the pods asked for and not yet up join (none: now)
    joins = 0.0 if current <= pods else startup if starting_for is None else max(0.0, startup - starting_for)

    def finish(n: int) -> float:
        """Seconds until the backlog is gone with ``n`` replicas asked for now."""
        # (seconds from now, messages/s from then on): the pods working, the ones asked for, the ones added
        phases = [(0.0, now_rate)]
        if current > pods:
            phases.append((joins, max(now_rate, rate(current))))
        if n > current:
            phases.append((startup, max(phases[-1][1], rate(n))))
        left = float(total)
        for k, (start, r) in enumerate(phases):
            end = phases[k + 1][0] if k + 1 < len(phases) else math.inf
            if left <= r * (end - start):
                return start + left / r
            left -= r * (end - start)
        return math.inf  # not reached: the last phase has no end

    def added(n: int) -> float:
        """Seconds the pods added for ``n`` replicas would work (0 when they would add nothing)."""
        return max(0.0, finish(n) - startup) if n > current and rate(n) > rate(current) else 0.0

    wait, drain = scaling.target_wait_seconds, scaling.target_drain_seconds
    fastest = finish(up)

    def meets(n: int) -> bool:
        t = finish(n)
        if t > fastest + SPARE_STARTUPS * startup:
            return False
        # an objective the scale-up asked cannot meet either does not ask for more than it would get
        return t <= fastest or ((not wait or (age or 0.0) + t <= wait) and (not drain or t <= drain))

    fewest = next((n for n in range(max(current, 1), up) if meets(n)), up)
    worth = max((n for n in range(current + 1, up + 1) if added(n) >= startup), default=current)
    count = max(fewest, worth)
    if count >= up:
        return None
    how = (
        f"{pods} workers at {drain_rate:.1f}/s each (measured from the backlog's fall), less arrivals"
        f" {arriving:.1f}/s"
        if pods
        else f"{'no worker up yet' if current else 'from 0 replicas'}, pods draining {drain_rate:.1f}/s each"
        " (measured from an earlier backlog's fall)"
    )
    held = f"{current} replicas" + (f" ({current - pods} starting)" if current > pods else "")
    if count == current and finish(current) <= startup:
        return count, (
            f"{how}: {held} drain it in {finish(current):.1f}s, before a pod started now could be Ready"
            f" ({startup:.1f}s start-up)"
        )
    objectives = (f" and the {wait:g}s wait target" if wait else "") + (
        f" and the {drain:g}s drain target" if drain else ""
    )
    pace = f"{rate(up) + arriving:.0f}/s in all" + (", the knee" if knee is not None else "")
    ends = held if count == current else f"{count} replicas"
    return count, (
        f"{how}: {ends} drain it in {finish(count):.1f}s, {up} ({pace}) in {fastest:.1f}s: within"
        f" {SPARE_STARTUPS:g} x the {startup:.1f}s pod start-up{objectives}, and more pods would each work"
        " less than they take to start"
    )


def decide(
    scaling: Scaling,
    reading: Backlog | None,
    rates: Sequence[float],
    current: int,
    state: PolicyState,
    now: float,
    paused: bool = False,
    worker_idle: Sequence[float] = (),
) -> Decision:
    """Desired replicas for one poll. ``reading`` is None when Redis could not be read; ``rates`` are the
    recent messages/s of each live worker (from heartbeats), ``worker_idle`` the seconds each had been idle;
    ``current`` is the target's replica count."""
    if paused:
        return Decision(current, "paused", f"paused by annotation: holding {current} replicas", state)

    if reading is None:
        failures = state.failures + 1
        st = replace(state, failures=failures)
        fb = scaling.fallback
        over = failures >= fb.failure_threshold
        if over and fb.replicas is not None:
            desired = max(1, fb.replicas)
            reason = (
                f"{failures} failed Redis reads in a row (threshold {fb.failure_threshold}): "
                f"fallback to {desired} replicas"
            )
            return Decision(desired, "fallback", reason, _record(st, current, desired, now), fallback=True)
        reason = f"Redis read failed ({failures} in a row): holding {current} replicas"
        if over:  # no fallback count applies: say so, and do not claim a fallback
            reason += f" (threshold {fb.failure_threshold} reached; no fallback.replicas set)"
        return Decision(current, "read-failed", reason, st)

    total = reading.total
    target = scaling.target_backlog_per_replica
    last_active = state.last_active_time
    if total > 0 or (last_active is None and current > 0):
        last_active = now  # an unknown history counts as active, so a restart never skips the cooldown

    raw = math.ceil(total / target)
    rule = "target"
    live = [r for r in rates if r > 0]
    detail = f"backlog {total} ({reading.describe()}) / {target} per replica = {raw}"
    if scaling.target_drain_seconds and total > 0 and live:
        per = sum(live) / len(live)
        need = math.ceil(total / (per * scaling.target_drain_seconds))
        if need > raw:
            raw, rule = need, "drain-time"
            detail += (
                f"; draining in {scaling.target_drain_seconds:g}s at {per:.1f}/s per replica needs {need}"
            )

    wait = scaling.target_wait_seconds
    age = reading.oldest_age
    capacity, saturated = state.capacity, False
    rate_need = 0
    if wait and live:
        saturated = age is not None and age > wait
        if saturated:  # every worker is busy: their rates are what a replica can do
            per_now = sum(live) / len(live)
            capacity = max(per_now, capacity or 0.0) if state.saturated else per_now
        arrivals = _arrivals(state.last_reading, total, live, now)
        if capacity and arrivals:
            rate_need = math.ceil(round(ARRIVAL_HEADROOM * arrivals / capacity, 6))
            if rate_need > raw:
                raw, rule = rate_need, "arrival-rate"
                detail += (
                    f"; arrivals {arrivals:.1f}/s at {capacity:.1f}/s per replica (measured while messages"
                    f" waited past the target) x {ARRIVAL_HEADROOM:g} headroom need {rate_need}"
                )
    if wait and age is not None and age > wait:
        base = max(current, rate_need)
        need = max(current + 1, math.ceil(base * age / wait))
        how = f"oldest message waited {age:.1f}s > {wait:g}s target: max({current} + 1, ceil({base} x {age:.1f} / {wait:g})) = {need}"
        arrivals = _arrivals(state.last_reading, total, live, now)
        if live and arrivals is not None:
            per = capacity or sum(live) / len(live)
            drain = math.ceil((arrivals + total / wait) / per)
            how += (
                f"; arrivals {arrivals:.1f}/s plus backlog {total} drained within {wait:g}s at {per:.1f}/s"
                f" per replica = {drain}"
            )
            need = max(need, drain)
        if need > raw:
            raw, rule = need, "wait-time"
            detail += f"; {how}"

    workers = len(rates)
    waiting = total - reading.busy
    measured = _drain_rate(state, total, waiting, workers, now)
    throughput = _throughput(state, workers, measured, now)
    last_rate = state.drain_rate if measured is None else measured
    at_count = next((r / n for n, r, _ in throughput if n == workers), None) if throughput else None
    # the rate measured at this count (before this reading), not at the last count measured
    drain_rate = at_count if measured is None and at_count is not None else last_rate
    startup, awaiting = state.startup, state.awaiting
    if awaiting is not None and workers > awaiting[1]:
        startup, awaiting = now - awaiting[0], None
    knee = _knee(throughput) if throughput else None
    if knee is not None and measured == 0.0 and workers >= knee.count:
        if raw > max(current, knee.count):
            detail += f"; {knee.how}, but {workers} workers did not drain it: not capped"
        knee = None
    pods = min(workers, current)
    # with no worker up (from zero, or all starting) only on a rate measured within KNEE_MEMORY (fresh
    # throughput): a rate from an old backlog may no longer hold
    warm = pods >= 1 or bool(throughput)
    if SPARE_STARTUPS > 0 and raw > current and warm and rule != "arrival-rate" and drain_rate and startup:
        up = min(raw, scaling.max_replicas, max(current, knee.count) if knee is not None else raw)
        since = None if awaiting is None else now - awaiting[0]
        fewer = _fewest(scaling, total, age, rates, pods, drain_rate, startup, current, up, knee, since)
        if fewer:
            raw, why = fewer
            rule = "drains-first" if raw == current else "fewest-pods"
            detail += "; " + why
    measuring = (
        SPARE_STARTUPS > 0
        and min(raw, scaling.max_replicas) > current >= 1
        and rule not in ("arrival-rate", "wait-time")
        and drain_rate is None
        and not throughput
        and startup is not None
        and awaiting is None  # no pods asked for are still starting
        and workers >= 1
        and waiting > 0
        and state.last_waiting is None
    )
    if measuring:  # the first backlog these workers meet: its fall over one ramp read says what they drain
        raw, rule = current, "measuring"
        detail += (
            f"; no drain rate measured yet: holding {current} replicas for one quick read (a fraction of the"
            " interval) that measures it from the backlog's fall, then the fewest pods that drain it"
        )

    if knee is not None and raw > max(current, knee.count):
        raw, rule = max(current, knee.count), "knee"
        detail += f"; {knee.how}: {raw}"

    if current == 0:
        if reading.busy == 0 and reading.retries_due == 0 and total <= scaling.activation_backlog:
            raw, rule = 0, "below-activation"
            detail = (
                f"backlog {total} ({reading.describe()}) not above activation {scaling.activation_backlog}"
            )
        elif total <= scaling.activation_backlog:
            rule = "retry-due" if reading.retries_due else "in-flight"
            raw = max(raw, 1)

    windows = schedule.active(scaling.schedules, now) if scaling.schedules else ()
    floor, cap = schedule.bounds(windows)
    lo, hi = scaling.min_replicas, scaling.max_replicas
    by_floor = floor is not None and floor > lo
    by_cap = cap is not None and cap < hi
    if floor is not None:
        lo = min(max(lo, floor), hi)
    if cap is not None:
        hi = min(hi, cap)
    conflict = lo > hi  # a window's floor above another's cap, or spec.minReplicas above a window's cap
    if windows:
        detail += "; " + _describe(windows)
        if conflict:
            detail += f" (floor {lo} exceeds cap {hi}: the cap wins)"
    lo = min(lo, hi)
    rec = min(max(raw, lo), hi)
    if rec != raw:
        up = rec > raw
        rule = "min" if up else "max"
        if conflict:
            rule = "schedule-max"  # the floor asked for more: the cap set the count
        elif (up and by_floor) or (not up and by_cap):
            rule = "schedule-" + rule
        detail += f"; clamped to [{lo}, {hi}]"

    to_zero = False
    if rec == 0 and current > 0:
        idle = now - (last_active if last_active is not None else now)
        if idle < scaling.cooldown_seconds:
            rec, rule = 1, "cooldown"
            detail = f"backlog 0 for {idle:.0f}s of the {scaling.cooldown_seconds:g}s cooldown"
        else:
            to_zero, rule = True, "to-zero"
            detail = (
                f"backlog 0, in-flight included, for {idle:.0f}s (cooldown {scaling.cooldown_seconds:g}s)"
            )

    horizon = max(scaling.scale_up.stabilization_seconds, scaling.scale_down.stabilization_seconds)
    history = (*((t, r) for t, r in state.recommendations if now - t < horizon), (now, rec))
    period = max(scaling.scale_up.period_seconds, scaling.scale_down.period_seconds)
    events = tuple((t, d) for t, d in state.scale_events if now - t < period)
    st = PolicyState(
        history,
        events,
        state.last_scale_time,
        0,
        last_active,
        (now, total),
        capacity,
        saturated,
        (now, total, workers) if waiting > 0 else None,
        last_rate,
        startup,
        awaiting,
        throughput,
    )

    idle_for = now - last_active if total == 0 and last_active is not None else 0.0
    settle = max(IDLE_SECONDS, scaling.scale_down.period_seconds)  # idle this long: not held by the window
    idle = idle_for >= settle
    if to_zero:
        desired = 0
    else:
        up_rec = min(r for t, r in history if now - t <= scaling.scale_up.stabilization_seconds)
        down_rec = max(r for t, r in history if now - t <= scaling.scale_down.stabilization_seconds)
        desired = max(current, up_rec)
        if idle and rec < min(desired, down_rec):
            desired, rule = rec, "idle"
            detail += f"; idle for {idle_for:.0f}s: the scale-down window holds no idle pods"
        desired = min(desired, down_rec)
        # workers past the count are leaving (a scale-down just made): the idle ones first, so not counted
        spare = (
            max(0, sum(1 for i in worker_idle if i >= settle) - max(0, workers - current))
            if worker_idle
            else 0
        )
        floor = max(rec, current - spare)
        if desired != rec and floor < desired and waiting <= 0 and reading.retries_due == 0:
            desired, rule = floor, "idle-pods"
            detail += (
                f"; {spare} workers idle for {settle:g}s or more with nothing waiting: the scale-down"
                " window holds no idle pods"
            )
        elif desired != rec:
            rule = "stabilized"
            window = "up" if desired < rec else "down"
            detail += f"; {window} stabilization window holds {desired}"
        if desired > current:
            limit = _up_limit(scaling.scale_up, current, events, now)
            if desired > limit:
                desired, rule = int(limit), "rate-limit-up"
                detail += f"; scale-up limit {desired} per {scaling.scale_up.period_seconds:g}s"
        elif desired < current:
            limit = _down_limit(scaling.scale_down, current, events, now)
            if desired < limit:
                desired, rule = int(limit), "rate-limit-down"
                detail += f"; scale-down limit {desired} per {scaling.scale_down.period_seconds:g}s"

    if st.awaiting is not None and desired <= workers:
        st = replace(st, awaiting=None)  # every pod asked for is up (or the count came back down)
    if st.awaiting is None and desired > max(current, workers):
        st = replace(st, awaiting=(now, workers))  # the first reading with a new worker measures start-up
    change = f"holding {current}" if desired == current else f"{current} -> {desired}"
    reason = f"{detail}; {change}"
    return Decision(
        desired, rule, reason, _record(st, current, desired, now), windows=windows, read_soon=measuring
    )


def _describe(windows: Sequence[schedule.Window]) -> str:
    """The open windows, with when each closes (a time, not a countdown: a reason that changed every poll
    would rewrite the status of a quiet resource every few seconds)."""
    parts = []
    for w in windows:
        s = w.schedule
        bounds = "/".join(
            f"{name} {v}" for name, v in (("min", s.min_replicas), ("max", s.max_replicas)) if v is not None
        )
        closes = datetime.datetime.fromtimestamp(w.closes, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append(f"{s.field} ({s.cron_text} {s.timezone}; {bounds}) open until {closes}")
    return "scheduled window" + ("s " if len(parts) > 1 else " ") + ", ".join(parts)
