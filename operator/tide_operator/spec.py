"""Typed view of a ``QueueConsumer`` spec, with its defaults.

Defaults live here and in the CRD's schema (``crds/queueconsumer.yaml``); a test checks that the two agree.
The API server has already validated the object, so parsing trusts shapes but still fails loudly
(``SpecError``) on what the schema cannot express or on objects applied before the CRD had a rule.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tide_worker import environment

from tide_operator.schedule import Schedule, parse_schedules

GROUP = "tide.dev"
VERSION = "v1alpha1"
PLURAL = "queueconsumers"
KIND = "QueueConsumer"
PAUSED_ANNOTATION = "tide.dev/paused"

# Defaults (mirrored in the CRD; docs/operator.md says why each differs from KEDA and the HPA).
DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 10
DEFAULT_TARGET_BACKLOG = 10
DEFAULT_ACTIVATION_BACKLOG = 0
DEFAULT_POLLING_INTERVAL = 1.0
DEFAULT_COOLDOWN = 30.0
DEFAULT_UP_STABILIZATION = 0.0
DEFAULT_UP_PERIOD = 1.0
DEFAULT_DOWN_STABILIZATION = 30.0
DEFAULT_DOWN_MAX_STEP_PERCENT = 50.0
DEFAULT_DOWN_PERIOD = 5.0
DEFAULT_FALLBACK_FAILURES = 3
DEFAULT_WORKER_CONCURRENCY = environment.DEFAULT_CONCURRENCY  # the worker's own defaults
DEFAULT_WORKER_MAX_ATTEMPTS = environment.DEFAULT_MAX_ATTEMPTS


# What Kubernetes accepts as object names and Secret keys (the CRD's schema holds the same patterns; a
# test checks they agree). Parsing checks them again: an object stored before the schema had a pattern
# must not reach an API path or a file path either.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
API_VERSION = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?v[0-9]+((alpha|beta)[0-9]+)?$"
)
KIND_NAME = r"^[A-Z][A-Za-z0-9]*$"
MAX_NAME = 253
MAX_REPLICAS = 2**31 - 1  # /scale counts replicas in an int32
MAX_KIND = 63
MAX_WAIT_SECONDS = 86400.0  # targetWaitSeconds: at most a day (the CRD holds the same bound)
# The owned Deployment is "<name>-worker", and its pods carry the name as a label value (63 at most).
MAX_WORKER_QC_NAME = 63 - len("-worker")


class SpecError(ValueError):
    """The spec cannot be used; the message says what to fix."""


def check_name(value: str, what: str) -> str:
    """``value`` when it is a DNS subdomain name (what Secrets and workloads are named), else SpecError."""
    if len(value) > MAX_NAME or not re.fullmatch(DNS_SUBDOMAIN, value):
        raise SpecError(f"{what} {value!r} is not a Kubernetes object name (lower-case DNS subdomain)")
    return value


def check_secret_key(value: str, what: str) -> str:
    if len(value) > MAX_NAME or not re.fullmatch(SECRET_KEY, value) or value == "." or value.startswith(".."):
        raise SpecError(f"{what} {value!r} is not a Secret key (letters, digits, '-', '_', '.'; not '..')")
    return value


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class SentinelSpec:
    """``spec.redis.sentinel``: where the sentinels are and which master they watch."""

    master_name: str
    addresses: tuple[tuple[str, int], ...]
    db: int = 0
    password_secret: SecretKeyRef | None = None  # the sentinels' own requirepass


@dataclass(frozen=True)
class RedisSpec:
    url: str  # with spec.redis.sentinel: the redis+sentinel:// URL built from it (no credentials)
    cluster: bool = False
    username: str | None = None  # literal username (not secret)
    username_secret: SecretKeyRef | None = None
    password_secret: SecretKeyRef | None = None
    ca_secret: SecretKeyRef | None = None
    tls_insecure: bool = False
    sentinel: SentinelSpec | None = None

    @property
    def tls(self) -> bool:
        return self.url.startswith(("rediss://", "rediss+sentinel://"))


@dataclass(frozen=True)
class Source:
    kind: Literal["list", "stream"]
    key: str
    group: str = ""
    side: Literal["left", "right"] = "right"
    # spec.source.lists: every list's key and weight (0: strict priority, in order); key is the first's.
    lists: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        if self.lists:
            return ",".join(k for k, _ in self.lists)
        return self.key if self.kind == "list" else f"{self.key}/{self.group}"

    @property
    def keys(self) -> tuple[str, ...]:
        """The list keys to read (one for list:, each of lists:)."""
        return tuple(k for k, _ in self.lists) if self.lists else (self.key,)


@dataclass(frozen=True)
class Behavior:
    """HPA-style rate limit: at most ``max_step_pods`` or ``max_step_percent`` per ``period_seconds``
    (the larger of the two when both are set; unlimited when neither is)."""

    stabilization_seconds: float
    max_step_pods: int | None
    max_step_percent: float | None
    period_seconds: float


@dataclass(frozen=True)
class Fallback:
    failure_threshold: int = DEFAULT_FALLBACK_FAILURES
    replicas: int | None = None  # None: hold the current count


@dataclass(frozen=True)
class Scaling:
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    target_backlog_per_replica: int = DEFAULT_TARGET_BACKLOG
    activation_backlog: int = DEFAULT_ACTIVATION_BACKLOG
    target_drain_seconds: float | None = None
    target_wait_seconds: float | None = None  # the oldest message may wait this long, then scale up
    polling_interval_seconds: float = DEFAULT_POLLING_INTERVAL
    cooldown_seconds: float = DEFAULT_COOLDOWN
    scale_up: Behavior = field(
        default_factory=lambda: Behavior(DEFAULT_UP_STABILIZATION, None, None, DEFAULT_UP_PERIOD)
    )
    scale_down: Behavior = field(
        default_factory=lambda: Behavior(
            DEFAULT_DOWN_STABILIZATION, None, DEFAULT_DOWN_MAX_STEP_PERCENT, DEFAULT_DOWN_PERIOD
        )
    )
    fallback: Fallback = field(default_factory=Fallback)
    # spec.scaling.schedules: the usable ones, and a message naming the field of each one left out
    schedules: tuple[Schedule, ...] = ()
    schedule_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetRef:
    api_version: str
    kind: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.split("/", 1)[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.split("/", 1)[-1]


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    handler: str
    concurrency: int = DEFAULT_WORKER_CONCURRENCY
    max_attempts: int = DEFAULT_WORKER_MAX_ATTEMPTS
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    pod_template: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ("tide", "worker")


@dataclass(frozen=True)
class QueueConsumerSpec:
    redis: RedisSpec
    source: Source
    scaling: Scaling
    target: TargetRef | None
    worker: WorkerSpec | None


def _secret_ref(obj: Any, what: str) -> SecretKeyRef | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping) or not obj.get("name") or not obj.get("key"):
        raise SpecError(f"{what} needs a Secret name and key")
    name = check_name(str(obj["name"]), f"{what}.name")
    return SecretKeyRef(name, check_secret_key(str(obj["key"]), f"{what}.key"))


def check_redis_url(url: str) -> None:
    """Refuse what the schema refuses (see the CRD): the messages never repeat the URL, which may hold a
    password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SpecError("spec.redis.url must start with redis:// or rediss://")
    if "@" in parts.netloc:
        raise SpecError(
            "spec.redis.url must not carry credentials: name a Secret in spec.redis.passwordSecretRef "
            "(and usernameSecretRef or username)"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or port == 0:
        raise SpecError("spec.redis.url needs a host and a port from 1 to 65535 (redis://host:6379/0)")


# One sentinel address, as the CRD's rule has it: a host name or [IPv6], then a port from 1 to 65535.
SENTINEL_ADDRESS = re.compile(
    r"^(?P<host>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|\[[0-9a-fA-F:.]+\]):(?P<port>[0-9]{1,5})$"
)


def parse_sentinel(obj: Any, tls: bool) -> tuple[SentinelSpec, str]:
    """``spec.redis.sentinel`` and the URL the operator and the workers connect with."""
    if not isinstance(obj, Mapping):
        raise SpecError("spec.redis.sentinel needs masterName and sentinels")
    name = obj.get("masterName")
    if not isinstance(name, str) or not name or re.search(r"[\s/]", name):
        raise SpecError(
            "spec.redis.sentinel.masterName must not be empty or contain spaces or '/' (the name in "
            "`sentinel monitor <name>`, e.g. mymaster)"
        )
    items = obj.get("sentinels")
    if not isinstance(items, list) or not items:
        raise SpecError("spec.redis.sentinel.sentinels needs at least one host:port")
    addresses: list[tuple[str, int]] = []
    for item in items:
        m = SENTINEL_ADDRESS.match(str(item))
        if not m or not 1 <= int(m["port"]) <= 65535:
            raise SpecError(
                "each of spec.redis.sentinel.sentinels is host:port with a port from 1 to 65535 "
                "(redis-sentinel.redis.svc:26379, [fd00::1]:26379)"
            )
        addresses.append((m["host"].strip("[]"), int(m["port"])))
    db = obj.get("db", 0)
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise SpecError("spec.redis.sentinel.db is a database number (0 or more)")
    spec = SentinelSpec(
        master_name=name,
        addresses=tuple(addresses),
        db=db,
        password_secret=_secret_ref(obj.get("passwordSecretRef"), "spec.redis.sentinel.passwordSecretRef"),
    )
    return spec, environment.sentinel_url(spec.addresses, spec.master_name, spec.db, tls)


def parse_redis(obj: Mapping[str, Any]) -> RedisSpec:
    tls = obj.get("tls") or {}
    if obj.get("sentinel") is not None:
        if obj.get("url") or obj.get("host"):
            raise SpecError(
                "set exactly one of spec.redis.url or spec.redis.host (with port) or spec.redis.sentinel "
                "(masterName and sentinels)"
            )
        if obj.get("cluster"):
            raise SpecError(
                "spec.redis.sentinel and spec.redis.cluster: true exclude each other (Sentinel serves one "
                "master, not a Redis Cluster)"
            )
        sentinel, through = parse_sentinel(obj["sentinel"], bool(tls.get("enabled")))
        return RedisSpec(
            url=through,
            username=obj.get("username"),
            username_secret=_secret_ref(obj.get("usernameSecretRef"), "spec.redis.usernameSecretRef"),
            password_secret=_secret_ref(obj.get("passwordSecretRef"), "spec.redis.passwordSecretRef"),
            ca_secret=_secret_ref(tls.get("caSecretRef"), "spec.redis.tls.caSecretRef"),
            tls_insecure=bool(tls.get("insecureSkipVerify", False)),
            sentinel=sentinel,
        )
    url = obj.get("url")
    if not url:
        host = obj.get("host")
        if not host:
            raise SpecError("spec.redis needs url, or host and port")
        scheme = "rediss" if tls.get("enabled") else "redis"
        url = f"{scheme}://{host}:{int(obj.get('port', 6379))}"
    elif tls.get("enabled") and str(url).startswith("redis://"):
        url = "rediss://" + str(url)[len("redis://") :]
    check_redis_url(str(url))
    return RedisSpec(
        url=str(url),
        cluster=bool(obj.get("cluster", False)),
        username=obj.get("username"),
        username_secret=_secret_ref(obj.get("usernameSecretRef"), "spec.redis.usernameSecretRef"),
        password_secret=_secret_ref(obj.get("passwordSecretRef"), "spec.redis.passwordSecretRef"),
        ca_secret=_secret_ref(tls.get("caSecretRef"), "spec.redis.tls.caSecretRef"),
        tls_insecure=bool(tls.get("insecureSkipVerify", False)),
    )


def parse_source(obj: Mapping[str, Any]) -> Source:
    lst, lists, stream = obj.get("list"), obj.get("lists"), obj.get("stream")
    if sum(x is not None for x in (lst, lists, stream)) != 1:
        raise SpecError("spec.source needs exactly one of list, lists or stream")
    if lists is not None:
        return _lists(lists, obj.get("listSide", "right"))
    if lst is not None:
        return Source("list", str(lst["key"]), side=lst.get("side", "right"))
    assert stream is not None
    if not stream.get("group"):
        raise SpecError("spec.source.stream needs a group")
    return Source("stream", str(stream["key"]), group=str(stream["group"]))


def _lists(items: Any, side: Any) -> Source:
    """spec.source.lists (the CRD's rules, checked again for an API server that skipped them)."""
    where = "spec.source.lists"
    if not isinstance(items, list) or not items:
        raise SpecError(f"{where} must be a list of one or more {{key, weight}}")
    out: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        key = item.get("key") if isinstance(item, Mapping) else None
        if not isinstance(key, str) or not key or "," in key:
            raise SpecError(f"{where}[{i}].key must be a non-empty string without a comma")
        weight = item.get("weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, int) or ("weight" in item and weight < 1):
            raise SpecError(f"{where}[{i}].weight must be an integer of at least 1")
        out.append((key, weight))
    if len({k for k, _ in out}) != len(out):
        raise SpecError(f"{where}: each key must appear once")
    weighted = [w > 0 for _, w in out]
    if any(weighted) and not all(weighted):
        raise SpecError(f"{where}: give every list a weight (by weight) or none (strict priority, in order)")
    if len(out) > 1 and not any(weighted) and any(_looks_weighted(k) for k, _ in out):
        # The worker would read "a:1,b:2" as weights: say so rather than consume the wrong queues.
        raise SpecError(
            f"{where}: a key ending in :<digits> reads as a weight to the worker; give every list a weight"
        )
    if side not in ("left", "right"):
        raise SpecError("spec.source.listSide must be left or right")
    return Source("list", out[0][0], side=side, lists=tuple(out))


def _looks_weighted(key: str) -> bool:
    name, sep, tail = key.rpartition(":")
    return bool(sep and name and tail.isdigit())


def _behavior(obj: Mapping[str, Any] | None, default: Behavior) -> Behavior:
    obj = obj or {}
    pods, pct = obj.get("maxStepPods"), obj.get("maxStepPercent")
    if pods is None and pct is None:
        pods, pct = default.max_step_pods, default.max_step_percent
    return Behavior(
        stabilization_seconds=float(obj.get("stabilizationSeconds", default.stabilization_seconds)),
        max_step_pods=None if pods is None else int(pods),
        max_step_percent=None if pct is None else float(pct),
        period_seconds=float(obj.get("periodSeconds", default.period_seconds)),
    )


def parse_scaling(obj: Mapping[str, Any]) -> Scaling:
    d = Scaling()
    fb = obj.get("fallback") or {}
    fb_replicas = fb.get("replicas")
    drain = obj.get("targetDrainSeconds")
    wait = obj.get("targetWaitSeconds")
    raw_schedules = obj.get("schedules") or ()
    if isinstance(raw_schedules, str | bytes | Mapping):
        raise SpecError("spec.scaling.schedules must be a list")
    schedules, schedule_errors = parse_schedules(raw_schedules)
    s = Scaling(
        min_replicas=int(obj.get("minReplicas", d.min_replicas)),
        max_replicas=int(obj.get("maxReplicas", d.max_replicas)),
        target_backlog_per_replica=int(obj.get("targetBacklogPerReplica", d.target_backlog_per_replica)),
        activation_backlog=int(obj.get("activationBacklog", d.activation_backlog)),
        target_drain_seconds=None if drain is None else float(drain),
        target_wait_seconds=None if wait is None else float(wait),
        polling_interval_seconds=float(obj.get("pollingIntervalSeconds", d.polling_interval_seconds)),
        cooldown_seconds=float(obj.get("cooldownSeconds", d.cooldown_seconds)),
        scale_up=_behavior(obj.get("scaleUp"), d.scale_up),
        scale_down=_behavior(obj.get("scaleDown"), d.scale_down),
        fallback=Fallback(
            failure_threshold=int(fb.get("failureThreshold", d.fallback.failure_threshold)),
            replicas=None if fb_replicas is None else int(fb_replicas),
        ),
        schedules=schedules,
        schedule_errors=schedule_errors,
    )
    if s.min_replicas < 0 or not 1 <= s.max_replicas <= MAX_REPLICAS or s.min_replicas > s.max_replicas:
        raise SpecError(
            f"spec.scaling: need 0 <= minReplicas <= maxReplicas and 1 <= maxReplicas <= {MAX_REPLICAS} "
            f"(got {s.min_replicas}, {s.max_replicas})"
        )
    if s.target_backlog_per_replica < 1:
        raise SpecError("spec.scaling.targetBacklogPerReplica must be at least 1")
    if s.target_wait_seconds is not None and not 0 < s.target_wait_seconds <= MAX_WAIT_SECONDS:
        raise SpecError(
            "spec.scaling.targetWaitSeconds is how long the oldest message may wait before the operator adds "
            f"replicas: more than 0 and at most {MAX_WAIT_SECONDS:g} (got {s.target_wait_seconds:g})"
        )
    if s.polling_interval_seconds <= 0:
        raise SpecError("spec.scaling.pollingIntervalSeconds must be positive")
    return s


def parse_worker(obj: Mapping[str, Any]) -> WorkerSpec:
    if not obj.get("image") or not obj.get("handler"):
        raise SpecError("spec.worker needs image and handler")
    return WorkerSpec(
        image=str(obj["image"]),
        handler=str(obj["handler"]),
        concurrency=int(obj.get("concurrency", DEFAULT_WORKER_CONCURRENCY)),
        max_attempts=int(obj.get("maxAttempts", DEFAULT_WORKER_MAX_ATTEMPTS)),
        env=tuple(dict(e) for e in obj.get("env") or ()),
        resources=dict(obj.get("resources") or {}),
        pod_template=dict(obj.get("podTemplate") or {}),
        command=tuple(obj.get("command") or ("tide", "worker")),
    )


def parse_target(obj: Mapping[str, Any]) -> TargetRef:
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    if not re.fullmatch(API_VERSION, api_version):
        raise SpecError(f"spec.scaleTargetRef.apiVersion {api_version!r} is not group/version or version")
    if len(kind) > MAX_KIND or not re.fullmatch(KIND_NAME, kind):
        raise SpecError(f"spec.scaleTargetRef.kind {kind!r} is not a kind name (CamelCase letters, digits)")
    return TargetRef(api_version, kind, check_name(str(obj.get("name", "")), "spec.scaleTargetRef.name"))


def parse_spec(spec: Mapping[str, Any]) -> QueueConsumerSpec:
    """Parse ``.spec`` of a QueueConsumer (a plain dict or kopf's Spec view)."""
    if "redis" not in spec or "source" not in spec:
        raise SpecError("spec needs redis and source")
    target_obj, worker_obj = spec.get("scaleTargetRef"), spec.get("worker")
    if (target_obj is None) == (worker_obj is None):
        raise SpecError("spec needs exactly one of scaleTargetRef or worker")
    target = None
    if target_obj is not None:
        target = parse_target(target_obj)
    return QueueConsumerSpec(
        redis=parse_redis(spec["redis"]),
        source=parse_source(spec["source"]),
        scaling=parse_scaling(spec.get("scaling") or {}),
        target=target,
        worker=None if worker_obj is None else parse_worker(worker_obj),
    )


def is_paused(annotations: Mapping[str, str] | None) -> bool:
    return str((annotations or {}).get(PAUSED_ANNOTATION, "")).strip().lower() == "true"
