"""KEDA v2.21.0 (a ScaledObject with the redis list scaler) and the HPA controller of Kubernetes v1.36, as a
model: pure, no clock, every rule from their source (the Go module cache this repository builds KEDA and the
control plane from: ``github.com/kedacore/keda/v2@v2.21.0`` and ``k8s.io/kubernetes@v1.36.3``; paths below
are inside those modules).

Two loops act on the same ``/scale``:

- KEDA's scale loop (``Keda.poll``), every ``pollingInterval`` (pkg/scaling/scale_handler.go
  ``startScaleLoop``: a timer of pollingInterval, then ``checkScalers``), reads ``LLEN`` and calls
  ``RequestScale`` (pkg/scaling/executor/scale_scaledobjects.go): active (``LLEN >
  activationListLength``, pkg/scalers/redis_scaler.go ``GetMetricsAndActivity``) at 0 replicas scales to
  1 (``scaleFromZeroOrIdle``) and stamps lastActiveTime; inactive with replicas > 0 and
  minReplicaCount 0 scales straight to 0 once lastActiveTime + cooldownPeriod has passed
  (``scaleToZeroOrIdle``; with no lastActiveTime, after creation + initialCooldownPeriod, default 0).
  Between 1 and max it leaves everything to the HPA.
- The HPA (``Hpa.sync``), every 15 s (``--horizontal-pod-autoscaler-sync-period``; the controller requeues
  each key with a fixed-interval rate limiter, pkg/controller/podautoscaler/rate_limiters.go), reading the
  metric live through KEDA's metrics server (``GetScaledObjectMetrics`` queries the scaler unless
  ``useCachedMetrics``). KEDA makes it with ``minReplicas`` 1 when minReplicaCount is 0
  (apis/keda/v1alpha1/scaledobject_types.go ``GetHPAMinReplicas``), an External metric with an
  ``AverageValue`` target of ``listLength`` (redis_scaler.go ``GetMetricSpecForScaling``), and the
  ScaledObject's ``advanced.horizontalPodAutoscalerConfig.behavior`` as is, nil when not given
  (controllers/keda/hpa.go).

What is left out: KEDA's fallback, scaling modifiers, paused annotations, idleReplicaCount, several triggers;
the HPA's other metric types, its conditions and events, the configurable per-HPA tolerance; API latency
(a write lands at the instant it is made).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# pkg/controller/podautoscaler/horizontal.go
SCALE_UP_LIMIT_FACTOR = 2.0  # scaleUpLimitFactor: without behavior, at most x2 per sync...
SCALE_UP_LIMIT_MINIMUM = 4.0  # ...or 4 (scaleUpLimitMinimum), whichever is more
# kube-controller-manager flags' defaults (pkg/controller/podautoscaler/config/v1alpha1/defaults.go)
DEFAULT_SYNC_SECONDS = 15.0  # --horizontal-pod-autoscaler-sync-period
DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DEFAULT_DOWNSCALE_WINDOW = 300.0  # --horizontal-pod-autoscaler-downscale-stabilization
# KEDA's defaults: apis/keda/v1alpha1/withtriggers_types.go (polling), pkg/scaling/executor/scale_executor.go
KEDA_DEFAULT_POLLING = 30.0
KEDA_DEFAULT_COOLDOWN = 300.0
KEDA_DEFAULT_INITIAL_COOLDOWN = 0.0


@dataclass(frozen=True)
class Policy:
    """autoscaling/v2 HPAScalingPolicy: ``kind`` "Pods" or "Percent"."""

    kind: str
    value: int
    period: float


@dataclass(frozen=True)
class Rules:
    """autoscaling/v2 HPAScalingRules after the API server's defaulting; ``stabilization`` None: the
    controller's --horizontal-pod-autoscaler-downscale-stabilization (maybeInitScaleDownStabilizationWindow)."""

    stabilization: float | None
    policies: tuple[Policy, ...]
    select: str = "Max"  # Max, Min or Disabled


# pkg/apis/autoscaling/v2/defaults.go: defaultHPAScaleUpRules / defaultHPAScaleDownRules, what the API
# server fills in for a part of ``behavior`` left out (only when ``behavior`` itself is set)
DEFAULT_SCALE_UP = Rules(0.0, (Policy("Pods", 4, 15.0), Policy("Percent", 100, 15.0)))
DEFAULT_SCALE_DOWN = Rules(None, (Policy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class Behavior:
    scale_up: Rules = DEFAULT_SCALE_UP
    scale_down: Rules = DEFAULT_SCALE_DOWN


def behavior_from_spec(spec: dict | None) -> Behavior | None:
    """An HPA ``behavior`` as written in a ScaledObject, defaulted as the API server does
    (SetDefaults_HorizontalPodAutoscalerBehavior: each missing field from the defaults above)."""
    if spec is None:
        return None

    def rules(obj: dict | None, default: Rules) -> Rules:
        if obj is None:
            return default
        pols = obj.get("policies")
        return Rules(
            float(obj["stabilizationWindowSeconds"])
            if "stabilizationWindowSeconds" in obj
            else default.stabilization,
            tuple(Policy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in pols)
            if pols is not None
            else default.policies,
            obj.get("selectPolicy", default.select),
        )

    return Behavior(
        rules(spec.get("scaleUp"), DEFAULT_SCALE_UP), rules(spec.get("scaleDown"), DEFAULT_SCALE_DOWN)
    )


def _change_in_period(period: float, events: list[tuple[float, int]], now: float) -> int:
    """getReplicasChangePerPeriod: the changes stamped after now - period."""
    return sum(c for t, c in events if t > now - period)


def scale_up_limit(
    current: int, ups: list[tuple[float, int]], downs: list[tuple[float, int]], r: Rules, now: float
) -> int:
    """calculateScaleUpLimitWithScalingRules (horizontal.go)."""
    if r.select == "Disabled":
        return current
    pick = min if r.select == "Min" else max
    result: int | None = None
    for p in r.policies:
        start = current - _change_in_period(p.period, ups, now) + _change_in_period(p.period, downs, now)
        proposed = start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else int(result)


def scale_down_limit(
    current: int, ups: list[tuple[float, int]], downs: list[tuple[float, int]], r: Rules, now: float
) -> int:
    """calculateScaleDownLimitWithBehaviors (horizontal.go): Percent truncates (int32 of a float)."""
    if r.select == "Disabled":
        return current
    pick = max if r.select == "Min" else min
    result: int | None = None
    for p in r.policies:
        start = current - _change_in_period(p.period, ups, now) + _change_in_period(p.period, downs, now)
        proposed = start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else int(result)


def external_average_value_replicas(
    status_replicas: int, usage: float, target: float, tolerance: float
) -> int:
    """GetExternalPerPodMetricReplicas (replica_calculator.go): the ratio of the summed metric to
    target x status.replicas; inside [1 - tolerance, 1 + tolerance] the count stays, else ceil(usage / target).
    Usage and target are compared in milli-units there; a list length is whole, so no rounding differs."""
    # float division by zero in Go: +Inf, or NaN for 0/0
    zero = math.inf if usage > 0 else math.nan
    ratio = usage / (target * status_replicas) if status_replicas > 0 else zero
    within = (1.0 - tolerance) <= ratio <= (1.0 + tolerance)  # Tolerances.isWithin; NaN is never within
    if within:
        return status_replicas
    return math.ceil(usage / target)


@dataclass
class Hpa:
    """One HorizontalPodAutoscaler and the controller's memory of it (recommendations, scale events)."""

    min_replicas: int
    max_replicas: int
    target: float  # the AverageValue target
    behavior: Behavior | None = None
    tolerance: float = DEFAULT_TOLERANCE
    downscale_window: float = DEFAULT_DOWNSCALE_WINDOW
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    ups: list[tuple[float, int]] = field(default_factory=list)
    downs: list[tuple[float, int]] = field(default_factory=list)

    def sync(self, now: float, spec_replicas: int, status_replicas: int, usage: float) -> int:
        """reconcileAutoscaler: the replica count the HPA writes to ``/scale`` (``spec_replicas`` when it
        writes nothing)."""
        current = spec_replicas
        if not self.recommendations:  # recordInitialRecommendation
            self.recommendations.append((now, current))
        if current == 0:
            # HPAScaleToZero is an alpha gate, off by default: "scaling is disabled since the replica count
            # of the target is zero" (shouldComputeMetricsForZeroReplicas)
            return current
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            proposal = external_average_value_replicas(status_replicas, usage, self.target, self.tolerance)
            desired = max(0, proposal)  # computeReplicasForMetrics: the largest proposal of the metrics
            if self.behavior is None:
                desired = self._normalize(now, current, desired)
            else:
                desired = self._normalize_with_behaviors(now, current, desired)
        if desired != current:
            self._store_event(now, current, desired)
        return desired

    # --- hpa.Spec.Behavior == nil: normalizeDesiredReplicas -------------------------------------------------

    def _normalize(self, now: float, current: int, desired: int) -> int:
        stabilized = self._stabilize(now, desired)
        # convertDesiredReplicasWithRules
        up_limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))  # calculateScaleUpLimit
        maximum = min(self.max_replicas, up_limit)
        if stabilized < self.min_replicas:
            return self.min_replicas
        if stabilized > maximum:
            return maximum
        return stabilized

    def _stabilize(self, now: float, desired: int) -> int:
        """stabilizeRecommendation: the highest recommendation of the downscale window, the new one stored in
        place of an expired one."""
        cutoff = now - self.downscale_window
        best, old = desired, None
        for i, (t, rec) in enumerate(self.recommendations):
            if t < cutoff:
                old = i
            elif rec > best:
                best = rec
        if old is not None:
            self.recommendations[old] = (now, desired)
        else:
            self.recommendations.append((now, desired))
        return best

    # --- hpa.Spec.Behavior set: normalizeDesiredReplicasWithBehaviors ---------------------------------------

    def _normalize_with_behaviors(self, now: float, current: int, desired: int) -> int:
        b = self.behavior
        assert b is not None
        up_window = b.scale_up.stabilization or 0.0
        down_window = (
            b.scale_down.stabilization if b.scale_down.stabilization is not None else self.downscale_window
        )
        # stabilizeRecommendationWithBehaviors
        up_cut, down_cut = now - up_window, now - down_window
        up_rec = down_rec = desired
        old = None
        for i, (t, rec) in enumerate(self.recommendations):
            if t > up_cut:
                up_rec = min(rec, up_rec)
            if t > down_cut:
                down_rec = max(rec, down_rec)
            if t < up_cut and t < down_cut:
                old = i
        stabilized = current
        if stabilized < up_rec:
            stabilized = up_rec
        if stabilized > down_rec:
            stabilized = down_rec
        if old is not None:
            self.recommendations[old] = (now, desired)
        else:
            self.recommendations.append((now, desired))
        # convertDesiredReplicasWithBehaviorRate
        if stabilized > current:
            limit = max(current, scale_up_limit(current, self.ups, self.downs, b.scale_up, now))
            return min(stabilized, self.max_replicas, limit)
        if stabilized < current:
            limit = min(current, scale_down_limit(current, self.ups, self.downs, b.scale_down, now))
            return max(stabilized, self.min_replicas, limit)
        return stabilized

    def _store_event(self, now: float, prev: int, new: int) -> None:
        """storeScaleEvent: only with a behavior (the events feed its policies); expired events (older than
        the longest policy period) are reused, which here is dropping them."""
        b = self.behavior
        if b is None:
            return
        rules, events = (b.scale_up, self.ups) if new > prev else (b.scale_down, self.downs)
        longest = max((p.period for p in rules.policies), default=0.0)
        events[:] = [(t, c) for t, c in events if t >= now - longest]
        events.append((now, abs(new - prev)))


@dataclass
class Keda:
    """KEDA's scale loop for one ScaledObject (minReplicaCount 0, one redis list trigger)."""

    min_replica_count: int = 0
    activation_list_length: int = 0  # redis_scaler.go defaultActivationListLength
    cooldown: float = KEDA_DEFAULT_COOLDOWN
    initial_cooldown: float = KEDA_DEFAULT_INITIAL_COOLDOWN
    created: float = 0.0
    last_active: float | None = None

    def poll(self, now: float, list_length: int, current: int) -> int:
        """RequestScale: the replica count KEDA writes (``current`` when it writes nothing)."""
        active = list_length > self.activation_list_length
        if active:
            # status.lastActiveTime is a metav1.Time, stored to the second (RFC 3339 without fraction): the
            # cooldown runs from the whole second, so a poll on the same phase 300 s later is past it
            stamp = float(math.floor(now))
            if current == 0:  # scaleFromZeroOrIdle: to minReplicaCount, or 1
                self.last_active = stamp
                return self.min_replica_count if self.min_replica_count > 0 else 1
            self.last_active = stamp  # "triggers are active, but we didn't need to scale"
            return current
        if current > 0 and self.min_replica_count == 0:
            # scaleToZeroOrIdle: straight to minReplicaCount (0) once the cooldown has passed
            if self.last_active is None:
                expired = self.created + self.initial_cooldown < now
            else:
                expired = self.last_active + self.cooldown < now
            return self.min_replica_count if expired else current
        if current < self.min_replica_count:
            return self.min_replica_count
        return current
