"""kopf wiring: a daemon per QueueConsumer that loops read -> decide -> act, plus startup and probes.

The daemon is thin: Redis reading is ``redis_reader``, deciding is the pure ``policy``, Kubernetes writes
are ``scaler`` and the owned Deployment is ``workload``. ``/scale`` is patched only when the decision
changes; status is patched when a condition or a replica count changes, and backlog-only changes at most
every ``STATUS_MIN_INTERVAL`` seconds (1,000 resources polling every second must not mean 1,000 writes/s).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from tide_operator import metrics
from tide_operator.policy import Decision, PolicyState, decide
from tide_operator.redis_reader import ClientPool, Credentials, Reading, make_reader
from tide_operator.scaler import Kube, KubeError
from tide_operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    QueueConsumerSpec,
    SpecError,
    is_paused,
    parse_spec,
)
from tide_operator.workload import build_deployment, target_for

STATUS_MIN_INTERVAL = 2.0
SCALE_REREAD_SECONDS = 10.0  # notice replicas changed by someone else
SECRET_TTL = 60.0
MAX_BACKOFF = 10.0

log = logging.getLogger("tide_operator")


@dataclass
class Shared:
    pool: ClientPool = field(default_factory=ClientPool)
    kube: Kube | None = None
    daemons: int = 0

    def k8s(self) -> Kube:
        if self.kube is None:
            self.kube = Kube()
        return self.kube


SHARED = Shared()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: Any) -> float | None:
    if not value:
        return None
    try:
        return (
            datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tide.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="tide.dev")
    settings.posting.level = logging.INFO
    # equal priorities make every replica pause; a random one keeps exactly one active
    settings.peering.priority = int(os.environ.get("TIDE_PEERING_PRIORITY", random.randint(1, 1 << 30)))
    # A namespaced operator has no cluster-wide grant to list CRDs and namespaces: without this, kopf
    # retries those scans for about a minute before it falls back and starts serving.
    if os.environ.get("TIDE_OPERATOR_SCOPE") == "namespaced":
        settings.scanning.disabled = True
    port = os.environ.get("TIDE_OPERATOR_METRICS_PORT", "9090")
    if port not in ("", "off"):
        start_http_server(int(port))
    SHARED.k8s()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await SHARED.pool.close()
    if SHARED.kube is not None:
        await SHARED.kube.close()


@kopf.on.probe(id="daemons")
def probe_daemons(**_: Any) -> int:
    return SHARED.daemons


@kopf.on.probe(id="redis_pools")
def probe_pools(**_: Any) -> int:
    return len(SHARED.pool)


class Consumer:
    """The loop state of one QueueConsumer."""

    def __init__(self, body: kopf.Body, logger: Any) -> None:
        self.body = body
        self.logger = logger
        self.ns = str(body.metadata.namespace)
        self.name = str(body.metadata.name)
        status = body.get("status") or {}
        self.state = PolicyState(
            last_scale_time=_parse_iso(status.get("lastScaleTime")),
            last_active_time=_parse_iso(status.get("lastActiveTime")),
        )
        self.spec_key: Any = None
        self.spec: QueueConsumerSpec | None = None
        self.reader: Any = None
        self.current: int | None = None
        self.current_read_at = 0.0
        self.creds: Credentials | None = None
        self.creds_at = 0.0
        self.conditions: dict[str, tuple[str, str, str]] = {}  # type -> (status, reason, message)
        self.transitions: dict[str, str] = {
            c["type"]: c.get("lastTransitionTime", "") for c in status.get("conditions") or []
        }
        self.last_status: dict[str, Any] = {}
        self.last_status_at = 0.0
        self.target_failures = 0

    # --- events and conditions -----------------------------------------------------------------------

    def event(self, kind: str, reason: str, message: str) -> None:
        kopf.event(self.body, type=kind, reason=reason, message=message)
        (self.logger.warning if kind == "Warning" else self.logger.info)(f"{reason}: {message}")

    def condition(self, ctype: str, ok: bool, reason: str, message: str) -> bool:
        """Set a condition; True when its status changed."""
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        self.conditions[ctype] = (status, reason, message)
        if old is None or old[0] != status:
            self.transitions[ctype] = _iso(time.time()) or ""
            return old is not None or not ok
        return False

    # --- one poll ------------------------------------------------------------------------------------

    async def refresh_spec(self) -> QueueConsumerSpec:
        raw = self.body.get("spec") or {}
        key = repr(raw)
        if key != self.spec_key or self.spec is None:
            spec = parse_spec(raw)
            self.spec_key, self.spec = key, spec
            self.reader = None
            self.creds = None
            if spec.worker is not None:
                manifest = build_deployment(self.body, spec)
                await SHARED.k8s().apply_deployment(self.ns, manifest)
        return self.spec

    async def credentials(self, spec: QueueConsumerSpec) -> Credentials:
        if self.creds is None or time.monotonic() - self.creds_at > SECRET_TTL:
            k = SHARED.k8s()
            r = spec.redis
            creds = Credentials(
                username=await k.secret_value(self.ns, r.username_secret)
                if r.username_secret
                else r.username,
                password=await k.secret_value(self.ns, r.password_secret) if r.password_secret else None,
                ca_pem=await k.secret_value(self.ns, r.ca_secret) if r.ca_secret else None,
            )
            if creds != self.creds:
                self.reader = None
            self.creds, self.creds_at = creds, time.monotonic()
        return self.creds

    async def read(self, spec: QueueConsumerSpec) -> tuple[Reading | None, str]:
        try:
            creds = await self.credentials(spec)
            if self.reader is None:
                client = SHARED.pool.get(spec.redis.url, spec.redis.cluster, creds, spec.redis.tls_insecure)
                self.reader = make_reader(client, spec.source, SHARED.pool.gate(client))
            return await self.reader.read(time.time()), ""
        except KubeError as exc:
            return None, f"reading the Redis credentials: {exc}"
        except (RedisError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def current_replicas(self, spec: QueueConsumerSpec) -> int:
        target = spec.target or target_for(self.name)
        if self.current is None or time.monotonic() - self.current_read_at > SCALE_REREAD_SECONDS:
            self.current = await SHARED.k8s().get_replicas(self.ns, target)
            self.current_read_at = time.monotonic()
        return self.current

    async def poll(self) -> float:
        """One round; returns how long to wait before the next."""
        started = time.perf_counter()
        try:
            spec = await self.refresh_spec()
        except SpecError as exc:
            self.condition("Ready", False, "InvalidSpec", str(exc))
            await self.patch_status(force=True)
            return MAX_BACKOFF
        interval = spec.scaling.polling_interval_seconds
        target = spec.target or target_for(self.name)
        try:
            current = await self.current_replicas(spec)
        except KubeError as exc:
            self.target_failures += 1
            found = exc.status != 404
            reason = "TargetNotFound" if not found else "TargetUnreadable"
            message = f"{target.kind} {target.name}: {exc.message}"
            if self.condition("Ready", False, reason, message) or self.target_failures == 1:
                self.event("Warning", reason, message)
            await self.patch_status(force=True)
            return min(MAX_BACKOFF, interval * 2.0**self.target_failures)
        self.target_failures = 0

        reading, error = await self.read(spec)
        paused = is_paused(self.body.metadata.annotations)
        decision = decide(
            spec.scaling,
            reading.backlog if reading else None,
            reading.rates if reading else (),
            current,
            self.state,
            time.time(),
            paused,
        )
        self.state = decision.state
        changed = decision.desired != current
        if changed:
            try:
                self.current = await SHARED.k8s().set_replicas(self.ns, target, decision.desired)
                self.current_read_at = time.monotonic()
                metrics.SCALE_CHANGES.labels(self.ns, self.name, decision.rule).inc()
                self.event(
                    "Normal",
                    "Scaled",
                    f"{target.kind} {target.name} {current} -> {decision.desired}: {decision.reason}",
                )
            except KubeError as exc:
                self.current = None  # re-read next time
                self.event("Warning", "ScaleFailed", f"{target.kind} {target.name}: {exc.message}")
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        self.observe(spec, reading, error, decision, paused)
        await self.patch_status(force=changed)
        if reading is None:
            metrics.READ_ERRORS.labels(self.ns, self.name).inc()
            return min(MAX_BACKOFF, interval * 2.0 ** max(0, self.state.failures - 1))
        return interval

    def observe(
        self, spec: QueueConsumerSpec, reading: Reading | None, error: str, decision: Decision, paused: bool
    ) -> None:
        labels = (self.ns, self.name)
        metrics.DESIRED.labels(*labels).set(decision.desired)
        metrics.CURRENT.labels(*labels).set(self.current or 0)
        reachable_changed = self.condition(
            "RedisReachable",
            reading is not None,
            "ReadFailed" if reading is None else "Read",
            error or "backlog read",
        )
        if reachable_changed and reading is None:
            self.event(
                "Warning", "RedisUnreachable", f"{spec.redis.url}: {error}; holding replicas, will retry"
            )
        elif reachable_changed:
            self.event("Normal", "RedisReachable", f"{spec.redis.url} readable again")
        fb = decision.fallback
        fb_changed = self.condition(
            "Fallback", fb, "Fallback" if fb else "Reading", decision.reason if fb else "reads succeed"
        )
        if fb_changed and fb:
            self.event("Warning", "Fallback", decision.reason)
        self.condition(
            "Paused",
            paused,
            "Annotation" if paused else "NotPaused",
            "tide.dev/paused is true" if paused else "scaling",
        )
        self.condition(
            "Ready",
            reading is not None,
            "Serving" if reading is not None else "RedisUnreachable",
            decision.reason,
        )
        if reading is not None:
            b = reading.backlog
            self.condition("Active", b.total > 0, "Backlog" if b.total else "Idle", f"backlog {b.total}")
            for part, value in (
                ("ready", b.ready),
                ("inflight", b.inflight),
                ("retries_due", b.retries_due),
                ("stream_lag", b.stream_lag),
                ("stream_pending", b.stream_pending),
                ("total", b.total),
            ):
                metrics.BACKLOG.labels(*labels, part).set(value)
            self.last_backlog = {
                "total": b.total,
                "ready": b.ready,
                "inFlight": b.inflight,
                "retriesDue": b.retries_due,
                "retriesWaiting": b.retries_waiting,
                "streamLag": b.stream_lag,
                "streamPending": b.stream_pending,
                "lagEstimated": b.lag_estimated,
            }
        self.decision = decision
        self.queue_label = spec.source.label

    async def patch_status(self, force: bool = False) -> None:
        conditions = [
            {
                "type": t,
                "status": s,
                "reason": r,
                "message": m[:1000],
                "lastTransitionTime": self.transitions.get(t) or _iso(time.time()),
            }
            for t, (s, r, m) in sorted(self.conditions.items())
        ]
        status: dict[str, Any] = {
            "queue": getattr(self, "queue_label", None),
            "observedGeneration": self.body.metadata.get("generation"),
            "currentReplicas": self.current,
            "conditions": conditions,
        }
        decision: Decision | None = getattr(self, "decision", None)
        if decision is not None:
            status["desiredReplicas"] = decision.desired
            status["lastRule"] = decision.rule
            status["lastScaleTime"] = _iso(self.state.last_scale_time)
            status["lastActiveTime"] = _iso(self.state.last_active_time)
        backlog = getattr(self, "last_backlog", None)
        if backlog is not None:
            status["backlog"] = backlog
        # the decision text changes every poll; comparing without it keeps quiet resources quiet
        key = {k: v for k, v in status.items() if k not in ("backlog",)}
        last_key = {k: v for k, v in self.last_status.items() if k not in ("backlog", "lastDecision")}
        conditions_changed = key != last_key
        backlog_changed = backlog != self.last_status.get("backlog")
        now = time.monotonic()
        if not (
            force
            or conditions_changed
            or (backlog_changed and now - self.last_status_at >= STATUS_MIN_INTERVAL)
        ):
            return
        if decision is not None:
            status["lastDecision"] = decision.reason[:1000]
        try:
            await SHARED.k8s().patch_status(
                self.ns, self.name, {k: v for k, v in status.items() if v is not None}
            )
            self.last_status, self.last_status_at = status, now
        except KubeError as exc:
            if exc.status != 404:  # 404: the resource is being deleted
                self.logger.warning(f"status patch failed: {exc}")


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def serve(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Any, **_: Any) -> None:
    consumer = Consumer(body, logger)
    SHARED.daemons += 1
    try:
        while not stopped:
            try:
                delay = await consumer.poll()
            except (
                KubeError,
                aiohttp.ClientError,
                TimeoutError,
            ) as exc:  # the API server blinked: retry soon
                logger.warning(f"poll failed: {exc}")
                delay = 2.0
            await asyncio.sleep(delay)
    finally:
        SHARED.daemons -= 1
        metrics.forget(consumer.ns, consumer.name)
