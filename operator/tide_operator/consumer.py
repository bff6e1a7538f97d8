"""The loop of one QueueConsumer: spec, credentials, read, decide, scale, conditions, status.

Redis reading is ``redis_reader``, deciding is the pure ``policy``, the Kubernetes client is ``kube`` and
the owned Deployment is ``workload``; this module only sequences them. kopf appears only to post Events.

Every daemon polls on a shared grid (``redis_reader.Ticker``, beside the read batcher it feeds): the resources of one polling interval wake in ten
groups, each group in one event-loop iteration, so a group's reads of one Redis server go out as one
pipeline (the ``ReadBatcher``). A poll reads first, then patches ``/scale`` at once if the decision changed, then the
status. Status writes: immediately when a replica count, rule, condition status or reason changes;
changes of the informational fields alone (backlog, messages, last decision) at most every
``STATUS_MIN_INTERVAL`` seconds; ``lastActiveTime`` alone never triggers a write (a resource with a
steady non-zero backlog stays quiet). 1,000 idle resources write nothing.

Every failure of a poll ends in a condition (``Ready=False`` with a reason, or a condition of its own) and
a Warning event, and the loop goes on with backoff. An event is posted when a failure starts or its
message changes, and again only after ``EVENT_REPEAT_SECONDS`` while it lasts: a persistent failure never
posts an event per poll. URLs in any event, condition, status or log line lose their userinfo
(``tide_worker.connection.redact``).

A ``worker:`` section's Deployment is applied when the spec changes, retried with backoff until the API
server takes it (its message goes in ``Ready=False``/``DeploymentFailed`` and an event), and applied
again when a read of it says 404 (deleted by hand). It is read, instead of its ``/scale``, on the same
slow timer (and a few times after it is applied or scaled up), so its ``ReplicaFailure`` condition (pods
refused by admission, e.g. Pod Security) shows as ``PodsCreatable=False`` at no extra cost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import random
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import kopf
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tide_worker.backlog import Backlog
from tide_worker.connection import SENTINEL_ERRORS, redact, sentinel_detail

from tide_operator import deletion_cost, metrics
from tide_operator.conditions import Condition, Reason
from tide_operator.kube import Kube, KubeError, NotFound
from tide_operator.policy import Decision, PolicyState, decide
from tide_operator.redis_reader import (
    ClientPool,
    Credentials,
    ListReader,
    MultiListReader,
    Reading,
    StreamReader,
    Ticker,
    make_reader,
)
from tide_operator.spec import QueueConsumerSpec, SpecError, TargetRef, is_paused, parse_spec
from tide_operator.status import backlog_status, build_status, iso, parse_iso
from tide_operator.wake import Waker
from tide_operator.workload import build_deployment, target_for

STATUS_MIN_INTERVAL = 2.0
# In a burst on many resources, a status write and the periodic /scale re-read wait while any resource's
# /scale patch is in flight, at most this long: the API server serves the scale-ups first.
STATUS_BURST_WAIT = 10.0
# Re-read the target's replicas to notice changes made by someone else; spread over a window so a
# thousand resources do not re-read in the same second. At most SCALE_REREADS_PER_SECOND of them per
# process: at 10,000 resources every 30 s were 330 GETs a second of API server work while nothing happened,
# the work a burst's scale-ups compete with (bench/operator/bench.py, idle_plane_cores). Past 600 resources
# the period grows instead (10,000: every 500 s); each of the operator's own writes returns the count anyway.
SCALE_REREAD_SECONDS = 30.0
SCALE_REREAD_JITTER = 0.25
SCALE_REREADS_PER_SECOND = 20.0


def reread_period(resources: int) -> float:
    """Seconds between two re-reads of one target's replicas, with ``resources`` served by this process."""
    return max(SCALE_REREAD_SECONDS, resources / SCALE_REREADS_PER_SECOND)


SECRET_TTL = 60.0
# While a scale-up's pods start and messages wait, read RAMP_READS times per polling interval, for at most
# RAMP_SECONDS: pods start within about one interval, so at one read per interval two readings in a row
# rarely see the same workers, and the backlog's fall per worker count is what the drains-first and knee
# rules measure (tide_operator.policy); also after a "measuring" hold, whose next read measures the rate. Only
# with live workers, so a resource scaling from zero or whose pods cannot start reads no more than before.
RAMP_READS = 4
RAMP_SECONDS = 5.0
MAX_BACKOFF = 10.0
# A failure that lasts is posted again this often (Kubernetes keeps events for an hour by default).
EVENT_REPEAT_SECONDS = 600.0
# Re-applying a Deployment the API server refused: doubling from the polling interval up to this.
DEPLOY_MAX_BACKOFF = 60.0
# Reads of an owned Deployment this long after it is applied or scaled up, on top of the slow timer:
# the ReplicaSet controller reports pods it cannot create within a few seconds.
SETTLE_READS = (2.0, 5.0, 12.0)
# What parsing a spec the schema let through can raise (spec.py trusts shapes: ``podTemplate: "x"``
# is a ValueError of dict(), a missing key a KeyError).
PARSE_ERRORS = (SpecError, KeyError, TypeError, ValueError, AttributeError, IndexError)
# What building a Redis client and reading through it can raise besides RedisError/OSError: a URL
# redis-py cannot parse (ValueError: port 99999), ``cluster: true`` against a standalone server
# (RedisClusterException, not a RedisError), a CA that is no PEM (ValueError/TypeError from ssl).
READ_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError, ValueError, TypeError)
# The API server could not be reached or answered oddly: reported, retried.
API_ERRORS = (KubeError, aiohttp.ClientError, TimeoutError)

log = logging.getLogger("tide_operator")


def deletion_costs_enabled() -> bool:
    """Pod deletion costs before a scale-down (default on; TIDE_OPERATOR_DELETION_COST=false: off)."""
    return os.environ.get("TIDE_OPERATOR_DELETION_COST", "true").lower() not in ("false", "0", "off")


@dataclass
class Shared:
    """What every resource's loop shares: Redis clients (and their batchers) and the API client."""

    pool: ClientPool = field(default_factory=ClientPool)
    kube: Kube | None = None
    daemons: int = 0
    scaling: int = 0  # /scale patches in flight (a burst: the status writes after them wait a poll)
    ticker: Ticker = field(default_factory=Ticker)
    waker: Waker = field(default_factory=Waker)  # keyspace notifications end a sleep at zero early

    def k8s(self) -> Kube:
        if self.kube is None:
            self.kube = Kube()
        return self.kube

    async def close(self) -> None:
        await self.waker.close()
        await self.pool.close()
        if self.kube is not None:
            await self.kube.close()


class Consumer:
    """The loop state of one QueueConsumer."""

    def __init__(self, body: kopf.Body, logger: Any, shared: Shared) -> None:
        self.body = body
        self._read_body(body)
        self.logger = logger
        self.shared = shared
        self.ns = str(body.metadata.namespace)
        self.name = str(body.metadata.name)
        status = body.get("status") or {}
        busy = ((status.get("backlog") or {}).get("total") or 0) > 0
        self.state = PolicyState(
            last_scale_time=parse_iso(status.get("lastScaleTime")),
            # lastActiveTime is not rewritten while a backlog stays busy: when the last status said busy,
            # count the resource as active now, so a restart never shortens the cooldown
            last_active_time=None if busy else parse_iso(status.get("lastActiveTime")),
        )
        self.spec_key: Any = None
        self.spec: QueueConsumerSpec | None = None
        self.reader: ListReader | StreamReader | MultiListReader | None = None
        self.current: int | None = None
        self.current_read_at = 0.0
        self.phase = Ticker.phase(f"{self.ns}/{self.name}")
        self.reread_jitter = 1 + SCALE_REREAD_JITTER * random.random()
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
        self.last_quiet: tuple[Any, ...] | None = None  # what the last full poll saw (see ``poll``)
        self.status_settled = False  # the last status call left nothing unwritten
        self.status_waiting_since: float | None = None  # a status write held back by others' scale-ups
        self.target_failures = 0
        # key -> (message, monotonic time) of the Warning events of failures still going on
        self.failing: dict[str, tuple[str, float]] = {}
        self.poll_failures = 0
        # the owned Deployment: the spec key it was last applied for (None: apply), retry backoff
        self.deploy_key: Any = None
        self.deploy_failures = 0
        self.deploy_retry_at = 0.0
        self.deploy_error = ""
        self.settle_reads: collections.deque[float] = collections.deque()
        self.ramp_until: float | None = None  # reading RAMP_READS times an interval until then
        self.pod_costs: dict[str, int] = {}  # the deletion costs last written, by pod name
        # what the per-resource gauges show when scraped (metrics.RESOURCES)
        self.last_gauges: tuple[int, int] | None = None
        self.last_backlog_metric: Backlog | None = None

    def update(self, body: kopf.Body) -> None:
        """A newer body from the watch: the next poll reads its spec, generation and annotations."""
        self.body = body
        self._read_body(body)

    def _read_body(self, body: kopf.Body) -> None:
        # plain copies of what every poll reads: kopf's Body views cost ~10 us per lookup, per poll
        meta = body.get("metadata") or {}
        self.raw_spec: Any = body.get("spec") or {}
        self.generation: Any = meta.get("generation")
        self.paused = is_paused(meta.get("annotations"))

    # --- events and conditions -----------------------------------------------------------------------

    def event(self, kind: str, reason: str, message: str) -> None:
        message = redact(message)
        kopf.event(self.body, type=kind, reason=reason, message=message)
        # the module logger, not kopf's per-object one, which would post the line as a second Event
        (log.warning if kind == "Warning" else log.info)(f"[{self.ns}/{self.name}] {reason}: {message}")

    def warn(self, key: str, reason: str, message: str) -> bool:
        """A Warning event for the failure ``key``: when it starts or its message changes, then only every
        ``EVENT_REPEAT_SECONDS`` while it lasts. True when posted."""
        now = time.monotonic()
        last = self.failing.get(key)
        if last is not None and last[0] == message and now - last[1] < EVENT_REPEAT_SECONDS:
            return False
        self.failing[key] = (message, now)
        self.event("Warning", reason, message)
        return True

    def resolve(self, key: str) -> bool:
        """The failure ``key`` is over; True when it had been reported (a recovery is worth an event)."""
        return self.failing.pop(key, None) is not None

    def condition(self, ctype: str, ok: bool, reason: str, message: str) -> bool:
        """Set a condition; True when its status changed."""
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        new = (status, reason, redact(message))
        self.conditions[ctype] = new
        if old != new:  # set outside a poll too (the waker's WakeOnPush): the next poll is not quiet
            self.status_settled = False
        if old is None or old[0] != status:
            self.transitions[ctype] = iso(time.time()) or ""
            return old is not None or not ok
        return False

    async def fail(self, key: str, reason: str, message: str, ctype: str = Condition.READY) -> None:
        """A failure that stops this poll: ``ctype=False`` with ``reason``, an event (once), the status."""
        self.condition(ctype, False, reason, message)
        self.warn(key, reason, message)
        await self.patch_status(force=True)

    # --- one poll ------------------------------------------------------------------------------------

    def refresh_spec(self) -> QueueConsumerSpec:
        raw = self.raw_spec
        # the API server bumps generation on every spec change (status is a subresource)
        generation = self.generation
        key = generation if generation is not None else repr(raw)
        if key != self.spec_key or self.spec is None:
            spec = parse_spec(raw)
            self.spec_key, self.spec = key, spec
            self.reader = None
            self.creds = None
            if spec.worker is not None:  # a new spec is applied at once, whatever the backoff of the last
                self.deploy_key, self.deploy_failures, self.deploy_retry_at = None, 0, 0.0
        return self.spec

    async def ensure_deployment(self, spec: QueueConsumerSpec, interval: float) -> bool:
        """Apply the owned Deployment unless it is up to date; False while the API server refuses it (the
        condition and event say why; the next attempt waits out a backoff)."""
        if spec.worker is None or self.deploy_key == self.spec_key:
            return True
        now = time.monotonic()
        if now < self.deploy_retry_at:
            return False
        manifest = build_deployment(self.body, spec)  # SpecError: the caller reports InvalidSpec
        name = manifest["metadata"]["name"]
        try:
            await self.shared.k8s().apply_deployment(self.ns, manifest)
        except KubeError as exc:
            self.deploy_failures += 1
            self.deploy_retry_at = now + min(DEPLOY_MAX_BACKOFF, interval * 2.0**self.deploy_failures)
            self.deploy_error = f"Deployment {name} (HTTP {exc.status}): {exc.message}"
            await self.fail("deployment", Reason.DEPLOYMENT_FAILED, self.deploy_error)
            return False
        self.deploy_key, self.deploy_failures, self.deploy_error = self.spec_key, 0, ""
        self.current = None  # read it back: its replicas, and whether its pods can be created
        self.settle()
        if self.resolve("deployment"):
            self.event("Normal", Reason.DEPLOYMENT_APPLIED, f"Deployment {name} applied")
        return True

    def ramp(self, reading: Reading | None, scaling_up: bool) -> None:
        """Start reading faster at a scale-up with live workers and messages waiting; stop once none
        wait."""
        waiting = reading is not None and reading.backlog.total > reading.backlog.busy
        if not waiting:
            self.ramp_until = None
        elif scaling_up and reading is not None and reading.rates:
            self.ramp_until = time.monotonic() + RAMP_SECONDS

    def ramping(self) -> bool:
        return self.ramp_until is not None and time.monotonic() < self.ramp_until

    def settle(self) -> None:
        """Read the owned Deployment a few more times soon: pods it cannot create show within seconds."""
        now = time.monotonic()
        self.settle_reads = collections.deque(now + d for d in SETTLE_READS)

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
                sentinel_password=await k.secret_value(self.ns, r.sentinel.password_secret)
                if r.sentinel and r.sentinel.password_secret
                else None,
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
        except UnicodeDecodeError as exc:  # a Secret's value that is not UTF-8 (a ValueError too)
            return None, f"reading the Redis credentials: a Secret value is not UTF-8 text: {exc}"
        except SENTINEL_ERRORS as exc:  # before READ_ERRORS: a ConnectionError whose text lists each sentinel
            return None, (
                "Sentinel gave no master (check spec.redis.sentinel.masterName, .sentinels and "
                f".passwordSecretRef): {sentinel_detail(exc)}"
            )
        except READ_ERRORS as exc:
            hint = ""
            if isinstance(exc, RedisClusterException) and spec.redis.cluster:
                hint = " (spec.redis.cluster is true: is the server a Redis Cluster?)"
            elif spec.redis.sentinel is not None and type(exc) in (RedisConnectionError, RedisTimeoutError):
                hint = " (the master the sentinels named; during a failover the sentinels name the new one)"
            return None, f"{type(exc).__name__}: {exc}{hint}"

    async def current_replicas(self, spec: QueueConsumerSpec, target: TargetRef) -> int:
        now = time.monotonic()
        settling = bool(self.settle_reads) and self.settle_reads[0] <= now
        age = now - self.current_read_at
        every = reread_period(self.shared.daemons) * self.reread_jitter
        # the periodic re-read waits while scale-ups are in flight (a burst), as status writes do
        due = age > every and (not self.shared.scaling or age > every + STATUS_BURST_WAIT)
        if self.current is None or due or settling:
            while self.settle_reads and self.settle_reads[0] <= now:
                self.settle_reads.popleft()
            k = self.shared.k8s()
            if spec.worker is not None:
                # the Deployment itself instead of its /scale: the same replicas, plus its conditions
                deployment = await k.get_deployment(self.ns, target.name)
                self.current = int((deployment.get("spec") or {}).get("replicas") or 0)
                self.observe_pods(target, deployment)
            else:
                self.current = await k.get_replicas(self.ns, target)
            self.current_read_at = time.monotonic()
        return self.current

    def observe_pods(self, target: TargetRef, deployment: dict[str, Any]) -> None:
        """``PodsCreatable`` from the Deployment's ``ReplicaFailure`` condition, which the Deployment
        controller copies from its ReplicaSet when pods are refused (Pod Security admission, quota)."""
        status = deployment.get("status") or {}
        failure = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
            ),
            None,
        )
        if failure is not None:
            reason = str(failure.get("reason") or "FailedCreate")
            message = f"Deployment {target.name}: {failure.get('message') or reason}"
            self.condition(Condition.PODS_CREATABLE, False, reason, message)
            self.warn("pods", Reason.PODS_NOT_CREATABLE, message)
        elif self.current or Condition.PODS_CREATABLE in self.conditions:
            self.condition(
                Condition.PODS_CREATABLE,
                True,
                Reason.NO_FAILURE,
                f"Deployment {target.name} reports no pod creation failure",
            )
            if self.resolve("pods"):
                self.event(
                    "Normal", Reason.PODS_CREATABLE, f"Deployment {target.name} creates its pods again"
                )

    async def target_failure(self, spec: QueueConsumerSpec, target: TargetRef, exc: KubeError) -> None:
        """Why the target's replicas cannot be read: missing, of a kind without /scale, or refused."""
        message = f"{target.kind} {target.name}: {exc.message}"
        if not isinstance(exc, NotFound):
            reason = Reason.TARGET_UNREADABLE
        elif await self.has_no_scale(target):
            reason = Reason.TARGET_NOT_SCALABLE
            message = (
                f"{target.api_version} {target.kind} has no /scale subresource, so {target.kind} "
                f"{target.name} cannot be scaled: scaleTargetRef must name a kind with one (Deployment, "
                "StatefulSet, ReplicaSet, or a custom resource that declares subresources.scale)"
            )
        else:
            reason = Reason.TARGET_NOT_FOUND
        await self.fail("target", reason, message)

    async def has_no_scale(self, target: TargetRef) -> bool:
        """True when discovery lists the target's kind without a ``/scale`` subresource (only after a 404;
        the client keeps one discovery answer per kind)."""
        try:
            return not await self.shared.k8s().has_scale(target)
        except KubeError:
            return False  # the kind is unknown, or discovery was refused: report what /scale said

    async def deployment_missing(self, target: TargetRef) -> None:
        """The owned Deployment answered 404: deleted by hand, or never created. Apply it at once."""
        self.deploy_key, self.deploy_retry_at, self.current = None, 0.0, None
        await self.fail(
            "deployment",
            Reason.DEPLOYMENT_MISSING,
            f"Deployment {target.name} was not found; creating it again",
        )

    async def poll(self) -> float:
        """One round; returns how long to wait before the next."""
        try:
            spec = self.refresh_spec()
            interval = spec.scaling.polling_interval_seconds
            if not await self.ensure_deployment(spec, interval):
                return max(interval, self.deploy_retry_at - time.monotonic())
        except PARSE_ERRORS as exc:
            message = (
                str(exc)
                if isinstance(exc, SpecError)
                else f"spec cannot be used: {type(exc).__name__}: {exc}"
            )
            await self.fail("spec", Reason.INVALID_SPEC, message)
            return MAX_BACKOFF
        self.resolve("spec")
        target = spec.target or target_for(self.name)
        started = time.perf_counter()
        # read first: the daemons of one tick queue their reads together, before any API call
        reading, error = await self.read(spec)
        try:
            current = await self.current_replicas(spec, target)
        except KubeError as exc:
            self.target_failures += 1
            if spec.worker is not None and isinstance(exc, NotFound):
                await self.deployment_missing(target)
                return interval
            self.observe_redis(spec, reading, error)  # what the read found still counts
            await self.target_failure(spec, target, exc)
            return min(MAX_BACKOFF, interval * 2.0**self.target_failures)
        self.target_failures = 0
        self.resolve("target")

        paused = self.paused
        decision = decide(
            spec.scaling,
            reading.backlog if reading else None,
            reading.rates if reading else (),
            current,
            self.state,
            time.time(),
            paused,
            reading.idle if reading else (),
        )
        self.state = decision.state
        self.ramp(reading, decision.desired > current or decision.read_soon)
        changed = decision.desired != current
        # a scale-up goes out first (burst latency); a scale-down or a fallback is in no hurry, so the
        # status says why before the target moves, and again with the new count after
        urgent = changed and decision.desired > current and not decision.fallback
        if changed and not urgent:
            self.observe(spec, reading, error, decision, paused)
            await self.patch_status(force=True)
        if changed and decision.desired < current and deletion_costs_enabled():
            await self.set_deletion_costs()
        if changed:
            self.shared.scaling += 1
            try:
                self.current = await self.shared.k8s().set_replicas(self.ns, target, decision.desired)
                self.current_read_at = time.monotonic()
                if spec.worker is not None and decision.desired > current:
                    self.settle()
                metrics.SCALE_CHANGES.labels(self.ns, self.name, decision.rule).inc()
                self.resolve("scale")
                self.event(
                    "Normal",
                    Reason.SCALED,
                    f"{target.kind} {target.name} {current} -> {decision.desired}: {decision.reason}",
                )
            except KubeError as exc:
                self.current = None  # re-read next time
                if spec.worker is not None and isinstance(exc, NotFound):
                    await self.deployment_missing(target)
                    return interval
                self.warn("scale", Reason.SCALE_FAILED, f"{target.kind} {target.name}: {exc.message}")
            finally:
                self.shared.scaling -= 1
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        # A quiet poll: the same reading, decision and inputs as the last one, whose status is written
        # and with no failure in flight. The conditions, metrics and status would come out the same, so
        # they are not recomputed (half the CPU of an idle poll; 10,000 idle resources poll every second).
        quiet = (
            reading,
            decision.desired,
            decision.rule,
            decision.reason,
            paused,
            self.current,
            self.spec_key,
        )
        if (
            not changed
            and reading is not None
            and quiet == self.last_quiet
            and self.status_settled
            and (not self.failing or self.failing.keys() <= {"status"})
            and not spec.scaling.schedule_errors
        ):
            self.decision = decision
            return interval
        self.observe(spec, reading, error, decision, paused)
        if self.shared.scaling > 0 and self.status_may_wait():
            # a burst: other resources' scale-ups still wait for the API server, and this status write
            # would queue in front of theirs; a later poll writes it (the status is left unsettled)
            self.status_settled = False
        else:
            self.status_waiting_since = None
            await self.patch_status(force=changed)
        self.last_quiet = None if changed or reading is None else quiet
        if reading is None:
            metrics.READ_ERRORS.labels(self.ns, self.name).inc()
            return min(MAX_BACKOFF, interval * 2.0 ** max(0, self.state.failures - 1))
        return interval

    def status_may_wait(self) -> bool:
        """True while this resource's status write has waited less than ``STATUS_BURST_WAIT``."""
        now = time.monotonic()
        if self.status_waiting_since is None:
            self.status_waiting_since = now
        return now - self.status_waiting_since < STATUS_BURST_WAIT

    async def set_deletion_costs(self) -> None:
        """Before a scale-down: each reporting worker's pod gets a deletion cost from the work it holds,
        so the ReplicaSet controller removes idle pods first. Only pods whose heartbeats name them in
        this namespace, only costs that changed. Refused (403, say RBAC without ``patch`` on pods) or
        failed, the scale-down goes ahead anyway; the condition and an event say why."""
        if self.reader is None:
            return
        try:
            beats = await self.reader.heartbeats()
        except READ_ERRORS as exc:
            log.info(f"[{self.ns}/{self.name}] no heartbeats for deletion costs: {exc}")
            return
        costs = deletion_cost.pod_costs(beats, self.ns, time.time())
        self.pod_costs = {p: c for p, c in self.pod_costs.items() if p in costs}  # pods gone: forgotten
        k = self.shared.k8s()
        for pod, cost in deletion_cost.changed(costs, self.pod_costs).items():
            try:
                await k.set_pod_deletion_cost(self.ns, pod, cost)
            except NotFound:
                continue  # the pod went meanwhile
            except KubeError as exc:
                why = "forbidden to patch pods (RBAC)" if exc.status == 403 else exc.message
                message = f"pod {pod}: {why}; scaling down without deletion costs, busy pods may go"
                self.condition(Condition.DELETION_COSTS_SET, False, Reason.PODS_NOT_PATCHABLE, message)
                self.warn("costs", Reason.PODS_NOT_PATCHABLE, message)
                return
            self.pod_costs[pod] = cost
        self.resolve("costs")
        n = sum(1 for c in costs.values() if c > deletion_cost.IDLE)
        message = f"{len(costs)} reporting pods, {n} busy"
        self.condition(Condition.DELETION_COSTS_SET, True, Reason.COSTS_SET, message)

    def observe_redis(self, spec: QueueConsumerSpec, reading: Reading | None, error: str) -> None:
        reachable_changed = self.condition(
            Condition.REDIS_REACHABLE,
            reading is not None,
            Reason.READ_FAILED if reading is None else Reason.READ,
            error or "backlog read",
        )
        if reading is None:
            self.warn(
                "redis",
                Reason.REDIS_UNREACHABLE,
                f"{redact(spec.redis.url)}: {error}; holding replicas, will retry",
            )
        elif self.resolve("redis") or reachable_changed:
            self.event("Normal", Reason.REDIS_REACHABLE, f"{redact(spec.redis.url)} readable again")

    def observe(
        self, spec: QueueConsumerSpec, reading: Reading | None, error: str, decision: Decision, paused: bool
    ) -> None:
        self.last_gauges = (decision.desired, self.current or 0)
        self.observe_redis(spec, reading, error)
        # True only while a fallback replica count is applied; a failed read without one holds the count
        fb = decision.fallback
        if fb:
            fb_reason, fb_message = Reason.FALLBACK, decision.reason
        elif reading is None:
            fb_reason, fb_message = Reason.HOLDING, decision.reason
        else:
            fb_reason, fb_message = Reason.READING, "reads succeed"
        fb_changed = self.condition(Condition.FALLBACK, fb, fb_reason, fb_message)
        if fb_changed and fb:
            self.event("Warning", Reason.FALLBACK, decision.reason)
        self.observe_schedules(spec)
        self.condition(
            Condition.PAUSED,
            paused,
            Reason.ANNOTATION if paused else Reason.NOT_PAUSED,
            "tide.dev/paused is true" if paused else "scaling",
        )
        self.condition(
            Condition.READY,
            reading is not None,
            Reason.SERVING if reading is not None else Reason.REDIS_UNREACHABLE,
            decision.reason,
        )
        if reading is not None:
            b = reading.backlog
            self.condition(
                Condition.ACTIVE,
                b.total > 0,
                Reason.BACKLOG if b.total else Reason.IDLE,
                f"backlog {b.total}",
            )
            self.last_backlog_metric = b
            self.last_backlog = backlog_status(b, reading.parts)
        self.decision = decision
        self.queue_label = spec.source.label

    def observe_schedules(self, spec: QueueConsumerSpec) -> None:
        """``SchedulesValid``: False, with a Warning event naming each field, while a schedule the schema
        let through cannot be used (an unknown time zone, a cron that never fires); scaling goes on with the
        others. Set once a spec has schedules; kept (True) after they are removed."""
        errors, usable = spec.scaling.schedule_errors, spec.scaling.schedules
        if errors:
            which = "this window" if len(errors) == 1 else "these windows"
            message = "; ".join(errors) + f" (scaling goes on without {which})"
            self.condition(Condition.SCHEDULES_VALID, False, Reason.INVALID_SCHEDULE, message)
            self.warn("schedules", Reason.INVALID_SCHEDULE, message)
        elif usable or Condition.SCHEDULES_VALID in self.conditions:
            message = f"{len(usable)} schedule{'' if len(usable) == 1 else 's'} in use"
            self.condition(Condition.SCHEDULES_VALID, True, Reason.SCHEDULES_VALID, message)
            if self.resolve("schedules"):
                self.event("Normal", Reason.SCHEDULES_VALID, f"every schedule is usable again: {message}")

    def status(self) -> dict[str, Any]:
        d = self.decision
        return build_status(
            queue=self.queue_label,
            generation=self.generation,
            current=self.current,
            conditions=self.conditions,
            transitions=self.transitions,
            decision=None if d is None else replace(d, reason=redact(d.reason)),
            state=self.state,
            backlog=self.last_backlog,
            now=time.time(),
        )

    async def patch_status(self, force: bool = False) -> None:
        # compared as small tuples first: the status document is built only when it is written
        d = self.decision
        conditions = sorted(self.conditions.items())
        significant = (
            self.current,
            d.desired if d else None,
            d.rule if d else None,
            tuple(w.schedule.index for w in d.windows) if d else (),
            self.state.last_scale_time,
            self.generation,
            self.queue_label,
            tuple((t, s, r) for t, (s, r, _) in conditions),
        )
        info = (self.last_backlog, tuple(m for _, (_, _, m) in conditions))
        now = time.monotonic()
        if not force and significant == self.last_significant:
            # lastActiveTime moves every poll while busy; it rides along with other writes only
            if info == self.last_info:
                self.status_settled = True
                return
            if now - self.last_info_write_at < STATUS_MIN_INTERVAL:
                self.status_settled = False  # written by a later poll
                return
            self.last_info_write_at = now
        self.status_settled = False
        try:
            await self.shared.k8s().patch_status(self.ns, self.name, self.status())
            self.last_significant, self.last_info = significant, info
            self.status_settled = True
        except KubeError as exc:
            # 404: the resource is being deleted. The module logger: kopf's per-object one posts each
            # line as an event, and a status the API server refuses would be refused every poll.
            if not isinstance(exc, NotFound) and self.failing.get("status", ("",))[0] != str(exc):
                self.failing["status"] = (str(exc), time.monotonic())
                log.warning(f"[{self.ns}/{self.name}] status patch failed: {redact(str(exc))}")

    @property
    def interval(self) -> float:
        return self.spec.scaling.polling_interval_seconds if self.spec is not None else 1.0

    async def poll_failed(self, exc: Exception) -> float:
        """A poll raised what no step handles: ``Ready=False`` with a reason, a Warning event (once per
        message), a traceback in the log (once per message); the next poll after a backoff."""
        self.poll_failures += 1
        # the API server blinked (or refused a call no step expects), or a bug of ours
        reason = Reason.API_SERVER_ERROR if isinstance(exc, API_ERRORS) else Reason.INTERNAL_ERROR
        message = f"poll failed: {type(exc).__name__}: {exc}"
        self.condition(Condition.READY, False, reason, message)
        if self.warn("poll", reason, message) and reason == Reason.INTERNAL_ERROR:
            trace = "".join(traceback.format_exception(exc))
            log.error(f"[{self.ns}/{self.name}] {redact(trace)}")
        try:
            await self.patch_status(force=True)
        except Exception as err:  # the API server is down as well: the log has the first failure
            log.debug(f"[{self.ns}/{self.name}] status patch failed: {redact(repr(err))}")
        return min(MAX_BACKOFF, self.interval * 2.0**self.poll_failures)

    async def run(self, stopped: Any) -> None:
        """Poll until ``stopped`` turns true (``fleet.Stop``)."""
        self.shared.daemons += 1
        metrics.RESOURCES.track(self)
        try:
            # the first poll on this resource's phase of the grid too: a thousand loops started by one
            # listing spread over the interval instead of all calling the API server at once
            await self.shared.ticker.wait(0.0, self.interval, self.phase)
            while not stopped:
                try:
                    delay = await self.poll()
                    self.poll_failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the last resort: no error ends the loop without a word
                    delay = await self.poll_failed(exc)
                interval = self.interval
                if delay <= interval and self.ramping():
                    delay = interval = interval / RAMP_READS
                await self.shared.waker.sleep(self, self.shared.ticker.tick(delay, interval, self.phase))
        finally:
            self.shared.waker.forget(self)
            self.shared.daemons -= 1
            metrics.forget(self)
