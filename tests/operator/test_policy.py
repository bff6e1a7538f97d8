"""Table-driven tests of the pure scaling policy: each row is (scaling overrides, reading, current, state,
now) -> (desired, rule)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from tide_operator import policy
from tide_operator.policy import PolicyState, decide
from tide_operator.spec import Behavior, Fallback, Scaling, parse_scaling
from tide_worker.backlog import Backlog

UNLIMITED = Behavior(0, None, None, 1)


def sc(**kw: Any) -> Scaling:
    """Defaults with a quiet scale-down (no window, no limit) unless a row sets them."""
    base = Scaling(target_backlog_per_replica=50, max_replicas=10, scale_down=UNLIMITED, cooldown_seconds=30)
    return replace(base, **kw)


def st(**kw: Any) -> PolicyState:
    return PolicyState(**kw)


T = 1000.0

# drains-first rows: the scaling as one tuple (rows unpack it), the state with a rate and a start-up measured
DF = (sc(),)
DF_ST = PolicyState(drain_rate=700.0, startup=1.5, last_reading=(T - 1, 0))


def DF_W(wait: float) -> tuple[Scaling]:
    return (sc(target_wait_seconds=wait),)


ROWS = [
    # id, scaling, reading, rates, current, state, now, desired, rule
    ("idle-stays-zero", sc(), Backlog(), [], 0, st(), T, 0, "below-activation"),
    ("burst-500-target-50", sc(), Backlog(ready=500), [], 0, st(), T, 10, "target"),
    ("one-message-wakes", sc(), Backlog(ready=1), [], 0, st(), T, 1, "target"),
    ("ceil", sc(), Backlog(ready=51), [], 1, st(), T, 2, "target"),
    ("clamp-max", sc(), Backlog(ready=5000), [], 0, st(), T, 10, "max"),
    ("clamp-min", sc(min_replicas=2), Backlog(), [], 2, st(last_active_time=T - 100), T, 2, "min"),
    ("min-wakes-from-zero", sc(min_replicas=2), Backlog(), [], 0, st(), T, 2, "min"),
    ("below-activation", sc(activation_backlog=20), Backlog(ready=20), [], 0, st(), T, 0, "below-activation"),
    ("above-activation", sc(activation_backlog=20), Backlog(ready=21), [], 0, st(), T, 1, "target"),
    # activation only gates 0 -> 1: once running, a small backlog keeps one replica
    ("activation-not-for-running", sc(activation_backlog=20), Backlog(ready=5), [], 1, st(), T, 1, "target"),
    ("retry-due-wakes", sc(activation_backlog=20), Backlog(retries_due=1), [], 0, st(), T, 1, "retry-due"),
    (
        "retry-not-due-sleeps",
        sc(),
        Backlog(retries_waiting=3, next_retry_at=T + 60),
        [],
        0,
        st(),
        T,
        0,
        "below-activation",
    ),
    (
        "orphaned-inflight-wakes",
        sc(activation_backlog=5),
        Backlog(inflight=2),
        [],
        0,
        st(),
        T,
        1,
        "in-flight",
    ),
    ("inflight-counts", sc(), Backlog(ready=0, inflight=120), [], 1, st(), T, 3, "target"),
    ("stream-lag-pending", sc(), Backlog(stream_lag=300, stream_pending=200), [], 0, st(), T, 10, "target"),
    ("stream-pending-only-holds-one", sc(), Backlog(stream_pending=1), [], 1, st(), T, 1, "target"),
    # drain objective: 600 backlog, 10/s per replica, 10 s -> 6 replicas (target alone says 2)
    (
        "drain-time",
        sc(target_backlog_per_replica=300, target_drain_seconds=10),
        Backlog(ready=600),
        [10.0, 10.0],
        2,
        st(),
        T,
        6,
        "drain-time",
    ),
    (
        "drain-time-no-rates",
        sc(target_backlog_per_replica=300, target_drain_seconds=10),
        Backlog(ready=600),
        [0.0],
        2,
        st(),
        T,
        2,
        "target",
    ),
    (
        "drain-time-target-wins",
        sc(target_backlog_per_replica=100, target_drain_seconds=60),
        Backlog(ready=600),
        [100.0],
        2,
        st(),
        T,
        6,
        "target",
    ),
    (
        "drain-time-clamped",
        sc(target_backlog_per_replica=1000, target_drain_seconds=1),
        Backlog(ready=600),
        [1.0],
        2,
        st(),
        T,
        10,
        "max",
    ),
    # wait-time objective: the oldest message waited longer than targetWaitSeconds
    (
        "wait-proportional",  # target alone says 1; ceil(2 x 30 / 10) = 6
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=30),
        [],
        2,
        st(),
        T,
        6,
        "wait-time",
    ),
    (
        "wait-at-least-one-more",  # ceil(4 x 10.5 / 10) = 5 = 4 + 1
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=10.5),
        [],
        4,
        st(),
        T,
        5,
        "wait-time",
    ),
    (
        "wait-one-more-when-proportion-rounds-to-current",  # ceil(1 x 10.01 / 10) = 2
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=10.01),
        [],
        1,
        st(),
        T,
        2,
        "wait-time",
    ),
    (
        "wait-within-target",
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=10),
        [],
        2,
        st(),
        T,
        1,
        "target",
    ),
    ("wait-unknown-age", sc(target_wait_seconds=10), Backlog(ready=20), [], 2, st(), T, 1, "target"),
    ("wait-unset", sc(), Backlog(ready=20, oldest_age=999), [], 2, st(), T, 1, "target"),
    (
        "wait-backlog-rule-higher",  # the wait rule only ever raises: target says 10
        sc(target_wait_seconds=10),
        Backlog(ready=500, oldest_age=20),
        [],
        1,
        st(),
        T,
        10,
        "target",
    ),
    (
        # arrivals 20/s + (2000-1900)/1s = 120/s; the drain: (120 + 2000/10) / 10 per replica = 32, above
        # the floor ceil(1.2 x 120 / 10) = 15 and the proportional ceil(15 x 11 / 10) = 17
        "wait-rates-and-arrivals",
        sc(target_wait_seconds=10, max_replicas=40, target_backlog_per_replica=1000),
        Backlog(ready=2000, oldest_age=11),
        [10.0, 10.0],
        2,
        st(last_reading=(T - 1, 1900)),
        T,
        32,
        "wait-time",
    ),
    # the arrival-rate floor: with a wait objective and a measured per-replica capacity, never below
    # ceil(1.2 x arrivals / capacity); 12 workers at 2000/s, 400/s each measured while messages waited
    (
        "arrival-floor-age-under-target",  # the backlog rule says 1; 1.2 x 2000 / 400 = 6, not 1
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.3),
        [2000 / 12] * 12,
        12,
        st(last_reading=(T - 1, 20), capacity=400.0),
        T,
        6,
        "arrival-rate",
    ),
    (
        "arrival-floor-holds",  # at the floor, arrivals still 2000/s: holding 6
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.3),
        [2000 / 6] * 6,
        6,
        st(last_reading=(T - 1, 20), capacity=400.0),
        T,
        6,
        "arrival-rate",
    ),
    (
        "arrival-floor-follows-arrivals-down",  # back to 200/s: ceil(1.2 x 200 / 400) = 1
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.1),
        [200 / 6] * 6,
        6,
        st(last_reading=(T - 1, 20), capacity=400.0),
        T,
        1,
        "target",
    ),
    (
        "arrival-floor-arrivals-stopped",  # no worker reports a rate: the backlog rule and the cooldown
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(),
        [0.0] * 6,
        6,
        st(last_reading=(T - 1, 0), capacity=400.0, last_active_time=T - 100),
        T,
        0,
        "to-zero",
    ),
    (
        "arrival-floor-no-rates",  # no rates measured at all: the backlog rule, as without the objective
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.3),
        [],
        6,
        st(last_reading=(T - 1, 20), capacity=400.0),
        T,
        1,
        "target",
    ),
    (
        # rates but no capacity measured yet (no message has waited past the target): a rate measured
        # without a backlog is only what arrived, 2000 / 12 would hold 12 forever; the backlog rule
        "arrival-floor-no-capacity-yet",
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.3),
        [2000 / 12] * 12,
        12,
        st(last_reading=(T - 1, 20)),
        T,
        1,
        "target",
    ),
    (
        "arrival-floor-without-objective",  # no targetWaitSeconds: no floor, whatever the state says
        sc(target_backlog_per_replica=1000, max_replicas=12),
        Backlog(ready=20, oldest_age=0.3),
        [2000 / 12] * 12,
        12,
        st(last_reading=(T - 1, 20), capacity=400.0),
        T,
        1,
        "target",
    ),
    (
        # over the target at the floor: capacity measured now (6 x 400/s busy), arrivals 2400/s, floor
        # ceil(1.2 x 2400 / 400) = 8, then in proportion to the age from it: ceil(8 x 3 / 2) = 12
        "arrival-floor-then-proportional",
        sc(target_wait_seconds=2, target_backlog_per_replica=1000, max_replicas=20),
        Backlog(ready=1000, oldest_age=3),
        [400.0] * 6,
        6,
        st(last_reading=(T - 1, 1000)),
        T,
        12,
        "wait-time",
    ),
    (
        "wait-rates-no-history",  # no arrival rate yet: the proportional rule, max(3, ceil(2 x 20 / 10))
        sc(target_wait_seconds=10, max_replicas=20),
        Backlog(ready=20, oldest_age=20),
        [10.0, 10.0],
        2,
        st(),
        T,
        4,
        "wait-time",
    ),
    (
        "wait-draining-backlog",  # arrivals 20 - 100/s clamp to 0; (0 + 2) / 10 -> 1 < proportional 4
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=20),
        [10.0, 10.0],
        2,
        st(last_reading=(T - 1, 120)),
        T,
        4,
        "wait-time",
    ),
    (
        "wait-clamped",
        sc(target_wait_seconds=10),
        Backlog(ready=20, oldest_age=100),
        [],
        8,
        st(),
        T,
        10,
        "max",
    ),
    (
        "wait-rate-limited",
        sc(target_wait_seconds=10, scale_up=Behavior(0, 2, None, 15)),
        Backlog(ready=20, oldest_age=50),
        [],
        2,
        st(),
        T,
        4,
        "rate-limit-up",
    ),
    (
        "wait-over-scale-down-stabilized",  # the age is back under target: down waits out its window
        sc(target_wait_seconds=10, scale_down=Behavior(60, None, None, 1)),
        Backlog(ready=20, oldest_age=1),
        [],
        6,
        st(recommendations=((T - 10, 6),)),
        T,
        6,
        "stabilized",
    ),
    # cooldown to zero
    ("cooldown-holds-one", sc(), Backlog(), [], 1, st(last_active_time=T - 10), T, 1, "cooldown"),
    ("cooldown-over", sc(), Backlog(), [], 1, st(last_active_time=T - 30), T, 0, "to-zero"),
    ("cooldown-from-many", sc(), Backlog(), [], 4, st(last_active_time=T - 10), T, 1, "cooldown"),
    (
        "to-zero-skips-window",
        sc(scale_down=Behavior(300, 1, None, 60)),
        Backlog(),
        [],
        4,
        st(last_active_time=T - 31, recommendations=((T - 5, 4),)),
        T,
        0,
        "to-zero",
    ),
    ("unknown-history-starts-cooldown", sc(), Backlog(), [], 3, st(), T, 1, "cooldown"),
    (
        "never-zero-while-inflight",
        sc(),
        Backlog(inflight=1),
        [],
        1,
        st(last_active_time=T - 999),
        T,
        1,
        "target",
    ),
    (
        "never-zero-while-pending",
        sc(),
        Backlog(stream_pending=1),
        [],
        2,
        st(last_active_time=T - 999),
        T,
        1,
        "target",
    ),
    ("zero-cooldown", sc(cooldown_seconds=0), Backlog(), [], 2, st(last_active_time=T), T, 0, "to-zero"),
    # idle: nothing waiting, running or due for IDLE_SECONDS: the down window holds no idle pods
    (
        "idle-releases-window-rate-limited",
        sc(scale_down=Behavior(30, None, 50, 5)),
        Backlog(),
        [],
        10,
        st(last_active_time=T - 6, recommendations=((T - 8, 10),)),
        T,
        5,
        "rate-limit-down",
    ),
    (
        "idle-releases-window-unlimited",
        sc(scale_down=Behavior(30, None, None, 1)),
        Backlog(),
        [],
        10,
        st(last_active_time=T - 6, recommendations=((T - 8, 10),)),
        T,
        1,
        "idle",
    ),
    (
        "idle-too-short-window-holds",
        sc(scale_down=Behavior(30, None, 50, 5)),
        Backlog(),
        [],
        10,
        st(last_active_time=T - 4, recommendations=((T - 8, 10),)),
        T,
        10,
        "stabilized",
    ),
    (
        "idle-waits-a-longer-period",
        sc(scale_down=Behavior(30, None, 50, 20)),
        Backlog(),
        [],
        10,
        st(last_active_time=T - 10, recommendations=((T - 12, 10),)),
        T,
        10,
        "stabilized",
    ),
    (
        "idle-down-to-the-floor",
        sc(min_replicas=2, scale_down=Behavior(30, None, None, 1)),
        Backlog(),
        [],
        6,
        st(last_active_time=T - 10, recommendations=((T - 12, 6),)),
        T,
        2,
        "idle",
    ),
    (
        "not-idle-while-inflight",
        sc(scale_down=Behavior(30, None, None, 1)),
        Backlog(inflight=1),
        [],
        10,
        st(last_active_time=T - 10, recommendations=((T - 12, 10),)),
        T,
        10,
        "stabilized",
    ),
    (
        "not-idle-while-retry-due",
        sc(scale_down=Behavior(30, None, None, 1)),
        Backlog(retries_due=1),
        [],
        10,
        st(last_active_time=T - 10, recommendations=((T - 12, 10),)),
        T,
        10,
        "stabilized",
    ),
    # stabilization windows
    (
        "down-window-holds-max",
        sc(scale_down=Behavior(60, None, None, 1)),
        Backlog(ready=100),
        [],
        8,
        st(recommendations=((T - 30, 8), (T - 10, 5))),
        T,
        8,
        "stabilized",
    ),
    (
        "down-window-expired",
        sc(scale_down=Behavior(60, None, None, 1)),
        Backlog(ready=100),
        [],
        8,
        st(recommendations=((T - 61, 8), (T - 10, 5))),
        T,
        5,
        "stabilized",
    ),
    (
        "up-window-holds-min",
        sc(scale_up=Behavior(30, None, None, 1)),
        Backlog(ready=500),
        [],
        2,
        st(recommendations=((T - 10, 3),)),
        T,
        3,
        "stabilized",
    ),
    (
        "up-window-empty",
        sc(scale_up=Behavior(30, None, None, 1)),
        Backlog(ready=500),
        [],
        2,
        st(),
        T,
        10,
        "target",
    ),
    # rate limits
    (
        "up-pods",
        sc(scale_up=Behavior(0, 4, None, 15)),
        Backlog(ready=500),
        [],
        2,
        st(),
        T,
        6,
        "rate-limit-up",
    ),
    (
        "up-percent",
        sc(scale_up=Behavior(0, None, 100, 15)),
        Backlog(ready=500),
        [],
        3,
        st(),
        T,
        6,
        "rate-limit-up",
    ),
    (
        "up-max-of-policies",
        sc(scale_up=Behavior(0, 4, 100, 15)),
        Backlog(ready=500),
        [],
        1,
        st(),
        T,
        5,
        "rate-limit-up",
    ),
    (
        "up-percent-from-zero",
        sc(scale_up=Behavior(0, None, 100, 15)),
        Backlog(ready=500),
        [],
        0,
        st(),
        T,
        1,
        "rate-limit-up",
    ),
    (
        "up-period-used",
        sc(scale_up=Behavior(0, 4, None, 15)),
        Backlog(ready=500),
        [],
        6,
        st(scale_events=((T - 5, 4),)),
        T,
        6,
        "rate-limit-up",
    ),
    (
        "up-period-over",
        sc(scale_up=Behavior(0, 4, None, 15)),
        Backlog(ready=500),
        [],
        6,
        st(scale_events=((T - 16, 4),)),
        T,
        10,
        "target",
    ),
    (
        "down-pods",
        sc(scale_down=Behavior(0, 2, None, 10)),
        Backlog(ready=50),
        [],
        8,
        st(),
        T,
        6,
        "rate-limit-down",
    ),
    (
        "down-percent",
        sc(scale_down=Behavior(0, None, 50, 10)),
        Backlog(ready=50),
        [],
        10,
        st(),
        T,
        5,
        "rate-limit-down",
    ),
    (
        "down-min-of-policies",
        sc(scale_down=Behavior(0, 2, 50, 10)),
        Backlog(ready=50),
        [],
        10,
        st(),
        T,
        5,
        "rate-limit-down",
    ),
    (
        "down-period-used",
        sc(scale_down=Behavior(0, None, 50, 10)),
        Backlog(ready=50),
        [],
        5,
        st(scale_events=((T - 3, -5),)),
        T,
        5,
        "rate-limit-down",
    ),
    # drains-first: one worker measured at 700/s (the backlog's fall), pods measured to start in 1.5 s, the
    # worker's recent rate 1/s as the arrivals; sc() would ask ceil(backlog / 50) replicas, clamped to 10
    ("drains-first-before-ready", *DF, Backlog(ready=1000), [1.0], 1, DF_ST, T, 1, "drains-first"),  # 1.4 s
    ("drains-first-within-two-startups", *DF, Backlog(ready=2000), [1.0], 1, DF_ST, T, 1, "drains-first"),
    # 3.1 s: ten pods would end it in 1.7 s, so holding ends it within one start-up of them
    (
        "drains-first-within-a-start-up-of-ten",
        *DF,
        Backlog(ready=2200),
        [1.0],
        1,
        DF_ST,
        T,
        1,
        "drains-first",
    ),
    # 4.3 s held; two end it in 2.9 s, ten in 1.8 s (each added pod working 0.3 s of its 1.5 s start-up)
    ("drains-first-too-much", *DF, Backlog(ready=3000), [1.0], 1, DF_ST, T, 2, "fewest-pods"),
    (
        "drains-first-inflight-counts",
        *DF,
        Backlog(ready=1000, inflight=2200),
        [1.0],
        1,
        DF_ST,
        T,
        2,
        "fewest-pods",
    ),
    # ten end it in 4.2 s, each added pod working 2.7 s, more than its start-up: all ten
    ("drains-first-far-too-much", *DF, Backlog(ready=20_000), [1.0], 1, DF_ST, T, 10, "max"),
    ("drains-first-two-workers", *DF, Backlog(ready=4000), [1.0, 1.0], 2, DF_ST, T, 2, "drains-first"),
    # a worker whose pod is going away still heartbeats: only the current replicas count as draining
    ("drains-first-stopping-worker", *DF, Backlog(ready=4000), [1.0, 1.0], 1, DF_ST, T, 3, "fewest-pods"),
    ("drains-first-arrivals-outpace", *DF, Backlog(ready=1000), [700.0], 1, DF_ST, T, 10, "max"),
    ("drains-first-arrivals-slow-it", *DF, Backlog(ready=1000), [300.0], 1, DF_ST, T, 1, "drains-first"),
    ("drains-first-from-zero", *DF, Backlog(ready=1000), [], 0, DF_ST, T, 10, "max"),  # nothing fresh: all
    # from zero with a drain measured 60 s ago: ten end 2000 in 1.5 + 0.3 s, two in 1.5 + 1.4 s (within a
    # start-up), and a second pod's 1.4 s of work is under its 1.5 s start-up: two
    (
        "fewest-pods-from-zero",
        *DF,
        Backlog(ready=2000),
        [],
        0,
        replace(DF_ST, throughput=((1, 700.0, T - 60),)),
        T,
        2,
        "fewest-pods",
    ),
    (
        "fewest-pods-from-zero-rate-forgotten",  # measured past KNEE_MEMORY: a cold start scales fully
        *DF,
        Backlog(ready=2000),
        [],
        0,
        replace(DF_ST, throughput=((1, 700.0, T - 700),)),
        T,
        10,
        "max",
    ),
    (
        "fewest-pods-from-zero-far-too-much",  # 20,000: each of ten pods works 2.9 s, past its start-up
        *DF,
        Backlog(ready=20_000),
        [],
        0,
        replace(DF_ST, throughput=((1, 700.0, T - 60),)),
        T,
        10,
        "max",
    ),
    (
        "fewest-pods-from-zero-below-activation",  # activation still decides at zero
        sc(activation_backlog=5000),
        Backlog(ready=2000),
        [],
        0,
        replace(DF_ST, throughput=((1, 700.0, T - 60),)),
        T,
        0,
        "below-activation",
    ),
    # a first backlog on a warm pod, a start-up measured and no drain rate yet: one quick read measures it
    (
        "drains-first-no-rate",
        *DF,
        Backlog(ready=1000),
        [1.0],
        1,
        replace(DF_ST, drain_rate=None),
        T,
        1,
        "measuring",
    ),
    (
        "measuring-done-nothing-measured",  # the read after measured nothing (a worker joined): scale up
        *DF,
        Backlog(ready=1000),
        [1.0, 1.0],
        1,
        replace(DF_ST, drain_rate=None, last_waiting=(T - 0.25, 1200, 1)),
        T,
        10,
        "max",
    ),
    (
        "measuring-no-startup",  # nothing could use the rate yet: no hold
        *DF,
        Backlog(ready=1000),
        [1.0],
        1,
        replace(DF_ST, drain_rate=None, startup=None),
        T,
        10,
        "max",
    ),
    (
        "measuring-not-past-the-wait-target",  # the oldest waited 3 s of a 2 s target: no time to measure
        *DF_W(2.0),
        Backlog(ready=1000, oldest_age=3.0),
        [1.0],
        1,
        replace(DF_ST, drain_rate=None),
        T,
        10,
        "max",
    ),
    (
        "drains-first-rate-zero",
        *DF,
        Backlog(ready=1000),
        [1.0],
        1,
        replace(DF_ST, drain_rate=0.0),
        T,
        10,
        "max",
    ),
    (
        "drains-first-no-startup",
        *DF,
        Backlog(ready=1000),
        [1.0],
        1,
        replace(DF_ST, startup=None),
        T,
        10,
        "max",
    ),
    # measured in this reading: 2700 -> 2000 in 1 s with one worker and messages waiting in both
    (
        "drains-first-rate-measured-now",
        *DF,
        Backlog(ready=2000),
        [1.0],
        1,
        replace(DF_ST, drain_rate=None, last_waiting=(T - 1, 2700, 1)),
        T,
        1,
        "drains-first",
    ),
    (
        "drains-first-backlog-grew",  # saturated and growing: the workers do not keep up, rate 0
        *DF,
        Backlog(ready=2000),
        [1.0],
        1,
        replace(DF_ST, last_waiting=(T - 1, 1500, 1)),
        T,
        10,
        "max",
    ),
    (
        "drains-first-worker-joined",  # 2700 -> 1000 with a second worker up since: no rate from that
        *DF,
        Backlog(ready=1000),
        [1.0, 1.0],
        2,
        replace(DF_ST, drain_rate=None, last_waiting=(T - 1, 2700, 1)),
        T,
        10,
        "max",
    ),
    (
        "drains-first-startup-measured-now",  # a scale-up 1.5 s ago from 0 workers; the first one is up
        *DF,
        Backlog(ready=1000),
        [1.0],
        1,
        replace(DF_ST, startup=None, awaiting=(T - 1.5, 0)),
        T,
        1,
        "drains-first",
    ),
    # with a wait objective: hold only while the oldest message's age + the drain stays within it ...
    (
        "drains-first-wait-met",
        *DF_W(5),
        Backlog(ready=2000, oldest_age=1),
        [1.0],
        1,
        DF_ST,
        T,
        1,
        "drains-first",
    ),
    # held: 1 + 2.9 s; two: 1 + 2.2 s; three: 1 + 1.9 s, within the 3 s target
    (
        "drains-first-wait-missed",
        *DF_W(3),
        Backlog(ready=2000, oldest_age=1),
        [1.0],
        1,
        DF_ST,
        T,
        3,
        "fewest-pods",
    ),
    # ... unless no pod could be Ready before the backlog is gone (past the target: the wait rule asked 2)
    (
        "drains-first-past-wait",
        *DF_W(2),
        Backlog(ready=1000, oldest_age=3),
        [1.0],
        1,
        DF_ST,
        T,
        1,
        "drains-first",
    ),
    (
        "drains-first-drain-target-missed",  # targetDrainSeconds 2 < the 2.9 s drain: three end it in 1.9 s
        sc(target_drain_seconds=2, target_backlog_per_replica=100_000, max_replicas=10),
        Backlog(ready=2000),
        [1.0],
        1,
        DF_ST,
        T,
        3,
        "fewest-pods",
    ),
    (
        "drains-first-drain-target-met",  # within targetDrainSeconds 4: the drain rule's 500 is not needed
        sc(target_drain_seconds=4, target_backlog_per_replica=100_000, max_replicas=10),
        Backlog(ready=2000),
        [1.0],
        1,
        DF_ST,
        T,
        1,
        "drains-first",
    ),
    # two of three replicas still starting (asked 1 s ago, Ready in 0.5 s): with them, 5300 is gone in 2.9 s,
    # within a start-up of ten's 1.9 s, so no more are asked while they start
    (
        "drains-first-counts-pods-starting",
        *DF,
        Backlog(ready=5300),
        [1.0],
        3,
        replace(DF_ST, awaiting=(T - 1, 1)),
        T,
        3,
        "drains-first",
    ),
    ("drains-first-min-still-applies", sc(min_replicas=3), Backlog(ready=1000), [1.0], 1, DF_ST, T, 3, "min"),
    # read failures and fallback
    ("read-fail-holds", sc(), None, [], 4, st(), T, 4, "read-failed"),
    ("read-fail-never-zero", sc(), None, [], 0, st(), T, 0, "read-failed"),
    (
        "fallback-after-threshold",
        sc(fallback=Fallback(3, 2)),
        None,
        [],
        7,
        st(failures=2),
        T,
        2,
        "fallback",
    ),
    (
        "fallback-before-threshold",
        sc(fallback=Fallback(3, 2)),
        None,
        [],
        7,
        st(failures=1),
        T,
        7,
        "read-failed",
    ),
    (
        "fallback-hold-when-unset",
        sc(fallback=Fallback(3, None)),
        None,
        [],
        7,
        st(failures=5),
        T,
        7,
        "read-failed",
    ),
    ("fallback-never-zero", sc(fallback=Fallback(1, 0)), None, [], 3, st(), T, 1, "fallback"),
]


@pytest.mark.parametrize(
    ("scaling", "reading", "rates", "current", "state", "now", "desired", "rule"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_policy_table(scaling, reading, rates, current, state, now, desired, rule):
    d = decide(scaling, reading, rates, current, state, now)
    assert (d.desired, d.rule) == (desired, rule), d.reason


def test_wait_rule_is_stated_in_the_reason():
    s = sc(target_wait_seconds=10, max_replicas=40, target_backlog_per_replica=1000)
    d = decide(s, Backlog(ready=2000, oldest_age=11), [10.0, 10.0], 2, st(last_reading=(T - 1, 1900)), T)
    assert d.rule == "wait-time"
    assert "oldest message waited 11.0s > 10s target" in d.reason
    assert (
        "at 10.0/s per replica (measured while messages waited past the target) x 1.2 headroom need 15"
        in d.reason
    )
    assert "ceil(15 x 11.0 / 10)) = 17" in d.reason and "arrivals 120.0/s" in d.reason and "= 32" in d.reason
    assert d.state.last_reading == (T, 2000)  # the next decision's arrival rate starts here


@pytest.mark.parametrize(
    ("age", "rates", "state", "capacity", "saturated"),
    [
        pytest.param(3.0, [300.0, 500.0], st(), 400.0, True, id="measured-while-waiting"),
        pytest.param(
            3.0, [300.0], st(capacity=400.0, saturated=True), 400.0, True, id="episode-keeps-highest"
        ),
        pytest.param(3.0, [500.0], st(capacity=400.0, saturated=True), 500.0, True, id="episode-rises"),
        pytest.param(3.0, [300.0], st(capacity=400.0), 300.0, True, id="new-episode-starts-afresh"),
        pytest.param(1.0, [100.0], st(capacity=400.0, saturated=True), 400.0, False, id="not-waiting-keeps"),
        pytest.param(None, [100.0], st(), None, False, id="nothing-waits-nothing-measured"),
        pytest.param(3.0, [], st(capacity=400.0), 400.0, False, id="no-rates-keeps"),
    ],
)
def test_capacity_is_measured_only_while_messages_wait(age, rates, state, capacity, saturated):
    """A replica's capacity is the mean rate workers report while messages wait past the target (the
    highest of one such episode: a heartbeat's rate is a 30 s average that lags a burst)."""
    d = decide(
        sc(target_wait_seconds=2, max_replicas=20), Backlog(ready=5, oldest_age=age), rates, 2, state, T
    )
    assert (d.state.capacity, d.state.saturated) == (capacity, saturated)


def test_arrival_floor_stops_the_saw_tooth():
    """The step of bench/wait_objective.py in miniature: 2000 msgs/s, 400/s per replica, target 2 s, the
    default 30 s scale-down window and -50 % per 5 s. Without the floor, once the queue drains the backlog
    rule (1 replica) takes over after the window and the age climbs past the target again; with it, the
    count never falls under what the arrivals need once a capacity is measured, and the age stays under
    the target. When the arrivals stop, it scales down as before."""
    s = replace(
        sc(target_wait_seconds=2, target_backlog_per_replica=100_000, min_replicas=1, max_replicas=12),
        scale_down=Behavior(30, None, 50, 5),
    )
    state, current, backlog, waited = PolicyState(), 1, 0.0, []
    counts = []
    for i in range(400):
        arriving = 2000.0 if i < 300 else 0.0
        done = min(backlog + arriving, current * 400.0)
        backlog += arriving - done
        age = backlog / arriving if arriving and backlog else None  # FIFO at a steady arrival rate
        rates = [done / current] * current if current else []
        d = decide(s, Backlog(ready=int(backlog), oldest_age=age), rates, current, state, T + i)
        state, current = d.state, d.desired
        counts.append(current)
        if 60 <= i < 300:
            waited.append(age or 0.0)
    assert state.capacity == 400.0
    assert min(counts[60:300]) >= 6, counts  # ceil(1.2 x 2000 / 400) = 6, held while messages arrive
    assert max(waited) <= 2.0, waited
    assert counts[-1] == 1, counts  # arrivals stopped: down to minReplicas as before


def test_wait_raise_then_down_follows_stabilization():
    """Messages wait too long while the backlog rule wants 1: up at once; once the age is under target,
    down only after the scale-down window."""
    s = replace(sc(target_wait_seconds=5), scale_down=Behavior(10, None, None, 1))
    state, current, seq = PolicyState(), 1, []
    for i in range(30):
        age = 20.0 if i < 3 else 1.0
        d = decide(s, Backlog(ready=10, oldest_age=age), [], current, state, T + i)
        state, current = d.state, d.desired
        seq.append(current)
    assert seq[0] == 4 and max(seq) > 4  # ceil(1 x 20 / 5) = 4, then again from 4
    peak_at = seq.index(max(seq))
    assert all(x == max(seq) for x in seq[peak_at : peak_at + 10])  # the down window holds the peak
    assert seq[-1] == 1


def test_pause_freezes_everything():
    for reading in (Backlog(ready=10_000), Backlog(), None):
        d = decide(sc(), reading, [], 3, st(failures=9), T, paused=True)
        assert (d.desired, d.rule) == (3, "paused")
        assert d.state == st(failures=9)


def test_failures_count_and_reset():
    s = sc(fallback=Fallback(2, 4))
    d1 = decide(s, None, [], 1, st(), T)
    assert (d1.desired, d1.state.failures, d1.fallback) == (1, 1, False)
    d2 = decide(s, None, [], 1, d1.state, T + 1)
    assert (d2.desired, d2.state.failures, d2.fallback) == (4, 2, True)
    d3 = decide(s, Backlog(ready=60), [], 4, d2.state, T + 2)
    assert d3.state.failures == 0 and not d3.fallback


def test_scale_events_and_last_scale_time_recorded():
    d = decide(sc(), Backlog(ready=500), [], 0, st(), T)
    assert d.state.scale_events == ((T, 10),)
    assert d.state.last_scale_time == T
    same = decide(sc(), Backlog(ready=500), [], 10, d.state, T + 1)
    assert same.state.last_scale_time == T and same.desired == 10


def test_last_active_tracks_inflight():
    d = decide(sc(), Backlog(inflight=1), [], 1, st(last_active_time=T - 100), T)
    assert d.state.last_active_time == T
    d = decide(sc(), Backlog(), [], 1, st(last_active_time=T - 5), T)
    assert d.state.last_active_time == T - 5


def run(scaling: Scaling, readings: list[Backlog], start: int = 0, step: float = 1.0) -> list[int]:
    """Drive the policy as the daemon does, assuming every decision is applied."""
    state, current, out = PolicyState(), start, []
    for i, reading in enumerate(readings):
        d = decide(scaling, reading, [], current, state, T + i * step)
        state, current = d.state, d.desired
        out.append(current)
    return out


def test_drain_sequence_gradual_then_zero_after_cooldown():
    s = parse_scaling(
        {
            "targetBacklogPerReplica": 50,
            "cooldownSeconds": 5,
            "scaleDown": {"stabilizationSeconds": 2, "maxStepPercent": 50, "periodSeconds": 2},
        }
    )
    readings = [Backlog(ready=500)] + [Backlog(ready=max(0, 450 - 100 * i), inflight=10) for i in range(6)]
    readings += [Backlog()] * 10
    seq = run(s, readings)
    assert seq[0] == 10
    downs = [b - a for a, b in itertools.pairwise(seq) if b < a]
    assert all(-d <= 5 for d in downs), seq  # never more than 50 % of 10 at once
    last_busy = 6  # the last reading with work in flight
    zero_at = seq.index(0)
    assert zero_at == last_busy + 5, seq  # zero exactly when the 5 s cooldown of an empty backlog ends
    assert all(x >= 1 for x in seq[:zero_at])


def test_oscillating_backlog_does_not_flap_down():
    s = parse_scaling({"targetBacklogPerReplica": 10, "scaleDown": {"stabilizationSeconds": 10}})
    readings = [Backlog(ready=100), Backlog(ready=10)] * 5
    seq = run(s, readings)
    assert seq == [10] * 10


def test_idle_after_a_flash_releases_pods_before_the_cooldown_ends():
    """The defaults: a burst drained, then nothing. The window no longer holds ten idle pods for the whole
    cooldown: after IDLE_SECONDS the count halves every scale-down period, then zero when the cooldown ends."""
    s = parse_scaling({"targetBacklogPerReplica": 10})
    readings = [Backlog(ready=2000)] + [Backlog(inflight=10)] * 5 + [Backlog()] * 40
    seq = run(s, readings)
    assert seq[:6] == [10] * 6, seq
    last_busy = 5
    assert seq[last_busy + 4] == 10, seq  # idle for 4 s: held
    assert seq[last_busy + 5] == 5, seq  # idle for 5 s: the 50 % limit alone
    assert 1 <= seq[last_busy + 25] <= 2, seq
    assert seq.index(0) == last_busy + 30, seq  # the cooldown still decides when to zero
    assert all(b <= a for a, b in itertools.pairwise(seq[last_busy:])), seq  # never back up while idle


def test_short_gaps_between_bursts_keep_the_window():
    """Bursts with gaps shorter than IDLE_SECONDS are one load that dips: the window holds the count."""
    s = parse_scaling({"targetBacklogPerReplica": 10})
    readings = ([Backlog(ready=100)] + [Backlog()] * 4) * 6
    seq = run(s, readings)
    assert seq == [10] * len(seq), seq


HOLDS = ("drains-first", "fewest-pods")
DRAINS_FIRST_ROWS = [row for row in ROWS if row[0].startswith("drains-first") and row[-1] in HOLDS]


@pytest.mark.parametrize(
    ("scaling", "reading", "rates", "current", "state", "now", "desired", "rule"),
    [pytest.param(*row[1:], id=row[0]) for row in DRAINS_FIRST_ROWS],
)
def test_drains_first_rows_scale_up_with_the_rule_off(
    monkeypatch, scaling, reading, rates, current, state, now, desired, rule
):
    """Every row the rules decide is a larger scale-up without them (SPARE_STARTUPS 0 switches them off)."""
    monkeypatch.setattr(policy, "SPARE_STARTUPS", 0.0)
    d = decide(scaling, reading, rates, current, state, now)
    assert d.desired > desired and d.rule not in ("drains-first", "fewest-pods"), d.reason


@pytest.mark.parametrize(
    ("rates", "current", "state", "now", "drain_rate", "startup", "awaiting", "last_waiting"),
    [
        pytest.param(
            [1.0],
            1,
            st(last_waiting=(T - 1, 2700, 1)),
            T,
            700.0,
            None,
            (T, 1),
            (T, 2000, 1),
            id="fall-per-second-and-worker",
        ),
        pytest.param(
            [1.0, 1.0],
            2,
            st(last_waiting=(T - 2, 3000, 2)),
            T,
            250.0,
            None,
            (T, 2),
            (T, 2000, 2),
            id="over-two-seconds-two-workers",
        ),
        pytest.param(
            [1.0],
            1,
            st(drain_rate=9.0, last_waiting=(T - 1, 2700, 2)),
            T,
            9.0,
            None,
            (T, 1),
            (T, 2000, 1),
            id="workers-changed-keeps",
        ),
        pytest.param(
            [1.0], 1, st(drain_rate=9.0), T, 9.0, None, (T, 1), (T, 2000, 1), id="no-earlier-wait-keeps"
        ),
        pytest.param(
            [], 0, st(), T, None, None, (T, 0), (T, 2000, 0), id="scale-up-from-zero-awaits-a-worker"
        ),
        pytest.param(
            [1.0],
            1,
            st(awaiting=(T - 2.5, 0)),
            T,
            None,
            2.5,
            None,
            (T, 2000, 1),
            id="first-new-worker-measures-start-up",  # then measuring holds it for a quick read
        ),
        pytest.param(
            [1.0],
            1,
            st(awaiting=(T - 2.5, 1), startup=4.0),
            T,
            None,
            4.0,
            (T - 2.5, 1),
            (T, 2000, 1),
            id="no-new-worker-yet",
        ),
    ],
)
def test_drains_first_measures_rate_and_start_up(
    rates, current, state, now, drain_rate, startup, awaiting, last_waiting
):
    d = decide(sc(), Backlog(ready=2000), rates, current, state, now)
    got = (d.state.drain_rate, d.state.startup, d.state.awaiting, d.state.last_waiting)
    assert got == (drain_rate, startup, awaiting, last_waiting), d.reason


def test_drains_first_no_wait_recorded_without_waiting_messages():
    """Only messages in flight: the workers may have free lanes, so the next fall measures nothing."""
    d = decide(sc(), Backlog(inflight=40), [1.0], 1, st(), T)
    assert d.state.last_waiting is None


def test_drains_first_reason_says_why():
    d = decide(*DF, Backlog(ready=2000), [1.0], 1, DF_ST, T)
    assert "1 workers at 700.0/s each (measured from the backlog's fall), less arrivals 1.0/s" in d.reason
    assert (
        "1 replicas drain it in 2.9s, 10 (7000/s in all) in 1.6s: within 1 x the 1.5s pod start-up"
        in d.reason
    )
    assert d.reason.endswith("start; holding 1")
    d = decide(*DF, Backlog(ready=3000), [1.0], 1, DF_ST, T)
    assert "2 replicas drain it in 2.9s, 10 (7000/s in all) in 1.8s" in d.reason and d.reason.endswith(
        "1 -> 2"
    )
    d = decide(*DF, Backlog(ready=1000), [1.0], 1, DF_ST, T)
    assert "before a pod started now could be Ready (1.5s start-up)" in d.reason


def test_measuring_holds_one_quick_read_then_the_fewest_pods():
    """A first burst of 2000 on a warm pod (a start-up measured, no drain rate yet): the hold asks for a
    read soon (the consumer's ramp reads); 0.25 s later the backlog fell by 175, 700/s for the one worker,
    and the 1825 left drain within a start-up of ten: no pod is started. Without the measurement the same
    burst started all ten."""
    state = replace(DF_ST, drain_rate=None)
    first = decide(*DF, Backlog(ready=2000), [1.0], 1, state, T)
    assert (first.desired, first.rule, first.read_soon) == (1, "measuring", True), first.reason
    then = decide(*DF, Backlog(ready=1825), [1.0], 1, first.state, T + 0.25)
    assert then.state.drain_rate == 700.0 and not then.read_soon, then.reason
    assert (then.desired, then.rule) == (1, "drains-first"), then.reason
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "SPARE_STARTUPS", 0.0)
        off = decide(*DF, Backlog(ready=2000), [1.0], 1, state, T)
    assert (off.desired, off.read_soon) == (10, False), off.reason


def test_drains_first_waves_in_miniature():
    """bench/vs_keda.py's waves at the defaults, one reading a second: a burst every 60 s that one worker
    (700/s) drains in ~3 s, over an idle background; pods start 2 s after a scale-up. The first burst
    scales up (nothing measured yet) and measures the rate while the new pods start; later bursts stay at
    the one pod. A burst three times as large still scales up."""
    s = parse_scaling({"targetBacklogPerReplica": 10, "cooldownSeconds": 300})
    state, spec, workers, backlog = PolicyState(), 1, 1, 0.0
    pending: list[tuple[float, int]] = []  # (Ready at, count)
    peaks = []
    for i in range(300):
        now = T + i
        for at, n in list(pending):
            if at <= now:
                workers, pending = n, [p for p in pending if p != (at, n)]
        if i % 60 == 0:
            backlog += 6000 if i == 240 else 2000
            peak = spec
        d = decide(s, Backlog(ready=int(backlog)), [1.0] * workers, spec, state, now)
        state = d.state
        if d.desired > spec:
            pending.append((now + 2, d.desired))
        elif d.desired < spec:
            workers = min(workers, d.desired)
        spec = d.desired
        peak = max(peak, spec)
        if i % 60 == 59:
            peaks.append(peak)
        backlog = max(0.0, backlog - 700.0 * min(workers, spec))
    assert state.startup == 2.0 and state.drain_rate == 700.0
    assert peaks[0] == 10 and peaks[1:4] == [1, 1, 1], peaks
    # 6000 at 700/s: 8.6 s held, 2.7 s with ten, 4.2 s with three (within a start-up of ten; a fourth
    # pod would work 1.6 s, less than its 2 s start-up)
    assert peaks[4] == 3, peaks


# knee rows: one worker measured at 570/s, ten at 1400/s in all (a bottleneck every pod shares), pods
# measured to start in 0.5 s; sc() would ask ceil(2000 / 50) = 40, clamped to 10. One worker drains 2000 in
# 3.5 s, and three would finish 1.8 s sooner, past a start-up, so drains-first does not hold.
KNEE_ST = PolicyState(
    startup=0.5, last_reading=(T - 1, 0), throughput=((1, 570.0, T - 30), (10, 1400.0, T - 20))
)
KNEE_ROWS = [
    # id, scaling, reading, rates, current, state, desired, rule
    ("capped-at-the-knee", sc(), Backlog(ready=2000), [1.0], 1, KNEE_ST, 3, "knee"),  # ceil(1400 / 570)
    ("from-zero", sc(), Backlog(ready=2000), [], 0, KNEE_ST, 3, "knee"),
    # pods that start in 1.5 s: three would finish 1.2 s sooner (at 1400/s from 1.5 s on), within one
    # start-up, so none is added (with pods each adding 570/s: 2.2 s sooner, past it; see the next row)
    (
        "not-worth-a-start-up",
        sc(),
        Backlog(ready=2000),
        [1.0],
        1,
        replace(KNEE_ST, startup=1.5),
        1,
        "drains-first",
    ),
    (
        "worth-it-without-a-knee",
        sc(),
        Backlog(ready=2000),
        [1.0],
        1,
        replace(KNEE_ST, startup=1.5, throughput=((1, 570.0, T - 30),)),
        2,  # 2.5 s, within a start-up of ten's 1.7 s; a third pod would work 1.1 s of its 1.5 s start-up
        "fewest-pods",
    ),
    ("never-below-current", sc(), Backlog(ready=2000), [1.0] * 5, 5, KNEE_ST, 5, "knee"),
    (
        "under-the-knee-as-before",
        sc(),
        Backlog(ready=100),
        [1.0],
        1,
        replace(KNEE_ST, startup=None),
        2,
        "target",
    ),
    ("floor-wins", sc(min_replicas=5), Backlog(ready=2000), [1.0], 1, KNEE_ST, 5, "min"),
    (
        "linear-no-cap",  # two workers drained twice what one did: no evidence of a bottleneck
        sc(),
        Backlog(ready=2000),
        [1.0],
        1,
        replace(KNEE_ST, throughput=((1, 570.0, T - 30), (2, 1140.0, T - 20))),
        6,  # not the knee's 3: six finish within a start-up of ten, a seventh would work under 0.5 s
        "fewest-pods",
    ),
    (
        "worse-above-the-knee",  # three drained 1300/s, ten less: the best decides
        sc(),
        Backlog(ready=2000),
        [1.0],
        1,
        replace(KNEE_ST, throughput=((1, 570.0, T - 30), (3, 1300.0, T - 25), (10, 1200.0, T - 20))),
        3,
        "knee",
    ),
    (
        "forgotten",  # the ten-worker drain is older than KNEE_MEMORY: probe again
        sc(),
        Backlog(ready=2000),
        [1.0],
        1,
        replace(KNEE_ST, throughput=((1, 570.0, T - 30), (10, 1400.0, T - policy.KNEE_MEMORY))),
        6,  # as if linear again: not capped at 3
        "fewest-pods",
    ),
    (
        "not-draining-at-the-knee",  # three workers, messages waiting, the backlog up since: not capped
        sc(),
        Backlog(ready=2000),
        [1.0] * 3,
        3,
        replace(KNEE_ST, last_waiting=(T - 1, 1900, 3)),
        10,
        "max",
    ),
    (
        "draining-at-the-knee",  # the same, falling (slowly: drains-first does not hold): capped, at 3
        sc(),
        Backlog(ready=2000),
        [1.0] * 3,
        3,
        replace(KNEE_ST, last_waiting=(T - 1, 2300, 3)),
        3,
        "knee",
    ),
]


@pytest.mark.parametrize(
    "scaling,reading,rates,current,state,desired,rule",
    [r[1:] for r in KNEE_ROWS],
    ids=[r[0] for r in KNEE_ROWS],
)
def test_knee_table(scaling, reading, rates, current, state, desired, rule):
    d = decide(scaling, reading, rates, current, state, T)
    assert (d.desired, d.rule) == (desired, rule), d.reason


def test_knee_reason_says_what_was_measured():
    d = decide(sc(), Backlog(ready=2000), [1.0], 1, KNEE_ST, T)
    assert "10 workers drained 1400/s, 1 drained 570/s each" in d.reason
    assert "3 reach that, more add no throughput: 3" in d.reason and d.reason.endswith("1 -> 3")
    d = decide(sc(), Backlog(ready=2000), [1.0], 1, replace(KNEE_ST, startup=1.5), T)
    assert "1 replicas drain it in 3.5s, 3 (1400/s in all, the knee) in 2.3s: within 1 x the 1.5s" in d.reason
    assert d.reason.endswith("less than they take to start; holding 1")


@pytest.mark.parametrize(
    "before,last_waiting,throughput",
    [
        pytest.param((), (T - 1, 2700, 1), ((1, 700.0, T),), id="first-measurement"),
        pytest.param(((1, 900.0, T - 10),), (T - 1, 2700, 1), ((1, 900.0, T - 10),), id="lower-kept-out"),
        pytest.param(((1, 500.0, T - 10),), (T - 1, 2700, 1), ((1, 700.0, T),), id="higher-replaces"),
        pytest.param(
            ((1, 900.0, T - policy.KNEE_MEMORY),), (T - 1, 2700, 1), ((1, 700.0, T),), id="stale-replaced"
        ),
        pytest.param(((1, 900.0, T - 10),), (T - 1, 1900, 1), ((1, 900.0, T - 10),), id="no-fall-no-sample"),
        pytest.param(((1, 900.0, T - 10),), None, ((1, 900.0, T - 10),), id="nothing-waited-before"),
        pytest.param(
            ((2, 900.0, T - 10),), (T - 1, 2700, 1), ((1, 700.0, T), (2, 900.0, T - 10)), id="by-count"
        ),
    ],
)
def test_knee_measures_the_drain_per_worker_count(before, last_waiting, throughput):
    state = PolicyState(throughput=before, last_waiting=last_waiting)
    d = decide(sc(), Backlog(ready=2000), [1.0], 1, state, T)
    assert d.state.throughput == throughput, d.reason


def _waves(rate_at: Any, bursts: int = 8, min_replicas: int = 0) -> tuple[list[int], list[float], float]:
    """A burst of 2000 every 60 s at the defaults, pods Ready 2 s after a scale-up; one reading a second,
    four while a scale-up's pods start and messages wait (the consumer's ramp reads); ``rate_at(n)`` is
    what n workers drain per second in all. The peak count and the drain time of each burst, and the
    pod-seconds."""
    s = parse_scaling({"targetBacklogPerReplica": 10, "minReplicas": min_replicas})
    state, spec, workers, backlog = PolicyState(), 1, 1, 0.0
    pending: list[tuple[float, int]] = []
    peaks, drains, pod_seconds = [], [], 0.0
    t, ramp_until, start, peak = 0.0, -1.0, 0.0, 0
    while t < 60 * bursts:
        now = T + t
        for at, n in list(pending):
            if at <= now:
                workers, pending = n, [p for p in pending if p != (at, n)]
        if int(t) % 60 == 0 and t - int(t) == 0 and int(t) // 60 == len(peaks):
            backlog, peak, start = backlog + 2000, spec, t
        d = decide(s, Backlog(ready=int(backlog)), [1.0] * workers, spec, state, now)
        state = d.state
        if d.desired > spec:
            pending.append((now + 2, d.desired))
            if workers:
                ramp_until = t + 5
        elif d.desired < spec:
            workers = min(workers, d.desired)
        spec = d.desired
        peak = max(peak, spec)
        if backlog <= 0:
            ramp_until = -1.0
        dt = 0.25 if t < ramp_until else 1.0
        dt = min(dt, 60 * (len(peaks) + 1) - t)  # the next burst lands on a reading
        pod_seconds += spec * dt
        was = backlog
        backlog = max(0.0, backlog - rate_at(min(workers, spec)) * dt)
        if was > 0 and backlog == 0:
            drains.append(t - start + was / rate_at(min(workers, spec)))
        t += dt
        if t >= 60 * (len(peaks) + 1):
            peaks.append(peak)
    return peaks, drains, pod_seconds


def _without_knee(rules: bool = True, **kw: Any) -> tuple[list[int], list[float], float]:
    """``_waves`` with nothing remembered: the policy as it was before the knee; without ``rules``, also
    with the drains-first and fewest-pods rules off: the full scale-up every time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "KNEE_MEMORY", 0.0)
        if not rules:
            mp.setattr(policy, "SPARE_STARTUPS", 0.0)
        return _waves(**kw)


def _bottleneck(n: int) -> float:
    return min(450.0 * n, 1400.0)


def test_knee_waves_on_a_shared_bottleneck():
    """bench/vs_keda.py's waves on two cores: one worker drains 450/s, and however many pods there are, all
    of them together drain at most 1400/s; at zero between bursts (no background). The first burst scales
    to 10 and measures that. With the knee alone (fewest-pods off) the next ones stop at the knee, 4, and
    drain as fast as 10 did; once the ten-worker drain is forgotten (KNEE_MEMORY), a burst probes 10 again.
    With fewest-pods too, a burst from zero starts the 2 that end it within a start-up (2 s) of the knee's
    4, on the rate measured on the burst before: about a third of ten's pod-seconds."""
    base_peaks, base_drains, base_pods = _without_knee(rate_at=_bottleneck, bursts=14)
    assert set(base_peaks) == {10}, base_peaks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "SPARE_STARTUPS", 0.0)
        knee_peaks, knee_drains, knee_pods = _waves(_bottleneck, bursts=14)
    assert knee_peaks[0] == 10 and set(knee_peaks[1:10]) == {4}, knee_peaks
    assert 10 in knee_peaks[10:], knee_peaks  # 600 s after ten workers were measured: measured again
    assert all(d <= b + 0.01 for d, b in zip(knee_drains, base_drains, strict=True)), knee_drains
    assert knee_pods < 0.85 * base_pods, (knee_pods, base_pods)
    peaks, drains, pods = _waves(_bottleneck, bursts=14)
    assert peaks[0] == 10 and max(peaks[1:]) < 4 and peaks[-1] == 2, peaks
    assert all(d <= b + 2.0 for d, b in zip(drains, knee_drains, strict=True)), (drains, knee_drains)
    assert pods < 0.4 * base_pods, (pods, base_pods)


def test_knee_waves_on_a_shared_bottleneck_from_one_pod():
    """The same with one pod always up (bench/vs_keda.py's background keeps one): once the knee is
    measured, a scale-up to it would finish a burst 1.7 s sooner, within the 2 s pods take to start, so
    drains-first holds the one pod; each burst drains at most one start-up later than with 10 pods. Without
    the knee, fewest-pods alone steps down to the 2 that finish within a start-up of 10."""
    peaks, drains, pods = _waves(_bottleneck, bursts=8, min_replicas=1)
    no_knee_peaks, _, no_knee_pods = _without_knee(rate_at=_bottleneck, bursts=8, min_replicas=1)
    _, base_drains, base_pods = _without_knee(rules=False, rate_at=_bottleneck, bursts=8, min_replicas=1)
    assert peaks[0] == 10 and set(peaks[1:]) == {1}, peaks
    assert no_knee_peaks[0] == 10 and set(no_knee_peaks[-4:]) == {2}, no_knee_peaks
    assert all(d <= b + 2.0 for d, b in zip(drains, base_drains, strict=True)), (drains, base_drains)
    assert pods < no_knee_pods < 0.6 * base_pods, (pods, no_knee_pods, base_pods)


def test_knee_waves_where_pods_scale_linearly():
    """The same waves where each pod adds its 450/s: no knee. With one pod up, later bursts scale to 2:
    2000 at 900/s from 2 s on ends 1 s after ten would, within their 2 s start-up, and a third pod would
    work 0.8 s, less than it took to start; for half the pod-seconds. From zero the same holds on the rate
    measured on the burst before (the first burst, with nothing measured, starts all ten)."""
    peaks, drains, pods = _waves(lambda n: 450.0 * n)
    _, base_drains, base_pods = _without_knee(rules=False, rate_at=lambda n: 450.0 * n)
    assert peaks[0] == 10 and set(peaks[1:]) == {2}, peaks
    assert all(d <= b + 2.0 for d, b in zip(drains, base_drains, strict=True)), (drains, base_drains)
    assert pods < 0.45 * base_pods, (pods, base_pods)
    peaks, drains, pods = _waves(lambda n: 450.0 * n, min_replicas=1)
    _, base_drains, base_pods = _without_knee(rules=False, rate_at=lambda n: 450.0 * n, min_replicas=1)
    assert peaks[0] == 10 and set(peaks[1:]) == {2}, peaks
    assert all(d <= b + 2.0 for d, b in zip(drains, base_drains, strict=True)), (drains, base_drains)
    assert pods < 0.6 * base_pods, (pods, base_pods)


# idle-pods rows: long jobs at the defaults (down window 30 s, 50 % per 5 s), one job per pod; ten ran
# until now, one finished, so the window still holds 10 (recommended 10 s ago)
IP_S = parse_scaling({"targetBacklogPerReplica": 1})
IP_ST = PolicyState(recommendations=((T - 10, 10),), last_active_time=T)
IP_ROWS = [
    # id, reading, worker_idle, current, desired, rule
    ("idle-pod-goes", Backlog(inflight=9), [6.0] + [0.0] * 9, 10, 9, "idle-pods"),
    ("idle-not-long-enough", Backlog(inflight=9), [4.0] + [0.0] * 9, 10, 10, "stabilized"),
    ("something-waits", Backlog(ready=1, inflight=8), [6.0] + [0.0] * 9, 10, 10, "stabilized"),
    ("retry-due", Backlog(inflight=8, retries_due=1), [6.0] + [0.0] * 9, 10, 10, "stabilized"),
    ("never-below-the-work", Backlog(inflight=9), [6.0, 6.0, 6.0] + [0.0] * 7, 10, 9, "idle-pods"),
    ("two-go", Backlog(inflight=8), [6.0, 6.0] + [0.0] * 8, 10, 8, "idle-pods"),
    # 11 heartbeats for 10 pods: one is leaving (the idle one, by its deletion cost), so one more stays
    ("leaving-not-counted", Backlog(inflight=8), [6.0, 6.0] + [0.0] * 9, 10, 9, "idle-pods"),
    ("rate-limit-still", Backlog(inflight=2), [6.0] * 8 + [0.0] * 2, 10, 5, "rate-limit-down"),
    ("no-heartbeat-figures", Backlog(inflight=9), [], 10, 10, "stabilized"),
]


@pytest.mark.parametrize(
    "reading,worker_idle,current,desired,rule", [r[1:] for r in IP_ROWS], ids=[r[0] for r in IP_ROWS]
)
def test_idle_pods_table(reading, worker_idle, current, desired, rule):
    rates = [0.0] * len(worker_idle) or [0.0] * current
    d = decide(IP_S, reading, rates, current, IP_ST, T, worker_idle=worker_idle)
    assert (d.desired, d.rule) == (desired, rule), d.reason


def test_idle_pods_reason_says_why():
    d = decide(IP_S, Backlog(inflight=9), [0.0] * 10, 10, IP_ST, T, worker_idle=[6.0] + [0.0] * 9)
    assert "1 workers idle for 5s or more with nothing waiting" in d.reason and d.reason.endswith("10 -> 9")
