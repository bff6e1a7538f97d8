"""The loop of one QueueConsumer: spec, credentials, read, decide, scale, conditions, status.

Redis reading is ``redis_reader``, deciding is the pure ``policy``, Kubernetes writes are ``scaler`` and
the owned Deployment is ``workload``; this module only sequences them. kopf appears only to post Events.

Every daemon polls on a shared grid (``Ticker``): the resources of one polling interval wake in ten
groups, each group in one event-loop iteration, so a group's reads of one Redis server go out as one
pipeline (the ``ReadBatcher``). A poll reads first, then patches ``/scale`` at once if the decision changed, then the
status. Status writes: immediately when a replica count, rule, condition status or reason changes;
changes of the informational fields alone (backlog, messages, last decision) at most every
``STATUS_MIN_INTERVAL`` seconds; ``lastActiveTime`` alone never triggers a write (a resource with a
steady non-zero backlog stays quiet). 1,000 idle resources write nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
from redis.exceptions import RedisError

from tide_operator import metrics
from tide_operator.policy import Backlog, Decision, PolicyState, decide
from tide_operator.redis_reader import ClientPool, Credentials, ListReader, Reading, StreamReader, make_reader
from tide_operator.scaler import Kube, KubeError
from tide_operator.spec import QueueConsumerSpec, SpecError, TargetRef, is_paused, parse_spec
from tide_operator.workload import build_deployment, target_for

STATUS_MIN_INTERVAL = 2.0
# Re-read the target's replicas to notice changes made by someone else; spread over a window so a
# thousand resources do not re-read in the same second.
SCALE_REREAD_SECONDS = 30.0
SCALE_REREAD_JITTER = 0.25
SECRET_TTL = 60.0
MAX_BACKOFF = 10.0

log = logging.getLogger("tide_operator")


class Ticker:
    """Wakes every waiter of the same grid point together.

    A poll waits until the next point of its grid: multiples of its interval on the event loop's clock,
    shifted by the resource's phase. A resource's phase is one of ``SLOTS`` per interval, so 1,000
    resources polling every second wake in 10 groups of about 100, 100 ms apart: each group's reads of one
    server coalesce into one pipeline, and a burst is handled by the next group's poll without waiting
    behind the CPU work of all 1,000 polls at once. A slow poll skips a grid point instead of drifting;
    a backoff ``delay`` is honoured to within one interval."""

    SLOTS = 10

    def __init__(self) -> None:
        self._ticks: dict[tuple[float, float, int], asyncio.Future[None]] = {}

    @classmethod
    def phase(cls, key: str) -> float:
        """The phase of a resource, as a fraction of the interval: a hash of its name, so it is stable
        across restarts and uncorrelated with naming patterns (every tenth queue is not one group)."""
        return (zlib.crc32(key.encode()) % cls.SLOTS) / cls.SLOTS

    async def wait(self, delay: float, interval: float, phase: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        interval = max(interval, 0.01)
        offset = phase * interval
        now = loop.time()
        n = math.ceil((now - offset + max(0.0, delay - interval)) / interval)
        if n * interval + offset <= now:
            n += 1
        key = (interval, offset, n)
        tick = self._ticks.get(key)
        if tick is None:
            tick = self._ticks[key] = loop.create_future()
            loop.call_at(n * interval + offset, self._fire, key)
        # shielded: a cancelled daemon must not cancel the tick the others wait for
        await asyncio.shield(tick)

    def _fire(self, key: tuple[float, float, int]) -> None:
        tick = self._ticks.pop(key, None)
        if tick is not None and not tick.done():
            tick.set_result(None)


@dataclass
class Shared:
    """What every resource's loop shares: Redis clients (and their batchers) and the API client."""

    pool: ClientPool = field(default_factory=ClientPool)
    kube: Kube | None = None
    daemons: int = 0
    ticker: Ticker = field(default_factory=Ticker)

    def k8s(self) -> Kube:
        if self.kube is None:
            self.kube = Kube()
        return self.kube

    async def close(self) -> None:
        await self.pool.close()
        if self.kube is not None:
            await self.kube.close()


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


class Consumer:
    """The loop state of one QueueConsumer."""

    def __init__(self, body: kopf.Body, logger: Any, shared: Shared) -> None:
        self.body = body
        self.logger = logger
        self.shared = shared
        self.ns = str(body.metadata.namespace)
        self.name = str(body.metadata.name)
        status = body.get("status") or {}
        busy = ((status.get("backlog") or {}).get("total") or 0) > 0
        self.state = PolicyState(
            last_scale_time=_parse_iso(status.get("lastScaleTime")),
            # lastActiveTime is not rewritten while a backlog stays busy: when the last status said busy,
            # count the resource as active now, so a restart never shortens the cooldown
            last_active_time=None if busy else _parse_iso(status.get("lastActiveTime")),
        )
        self.spec_key: Any = None
        self.spec: QueueConsumerSpec | None = None
        self.reader: ListReader | StreamReader | None = None
        self.current: int | None = None
        self.current_read_at = 0.0
        self.phase = Ticker.phase(f"{self.ns}/{self.name}")
        self.reread_after = SCALE_REREAD_SECONDS * (1 + SCALE_REREAD_JITTER * random.random())
        self.creds: Credentials | None = None
        self.creds_at = 0.0
        self.conditions: dict[str, tuple[str, str, str]] = {}  # type -> (status, reason, message)
        self.transitions: dict[str, str] = {
            c["type"]: c.get("lastTransitionTime", "") for c in status.get("conditions") or []
        }
        self.decision: Decision | None = None
        self.queue_label: str | None = None
        self.last_backlog: dict[str, Any] | None = None
        self.last_significant: tuple[Any, ...] | None = None
        self.last_info: tuple[Any, ...] | None = None
        self.last_info_write_at = -math.inf
        self.target_failures = 0
        labels = (self.ns, self.name)
        # labelled children looked up once: a poll sets them without the registry's label lookups
        self.m_desired = metrics.DESIRED.labels(*labels)
        self.m_current = metrics.CURRENT.labels(*labels)
        self.last_gauges: tuple[int, int] | None = None
        self.last_backlog_metric: Backlog | None = None
        self.m_backlog = {
            part: metrics.BACKLOG.labels(*labels, part)
            for part in ("ready", "inflight", "retries_due", "stream_lag", "stream_pending", "total")
        }

    # --- events and conditions -----------------------------------------------------------------------

    def event(self, kind: str, reason: str, message: str) -> None:
        kopf.event(self.body, type=kind, reason=reason, message=message)
        # the module logger, not kopf's per-object one, which would post the line as a second Event
        (log.warning if kind == "Warning" else log.info)(f"[{self.ns}/{self.name}] {reason}: {message}")

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
        # the API server bumps generation on every spec change (status is a subresource)
        generation = self.body.metadata.get("generation")
        key = generation if generation is not None else repr(raw)
        if key != self.spec_key or self.spec is None:
            spec = parse_spec(raw)
            self.spec_key, self.spec = key, spec
            self.reader = None
            self.creds = None
            if spec.worker is not None:
                manifest = build_deployment(self.body, spec)
                await self.shared.k8s().apply_deployment(self.ns, manifest)
        return self.spec

    async def credentials(self, spec: QueueConsumerSpec) -> Credentials:
        if self.creds is None or time.monotonic() - self.creds_at > SECRET_TTL:
            k = self.shared.k8s()
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
                pool = self.shared.pool
                client = pool.get(spec.redis.url, spec.redis.cluster, creds, spec.redis.tls_insecure)
                self.reader = make_reader(client, spec.source, pool.batcher(client))
            metrics.REDIS_READS.inc()
            return await self.reader.read(time.time()), ""
        except KubeError as exc:
            return None, f"reading the Redis credentials: {exc}"
        except (RedisError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def current_replicas(self, target: TargetRef) -> int:
        if self.current is None or time.monotonic() - self.current_read_at > self.reread_after:
            self.current = await self.shared.k8s().get_replicas(self.ns, target)
            self.current_read_at = time.monotonic()
        return self.current

    async def poll(self) -> float:
        """One round; returns how long to wait before the next."""
        try:
            spec = await self.refresh_spec()
        except SpecError as exc:
            self.condition("Ready", False, "InvalidSpec", str(exc))
            await self.patch_status(force=True)
            return MAX_BACKOFF
        interval = spec.scaling.polling_interval_seconds
        target = spec.target or target_for(self.name)
        started = time.perf_counter()
        # read first: the daemons of one tick queue their reads together, before any API call
        reading, error = await self.read(spec)
        try:
            current = await self.current_replicas(target)
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
        # a scale-up goes out first (burst latency); a scale-down or a fallback is in no hurry, so the
        # status says why before the target moves, and again with the new count after
        urgent = changed and decision.desired > current and not decision.fallback
        if changed and not urgent:
            self.observe(spec, reading, error, decision, paused)
            await self.patch_status(force=True)
        if changed:
            try:
                self.current = await self.shared.k8s().set_replicas(self.ns, target, decision.desired)
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
        gauges = (decision.desired, self.current or 0)
        if gauges != self.last_gauges:  # a set takes a lock: 1,000 quiet resources skip it
            self.m_desired.set(gauges[0])
            self.m_current.set(gauges[1])
            self.last_gauges = gauges
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
            if b != self.last_backlog_metric:
                m = self.m_backlog
                m["ready"].set(b.ready)
                m["inflight"].set(b.inflight)
                m["retries_due"].set(b.retries_due)
                m["stream_lag"].set(b.stream_lag)
                m["stream_pending"].set(b.stream_pending)
                m["total"].set(b.total)
                self.last_backlog_metric = b
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

    def status(self) -> dict[str, Any]:
        now = time.time()
        status: dict[str, Any] = {
            "queue": self.queue_label,
            "observedGeneration": self.body.metadata.get("generation"),
            "currentReplicas": self.current,
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": m[:1000],
                    "lastTransitionTime": self.transitions.get(t) or _iso(now),
                }
                for t, (s, r, m) in sorted(self.conditions.items())
            ],
        }
        decision = self.decision
        if decision is not None:
            status["desiredReplicas"] = decision.desired
            status["lastRule"] = decision.rule
            status["lastScaleTime"] = _iso(self.state.last_scale_time)
            status["lastActiveTime"] = _iso(self.state.last_active_time)
            status["lastDecision"] = decision.reason[:1000]
        if self.last_backlog is not None:
            status["backlog"] = self.last_backlog
        return {k: v for k, v in status.items() if v is not None}

    async def patch_status(self, force: bool = False) -> None:
        # compared as small tuples first: the status document is built only when it is written
        d = self.decision
        conditions = sorted(self.conditions.items())
        significant = (
            self.current,
            d.desired if d else None,
            d.rule if d else None,
            self.state.last_scale_time,
            self.body.metadata.get("generation"),
            self.queue_label,
            tuple((t, s, r) for t, (s, r, _) in conditions),
        )
        info = (self.last_backlog, tuple(m for _, (_, _, m) in conditions))
        now = time.monotonic()
        if not force and significant == self.last_significant:
            # lastActiveTime moves every poll while busy; it rides along with other writes only
            if info == self.last_info or now - self.last_info_write_at < STATUS_MIN_INTERVAL:
                return
            self.last_info_write_at = now
        try:
            await self.shared.k8s().patch_status(self.ns, self.name, self.status())
            self.last_significant, self.last_info = significant, info
        except KubeError as exc:
            if exc.status != 404:  # 404: the resource is being deleted
                self.logger.warning(f"status patch failed: {exc}")

    @property
    def interval(self) -> float:
        return self.spec.scaling.polling_interval_seconds if self.spec is not None else 1.0

    async def run(self, stopped: Any) -> None:
        """Poll until ``stopped`` (kopf's DaemonStopped) turns true."""
        self.shared.daemons += 1
        try:
            while not stopped:
                try:
                    delay = await self.poll()
                except (KubeError, aiohttp.ClientError, TimeoutError) as exc:  # the API server blinked
                    self.logger.warning(f"poll failed: {type(exc).__name__}: {exc}")
                    delay = 2.0
                await self.shared.ticker.wait(delay, self.interval, self.phase)
        finally:
            self.shared.daemons -= 1
            metrics.forget(self.ns, self.name)
