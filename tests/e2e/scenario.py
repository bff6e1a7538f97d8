"""The end-to-end scenario, written once; a backend (local stack or kind) supplies the cluster.

Install the chart, create a QueueConsumer with a ``worker:`` section at zero replicas, push a burst of
messages (some fail transiently, some permanently), watch it scale up, drain and return to zero while
worker processes are SIGKILLed at random and the operator is restarted once; then check that every message
was processed or dead-lettered, none lost, the dead letters are exactly the permanent failures, and the
Deployment is at zero.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import redis
from tide_worker.connection import RedisSettings
from tide_worker.keys import QueueKeys
from tide_worker.ops import queue_stats
from tide_worker.producer import Producer
from tide_worker.records import DeadLetter

from tests.e2e import handlers

QC_NAME = "e2e"
DEPLOYMENT = f"{QC_NAME}-worker"


class Backend(Protocol):
    """What the scenario needs from a cluster."""

    name: str
    namespace: str
    redis_url: str  # as the scenario reaches Redis
    pod_redis_url: str  # as pods reach Redis
    worker_image: str

    def setup(self) -> None: ...
    def api_client(self) -> Any: ...
    def worker_env(self) -> dict[str, str]: ...
    def kill_random_worker(self, rng: random.Random) -> str | None: ...
    def restart_operator(self) -> None: ...
    def teardown(self) -> None: ...


@dataclass
class Config:
    messages: int = 50_000
    transient_every: int = 97  # message i with i % 97 == 0 fails once
    permanent_every: int = 499  # message i with i % 499 == 0 always fails
    waves: int = 1
    wave_gap_seconds: float = 5.0
    max_replicas: int = 6
    target_backlog_per_replica: int = 2000
    cooldown_seconds: int = 5
    kills: int = 4
    kill_every_seconds: float = 3.0
    restart_operator: bool = True
    timeout_seconds: float = 600.0
    batch_size: int = 50
    concurrency: int = 4
    work_seconds: float = (
        0.0  # each successful message sleeps this long, like an I/O-bound job (a webhook call)
    )
    scale_down: dict[str, Any] | None = None  # spec.scaling.scaleDown; None keeps the operator's defaults

    def kind_of(self, i: int) -> str:
        if i % self.permanent_every == 0:
            return "permanent"
        if i % self.transient_every == 0:
            return "transient"
        return "ok"


@dataclass
class Sample:
    t: float
    backlog: int
    desired: int
    ready: int
    processed: int
    rate: float


@dataclass
class Outcome:
    backend: str
    sent: int = 0
    processed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected_dead: list[int] = field(default_factory=list)
    missing_dead: list[int] = field(default_factory=list)
    peak_replicas: int = 0
    seconds_to_first_scale_up: float | None = None
    seconds_back_to_zero: float | None = None
    final_replicas: int | None = None
    kills: list[str] = field(default_factory=list)
    operator_restarts: int = 0
    timeline: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("timeline")
        return d

    def to_json(self) -> str:
        return json.dumps({**self.summary(), "timeline": [asdict(s) for s in self.timeline]}, indent=2)


def queue_consumer(backend: Backend, cfg: Config, queue: str) -> dict[str, Any]:
    env = {"TIDE_BATCH_SIZE": str(cfg.batch_size), "TIDE_BACKOFF_BASE": "0.2", "TIDE_BACKOFF_CAP": "1",
           "TIDE_HEARTBEAT_TTL": "5", "TIDE_REAPER_INTERVAL": "1", "TIDE_SHUTDOWN_GRACE": "10",
           "E2E_WORK_SECONDS": str(cfg.work_seconds), **backend.worker_env()}  # fmt: skip
    scaling: dict[str, Any] = {
        "minReplicas": 0,
        "maxReplicas": cfg.max_replicas,
        "targetBacklogPerReplica": cfg.target_backlog_per_replica,
        "cooldownSeconds": cfg.cooldown_seconds,
        "pollingIntervalSeconds": 1,
    }
    if cfg.scale_down is not None:
        scaling["scaleDown"] = cfg.scale_down
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "QueueConsumer",
        "metadata": {"name": QC_NAME},
        "spec": {
            "redis": {"url": backend.pod_redis_url},
            "source": {"list": {"key": queue}},
            "scaling": scaling,
            "worker": {
                "image": backend.worker_image,
                "handler": "tests.e2e.handlers:handle",
                "concurrency": cfg.concurrency,
                "maxAttempts": 3,
                "env": [{"name": k, "value": v} for k, v in env.items()],
            },
        },
    }


def unfinished(r: redis.Redis, queue: str) -> int:
    """Messages not yet processed or dead-lettered: ready, in flight (orphaned processing lists included) and
    every retry, due or not. ``tide stats`` computes the parts; the scenario is done when this reaches 0."""
    stats = queue_stats(r, queue)
    return int(stats["ready"]) + int(stats["in_flight"]) + int(stats["delayed"])


def run(
    backend: Backend, cfg: Config | None = None, on_sample: Callable[[Sample], None] | None = None
) -> Outcome:
    """Run the scenario on a backend that is already set up; returns what happened (checks are the caller's)."""
    from kubernetes import client

    cfg = cfg or Config()
    rng = random.Random(1234)
    queue = "e2e:jobs"
    keys = QueueKeys(queue)
    out = Outcome(backend=backend.name)
    api = backend.api_client()
    apps = client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    r = redis.Redis.from_url(backend.redis_url)
    for key in (keys.ready, keys.delayed, keys.dead, handlers.PROCESSED, handlers.RUNS, handlers.COUNT):
        r.delete(key)

    custom.create_namespaced_custom_object(
        "tide.dev", "v1alpha1", backend.namespace, "queueconsumers", queue_consumer(backend, cfg, queue)
    )
    deadline = time.monotonic() + 60
    while True:  # the operator creates the Deployment at zero replicas
        try:
            if int(apps.read_namespaced_deployment(DEPLOYMENT, backend.namespace).spec.replicas or 0) == 0:
                break
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the operator did not create the worker Deployment at zero replicas")
        time.sleep(0.2)

    producer = Producer(settings=RedisSettings(url=backend.redis_url))
    per_wave = -(-cfg.messages // cfg.waves)
    start = time.monotonic()
    sent = 0
    next_wave = start
    kills_done = 0
    next_kill: float | None = None
    restarted = False
    last_count, last_t = 0, start
    while True:
        now = time.monotonic()
        if sent < cfg.messages and now >= next_wave:
            batch = range(sent, min(cfg.messages, sent + per_wave))
            producer.enqueue_many(queue, [{"i": i, "kind": cfg.kind_of(i)} for i in batch])
            sent = batch.stop
            next_wave = now + cfg.wave_gap_seconds
            now = time.monotonic()  # a wave takes a while to push: sample at the time of the reads below
        dep = apps.read_namespaced_deployment(DEPLOYMENT, backend.namespace)
        desired = int(dep.spec.replicas or 0)
        ready = int(dep.status.ready_replicas or 0)
        count = int(r.get(handlers.COUNT) or 0)
        rate = (count - last_count) / max(now - last_t, 1e-3)
        last_count, last_t = count, now
        sample = Sample(round(now - start, 2), unfinished(r, queue), desired, ready, count, round(rate, 1))
        out.timeline.append(sample)
        if on_sample:
            on_sample(sample)
        out.peak_replicas = max(out.peak_replicas, desired)
        if desired > 0 and out.seconds_to_first_scale_up is None:
            out.seconds_to_first_scale_up = sample.t
            next_kill = now + cfg.kill_every_seconds
        # chaos while it drains: SIGKILL workers, restart the operator once
        if next_kill is not None and now >= next_kill and kills_done < cfg.kills and ready > 0:
            killed = backend.kill_random_worker(rng)
            if killed:
                out.kills.append(killed)
                kills_done += 1
            next_kill = now + cfg.kill_every_seconds
        # after the first kill, while there is work left: a fast drain (kind) must not outrun the restart
        if cfg.restart_operator and not restarted and kills_done >= 1 and sample.backlog > 0:
            backend.restart_operator()
            out.operator_restarts += 1
            restarted = True
        done = sent == cfg.messages and sample.backlog == 0 and out.seconds_to_first_scale_up is not None
        if done and desired == 0 and ready == 0:
            out.seconds_back_to_zero = sample.t
            break
        if now - start > cfg.timeout_seconds:
            break
        time.sleep(0.5)

    out.sent = sent
    out.final_replicas = int(
        apps.read_namespaced_deployment(DEPLOYMENT, backend.namespace).spec.replicas or 0
    )
    processed = {int(x) for x in r.smembers(handlers.PROCESSED)}
    dead: set[int] = set()
    for raw in r.lrange(keys.dead, 0, -1):
        letter = DeadLetter.decode(raw)
        dead.add(int(json.loads(letter.raw)["body"]["i"]))
    permanent = {i for i in range(sent) if cfg.kind_of(i) == "permanent"}
    out.processed = len(processed)
    out.dead_lettered = len(dead)
    out.lost = len(set(range(sent)) - processed - dead)
    out.duplicates = sum(1 for v in r.hvals(handlers.RUNS) if int(v) > 1)
    out.unexpected_dead = sorted(dead - permanent)[:20]
    out.missing_dead = sorted(permanent - dead)[:20]
    r.close()
    api.close()
    return out


def check(out: Outcome, chaos: bool = True, operator_restart: bool = True) -> None:
    """The scenario's promises, as assertions."""
    assert out.sent > 0
    assert out.lost == 0, f"{out.lost} messages lost"
    assert not out.unexpected_dead, f"dead-lettered but not permanent failures: {out.unexpected_dead}"
    assert not out.missing_dead, f"permanent failures not dead-lettered: {out.missing_dead}"
    assert out.processed + out.dead_lettered == out.sent
    assert out.seconds_to_first_scale_up is not None, "never scaled up"
    assert out.peak_replicas > 1, "a burst this size should need more than one worker"
    assert out.seconds_back_to_zero is not None and out.final_replicas == 0, "did not return to zero"
    if chaos:
        assert out.kills, "no worker was killed: the chaos did not happen"
        if operator_restart:
            assert out.operator_restarts == 1, "the operator was not restarted while work was left"
