"""The world of bench/sim: no message created or lost, what a removed pod does with its work, which pods a
scale-down takes, and the loops on the simulated clock (Tide through its own ``policy.decide``). Pure, fast."""

from __future__ import annotations

import random

import pytest

from bench.sim.loops import Trace, keda_defaults, keda_tuned, simulate, tide_scaling
from bench.sim.world import World, WorldConfig, conserved, percentiles


def _drive(cfg: WorldConfig, seed: int, idle_first: bool) -> World:
    """Random arrivals and random /scale changes; conservation is checked after every step."""
    rng = random.Random(seed)
    w = World(cfg, seed=seed)
    t, dt = 0.0, 0.1
    for k in range(3000):
        if k < 2000 and rng.random() < 0.2:
            if cfg.discrete:
                w.arrive(t + rng.random() * dt, rng.randint(1, 2), rng.uniform(0.5, 40.0))
            else:
                w.arrive(t + rng.random() * dt, rng.randint(1, 40))
        if rng.random() < 0.02:
            w.scale(t, rng.randint(0, 8), idle_first=idle_first and rng.random() < 0.8)
        w.step(t, dt)
        t += dt
        assert conserved(w), (
            f"step {k}: created {w.stats.created}, queued {w.queued}, running {w.running_count()}, done {w.stats.done}"
        )
    w.scale(t, 8, idle_first=False)
    for _ in range(100_000):  # drain
        w.step(t, dt)
        t += dt
        if w.unfinished() == 0:
            break
    return w


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("idle_first", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_message_is_created_or_lost(discrete, idle_first, seed):
    cfg = WorldConfig(concurrency=3, batch=2, job_seconds=0.3, startup=1.0, discrete=discrete)
    w = _drive(cfg, seed, idle_first)
    assert w.unfinished() == 0
    assert w.stats.done == w.stats.created > 0
    first_starts = sum(c for _, c in w.stats.waits)
    assert first_starts == w.stats.created, "every message's first start is counted once"
    assert all(wait >= 0 for wait, _ in w.stats.waits)


def test_fluid_jobs_longer_than_the_grace_period_are_refused():
    with pytest.raises(ValueError, match="discrete"):
        WorldConfig(job_seconds=60.0, grace=25.0)


def _one_long_job_world(idle_first: bool) -> World:
    """Two Ready pods; the newer one runs a 100 s job, the older is idle."""
    w = World(WorldConfig(concurrency=1, batch=1, startup=0.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    w.step(0.0, 0.1)
    w.scale(5.0, 2, idle_first=False)
    w.step(5.0, 0.1)
    w.arrive(5.1, 1, 100.0)
    w.step(5.1, 0.1)  # the only idle pod... both are; the pod holding least takes it
    return w


def test_a_removed_pod_gets_the_grace_period_then_its_run_is_interrupted_and_redone():
    w = World(WorldConfig(concurrency=1, batch=1, startup=0.0, grace=25.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    w.arrive(0.0, 1, 100.0)
    t = 0.0
    for _ in range(10):
        w.step(t, 0.1)
        t += 0.1
    w.scale(t, 0, idle_first=False)
    for _ in range(240):  # 24 s: still within the grace
        w.step(t, 0.1)
        t += 0.1
    assert w.stats.interrupted == 0 and w.running_count() == 1
    for _ in range(20):
        w.step(t, 0.1)
        t += 0.1
    assert w.stats.interrupted == 1, "still running at the end of the grace period"
    assert w.queued == 1 and w.running_count() == 0, "handed back to the list"
    w.scale(t, 1, idle_first=False)
    for _ in range(1100):
        w.step(t, 0.1)
        t += 0.1
    assert w.stats.done == 1 and conserved(w)
    assert sum(c for _, c in w.stats.waits) == 1, "the wait counts the first start only"


def test_a_job_that_ends_within_the_grace_is_not_interrupted():
    w = World(WorldConfig(concurrency=1, batch=1, startup=0.0, grace=25.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    w.arrive(0.0, 1, 10.0)
    w.step(0.0, 0.1)
    w.scale(0.1, 0, idle_first=False)
    t = 0.1
    for _ in range(200):
        w.step(t, 0.1)
        t += 0.1
    assert w.stats.interrupted == 0 and w.stats.done == 1


def test_unstarted_fetched_messages_go_back_at_once_uninterrupted():
    w = World(WorldConfig(concurrency=1, batch=3, startup=0.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    for k in range(4):
        w.arrive(0.0, 1, 5.0 + k)
    w.step(0.0, 0.1)
    assert w.queued == 0 and w.running_count() == 1, "one running, three fetched ahead"
    assert w.in_list(0.1) == 0 and w.held(0.1) == 4
    w.scale(0.1, 0, idle_first=False)
    assert w.queued == 3 and w.in_list(0.1) == 3
    assert [m[2] for m in w.queue] == [6.0, 7.0, 8.0], "back at the head in fetch order"


@pytest.mark.parametrize(
    ("idle_first", "interrupted"),
    [
        (True, 0),  # Tide: the idle pod has deletion cost 0, the busy one >= 1: the idle one goes
        (False, 1),  # no costs: the more recently Ready pod goes, and it is the busy one
    ],
)
def test_which_pod_a_scale_down_removes(idle_first, interrupted):
    w = World(WorldConfig(concurrency=1, batch=1, startup=0.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    t = 0.0
    for _ in range(100):  # the first pod has been Ready 10 s, idle
        w.step(t, 0.1)
        t += 0.1
    w.scale(t, 2, idle_first=False)
    newer = w.pods[1]
    w.arrive(t, 1, 100.0)  # handed to the newer pod (as a blocked fetch of it would get it)
    m = w.queue.popleft()
    w.queued -= 1
    newer.running.append([t + 100.0, t, m[0], 100.0, True])
    w.stats.waits.append((0.0, 1))
    for _ in range(5):
        w.step(t, 0.1)
        t += 0.1
    w.scale(t, 1, idle_first=idle_first)
    assert (w.pods[0] is newer) == idle_first
    for _ in range(300):
        w.step(t, 0.1)
        t += 0.1
    assert w.stats.interrupted == interrupted and conserved(w)


def test_pods_not_ready_go_first():
    w = World(WorldConfig(concurrency=1, batch=1, startup=5.0, discrete=True), seed=0)
    w.scale(0.0, 1, idle_first=False)
    w.scale(10.0, 3, idle_first=False)  # two starting, one Ready
    w.scale(11.0, 1, idle_first=False)
    assert [p.uid for p in w.pods] == [0]


def test_percentiles_are_the_bench_s_rank():
    assert percentiles([(1.0, 98), (5.0, 1), (9.0, 1)], (0.5, 0.99, 1.0)) == [1.0, 5.0, 9.0]
    assert percentiles([], (0.5,)) == [None]


FLASH = Trace("flash", [(0.0, 2000, None)], horizon=600)
BIG = Trace("flash", [(0.0, 20000, None)], horizon=600)  # more than one pod drains before the HPA's sync
CFG = WorldConfig(concurrency=16, batch=32, job_seconds=0.02, startup=1.0)


def test_tide_through_its_own_policy_scales_up_within_a_poll_and_back_to_zero():
    r = simulate(FLASH, CFG, "tide", tide=tide_scaling(maxReplicas=10), seed=1)
    assert r.processed == r.messages == 2000
    assert r.timeline[0][1] == 10, "ceil(2000 / 10) capped at 10, at the first poll"
    assert r.timeline[0][0] <= 1.0
    assert r.timeline[-1][1] == 0 and r.interrupted == 0
    # to zero only after the 30 s cooldown of an empty backlog, in flight included
    assert r.end_s >= 30.0


def test_keda_defaults_wait_for_a_poll_then_the_hpa_doubles_or_adds_four():
    r = simulate(BIG, CFG, "keda-defaults", keda=keda_defaults(10, 10), seed=1)
    ups = [n for _, n, _ in r.timeline]
    assert ups[:3] == [1, 4, 8], "KEDA activates to 1, then the HPA without behavior: 4, 8"
    assert r.timeline[0][0] <= 30.0
    assert ups[-1] == 0 and r.end_s >= 300.0, "down only after KEDA's 300 s cooldown"


def test_keda_tuned_is_held_by_the_hpa_sync():
    r = simulate(BIG, CFG, "keda-tuned", keda=keda_tuned(10, 10), seed=1)
    (t1, n1, _), (t2, n2, _) = r.timeline[:2]
    assert (n1, n2) == (1, 10), "KEDA to 1 within a second, the HPA to 10 at its next sync"
    assert t1 <= 1.0 and t2 <= 16.0
    assert r.processed == 20000


def test_runs_are_deterministic():
    a = simulate(FLASH, CFG, "keda-tuned", keda=keda_tuned(10, 10), seed=7)
    b = simulate(FLASH, CFG, "keda-tuned", keda=keda_tuned(10, 10), seed=7)
    assert a.figures() | {"seconds": 0} == b.figures() | {"seconds": 0} and a.timeline == b.timeline


def test_in_flight_follows_littles_law_at_one_second_steps():
    """A second of Poisson arrivals is one cohort spread over the second: what a scaler reads as running at
    any instant is about rate x job duration, not a whole second's arrivals."""
    w = World(WorldConfig(concurrency=16, batch=1, job_seconds=0.2, startup=0.0), seed=0)
    w.scale(0.0, 4, idle_first=False)
    seen = []
    for k in range(200):
        w.arrive(float(k), 100, None, 1.0)
        w.step(float(k), 0.5)
        w.step(k + 0.5, 0.5)
        seen.append(w.running_now(k + 1.0))
        assert conserved(w)
    mean = sum(seen[10:]) / len(seen[10:])
    assert 15 <= mean <= 25, f"100 msgs/s x 0.2 s = 20 running, got {mean}"
    assert w.in_list(200.0) == 0


LONG = Trace(
    "long",
    [(i * 0.5, 1, 30.0 + 5 * i) for i in range(20)],  # 20 jobs of 30-125 s arriving over 10 s
    horizon=900.0,
)
LONG_CFG = WorldConfig(concurrency=1, batch=1, startup=1.0, discrete=True)


@pytest.mark.parametrize("seed", range(5))
def test_tide_counts_in_flight_and_interrupts_nothing_where_keda_tuned_does(seed):
    tide = simulate(
        LONG, LONG_CFG, "tide", tide=tide_scaling(maxReplicas=10, targetBacklogPerReplica=1), seed=seed
    )
    keda = simulate(LONG, LONG_CFG, "keda-tuned", keda=keda_tuned(1, 10), seed=seed)
    assert tide.interrupted == 0 and tide.processed == 20
    assert keda.interrupted > 0, "LLEN reads 0 once every job has started: the HPA scales down under them"
