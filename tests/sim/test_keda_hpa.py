"""The KEDA + HPA model of bench/sim against the behaviour Kubernetes and KEDA document.

Kubernetes: https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ (algorithm details,
tolerance, stabilization window, default behavior, scaling policies, selectPolicy). KEDA:
https://keda.sh/docs/2.21/reference/scaledobject-spec/ (pollingInterval, cooldownPeriod,
initialCooldownPeriod, activation) and the redis list scaler's activationListLength. Pure, no I/O.
"""

from __future__ import annotations

import pytest

from bench.sim.keda_hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Behavior,
    Hpa,
    Keda,
    Policy,
    Rules,
    behavior_from_spec,
    external_average_value_replicas,
)


@pytest.mark.parametrize(
    ("status", "usage", "target", "want", "why"),
    [
        (10, 100, 10, 10, "ratio 1.0: no change"),
        (10, 105, 10, 10, "ratio 1.05 is within the 10 % tolerance"),
        (10, 110, 10, 10, "ratio 1.10 is still within (the bound is inclusive)"),
        (10, 111, 10, 12, "ratio 1.11: ceil(111 / 10) = 12"),
        (10, 91, 10, 10, "ratio 0.91: within"),
        (10, 89, 10, 9, "ratio 0.89: ceil(89 / 10) = 9"),
        (1, 20000, 10, 2000, "AverageValue: ceil(total / target), whatever the pod count"),
        (0, 25, 10, 3, "no pods: the ratio is infinite, ceil(25 / 10)"),
        (0, 0, 10, 0, "no pods and no usage: 0/0 is never within, ceil(0) = 0"),
        (4, 0, 10, 0, "an empty list proposes 0 (the HPA's minReplicas clamps it later)"),
    ],
)
def test_average_value_and_tolerance(status, usage, target, want, why):
    assert external_average_value_replicas(status, usage, target, 0.1) == want, why


def test_without_behavior_scale_up_is_at_most_double_or_four():
    """hpa.Spec.Behavior nil (KEDA's defaults): convertDesiredReplicasWithRules, max(2 x current, 4)."""
    hpa = Hpa(min_replicas=1, max_replicas=100, target=10)
    steps = []
    current = 1
    for k in range(4):
        current = hpa.sync(15.0 * k, current, current, 20000)
        steps.append(current)
    assert steps == [4, 8, 16, 32]


def test_without_behavior_scale_down_waits_for_the_five_minute_window():
    hpa = Hpa(min_replicas=1, max_replicas=10, target=10)
    assert hpa.sync(0.0, 10, 10, 100) == 10
    held = [hpa.sync(t, 10, 10, 0) for t in range(15, 300, 15)]
    assert set(held) == {10}, "the highest recommendation of the last 300 s holds"
    assert hpa.sync(300.5, 10, 10, 0) == 1, "once it expires: straight down, clamped to minReplicas"


def test_zero_replicas_disables_the_hpa():
    """HPAScaleToZero is alpha and off: at 0 replicas the HPA does nothing (KEDA activates)."""
    hpa = Hpa(min_replicas=1, max_replicas=10, target=10)
    assert hpa.sync(0.0, 0, 0, 20000) == 0


def test_above_max_and_below_min_are_corrected_without_metrics():
    hpa = Hpa(min_replicas=2, max_replicas=5, target=10)
    assert hpa.sync(0.0, 9, 9, 0) == 5
    assert Hpa(min_replicas=2, max_replicas=5, target=10).sync(0.0, 1, 1, 1000) == 2


def test_default_behavior_when_set_is_documented_one():
    """The API server fills a behavior's missing parts: up 0 s, max(100 %, 4 pods) per 15 s; down 100 %
    per 15 s with the controller's 300 s window."""
    assert Rules(0.0, (Policy("Pods", 4, 15.0), Policy("Percent", 100, 15.0)), "Max") == DEFAULT_SCALE_UP
    assert Rules(None, (Policy("Percent", 100, 15.0),), "Max") == DEFAULT_SCALE_DOWN
    assert behavior_from_spec({}) == Behavior(DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN)
    assert behavior_from_spec(None) is None
    b = behavior_from_spec({"scaleDown": {"stabilizationWindowSeconds": 30}})
    assert b is not None and b.scale_down.stabilization == 30.0
    assert b.scale_down.policies == DEFAULT_SCALE_DOWN.policies


@pytest.mark.parametrize(
    ("current", "want", "why"),
    [
        (1, 5, "max(1 + 4 pods, 1 x 200 %) = 5"),
        (2, 6, "max(2 + 4, 4) = 6"),
        (10, 20, "max(14, 20) = 20"),
    ],
)
def test_default_behavior_scale_up_per_period(current, want, why):
    hpa = Hpa(min_replicas=1, max_replicas=1000, target=1, behavior=Behavior())
    assert hpa.sync(0.0, current, current, 10**6) == want, why


def test_scale_up_events_within_the_period_count():
    """periodSeconds: a change made within the period counts against the limit (from its start)."""
    b = Behavior(scale_up=Rules(0.0, (Policy("Pods", 4, 60.0),)))
    hpa = Hpa(min_replicas=1, max_replicas=100, target=1, behavior=b)
    assert hpa.sync(0.0, 10, 10, 100) == 14
    assert hpa.sync(15.0, 14, 14, 100) == 14, "4 pods already added in this 60 s period"
    assert hpa.sync(61.0, 14, 14, 100) == 18, "the period has passed"


@pytest.mark.parametrize(
    ("select", "current", "want"),
    [
        # the documented example: Pods 4 and Percent 10 per 60 s; Max picks the larger change
        ("Max", 80, 72),  # 10 % of 80 = 8 > 4
        ("Max", 30, 26),  # 10 % of 30 = 3 < 4
        ("Min", 80, 76),
        ("Disabled", 80, 80),
    ],
)
def test_scale_down_policies_and_select(select, current, want):
    b = Behavior(scale_down=Rules(0.0, (Policy("Pods", 4, 60.0), Policy("Percent", 10, 60.0)), select))
    hpa = Hpa(min_replicas=1, max_replicas=100, target=10, behavior=b)
    assert hpa.sync(0.0, current, current, 0) == want


def test_scale_down_stabilization_window_uses_the_highest_recommendation():
    b = Behavior(scale_down=Rules(30.0, (Policy("Percent", 100, 15.0),)))
    hpa = Hpa(min_replicas=1, max_replicas=10, target=10, behavior=b)
    assert hpa.sync(0.0, 10, 10, 100) == 10
    assert hpa.sync(15.0, 10, 10, 30) == 10, "recommendation 3, but 10 was recommended 15 s ago"
    assert hpa.sync(30.5, 10, 10, 30) == 3, "10 left the 30 s window; 3 was recommended at 15 s"


def test_scale_up_stabilization_window_uses_the_lowest_recommendation():
    b = Behavior(scale_up=Rules(60.0, (Policy("Pods", 100, 15.0),)))
    hpa = Hpa(min_replicas=1, max_replicas=100, target=1, behavior=b)
    assert hpa.sync(0.0, 3, 3, 5) == 3, "the initial recommendation (3) is in the window"
    assert hpa.sync(15.0, 3, 3, 10) == 3
    assert hpa.sync(30.0, 3, 3, 7) == 3
    assert hpa.sync(61.0, 3, 3, 10) == 7, "those of t=0 left the 60 s window: the lowest left is 7"


def test_percent_scale_down_truncates():
    """calculateScaleDownLimitWithBehaviors: int32(5 x 0.5) = 2, not 3."""
    b = Behavior(scale_down=Rules(0.0, (Policy("Percent", 50, 5.0),)))
    hpa = Hpa(min_replicas=1, max_replicas=10, target=1, behavior=b)
    assert hpa.sync(0.0, 5, 5, 0) == 2


@pytest.mark.parametrize(
    ("list_length", "current", "last_active", "activation", "now", "want", "why"),
    [
        (0, 0, None, 0, 10.0, 0, "idle stays at zero"),
        (1, 0, None, 0, 10.0, 1, "one message activates: KEDA scales 0 -> 1 itself"),
        (5, 0, None, 5, 10.0, 0, "not above activationListLength"),
        (6, 0, None, 5, 10.0, 1, "above activationListLength"),
        (500, 3, 0.0, 0, 10.0, 3, "active above zero: left to the HPA"),
        (0, 5, 0.0, 0, 300.0, 5, "inactive, but the 300 s cooldown has not passed"),
        (0, 5, 0.0, 0, 300.5, 0, "cooldown passed: straight to minReplicaCount 0"),
        (0, 5, None, 0, 0.5, 0, "never active: initialCooldownPeriod 0, so at once"),
    ],
)
def test_keda_activation_and_cooldown(list_length, current, last_active, activation, now, want, why):
    keda = Keda(activation_list_length=activation, last_active=last_active)
    assert keda.poll(now, list_length, current) == want, why


def test_keda_cooldown_counts_from_the_whole_second():
    """status.lastActiveTime is stored to the second: a poll on the same sub-second phase one cooldown later
    is already past it."""
    keda = Keda(cooldown=300.0)
    assert keda.poll(23.4, 100, 0) == 1
    assert keda.last_active == 23.0
    assert keda.poll(323.4, 0, 10) == 0


def test_keda_active_poll_moves_last_active_time():
    keda = Keda(cooldown=30.0)
    assert keda.poll(0.0, 10, 2) == 2
    assert keda.poll(20.0, 10, 2) == 2
    assert keda.poll(45.0, 0, 2) == 2, "active 25 s ago: cooling down"
    assert keda.poll(50.5, 0, 2) == 0
