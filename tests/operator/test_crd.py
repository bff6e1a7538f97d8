"""The QueueConsumer CRD: its defaults agree with spec.py, and the API server rejects what is wrong with a
message that says what to fix."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
import yaml
from tide_operator.spec import Scaling, parse_spec

from tests.operator.conftest import CRDS

VALID: dict[str, Any] = {
    "apiVersion": "tide.dev/v1alpha1",
    "kind": "QueueConsumer",
    "metadata": {"name": "qc"},
    "spec": {
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "source": {"list": {"key": "jobs"}},
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
    },
}


def _schema() -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / "queueconsumer.yaml").read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crd_defaults_match_spec_defaults():
    props = _schema()["properties"]["spec"]["properties"]["scaling"]["properties"]
    d = Scaling()
    assert props["minReplicas"]["default"] == d.min_replicas
    assert props["maxReplicas"]["default"] == d.max_replicas
    assert props["targetBacklogPerReplica"]["default"] == d.target_backlog_per_replica
    assert props["activationBacklog"]["default"] == d.activation_backlog
    assert props["pollingIntervalSeconds"]["default"] == d.polling_interval_seconds
    assert props["cooldownSeconds"]["default"] == d.cooldown_seconds
    assert props["fallback"]["properties"]["failureThreshold"]["default"] == d.fallback.failure_threshold


def _apply(cluster: Any, namespace: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, "create", "-f", "-"],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
    )


def _with(path: str, value: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    value = _no_none(value)
    obj = copy.deepcopy(VALID)
    spec = obj["spec"]
    for key in drop:
        spec.pop(key)
    node = spec
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return obj


SCHEDULE: dict[str, Any] = {
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Berlin",
    "durationSeconds": 3600,
    "minReplicas": 2,
}


def _no_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_none(v) for v in value]
    return value


INVALID = [
    ("min-above-max", _with("scaling", {"minReplicas": 5, "maxReplicas": 2}), "minReplicas must not exceed"),
    (
        "list-and-stream",
        _with("source", {"list": {"key": "a"}, "stream": {"key": "s", "group": "g"}}),
        "exactly one of list: {key}, lists: [{key, weight}] or stream",
    ),
    ("neither-list-nor-stream", _with("source", {}), "exactly one of list: {key}, lists"),
    (
        "list-and-lists",
        _with("source", {"list": {"key": "a"}, "lists": [{"key": "b"}]}),
        "exactly one of list: {key}, lists",
    ),
    ("lists-empty", _with("source", {"lists": []}), "should have at least 1 items"),
    (
        "lists-duplicate-key",
        _with("source", {"lists": [{"key": "a"}, {"key": "a"}]}),
        "spec.source.lists: each key must appear once",
    ),
    (
        "lists-some-weights",
        _with("source", {"lists": [{"key": "a", "weight": 2}, {"key": "b"}]}),
        "give every list a weight (by weight) or none",
    ),
    (
        "lists-zero-weight",
        _with("source", {"lists": [{"key": "a", "weight": 0}, {"key": "b", "weight": 1}]}),
        "weight in body should be greater than or equal to 1",
    ),
    (
        "lists-comma-key",
        _with("source", {"lists": [{"key": "a,b"}, {"key": "c"}]}),
        "key in body should match",
    ),
    (
        "target-and-worker",
        _with("worker", {"image": "tide:1", "handler": "app:handle"}),
        "exactly one of spec.scaleTargetRef",
    ),
    (
        "neither-target-nor-worker",
        _with("source", {"list": {"key": "a"}}, drop=("scaleTargetRef",)),
        "exactly one",
    ),
    (
        "negative-min",
        _with("scaling", {"minReplicas": -1}),
        "minReplicas in body should be greater than or equal to 0",
    ),
    (
        "negative-cooldown",
        _with("scaling", {"cooldownSeconds": -5}),
        "cooldownSeconds in body should be greater",
    ),
    (
        "zero-target",
        _with("scaling", {"targetBacklogPerReplica": 0}),
        "targetBacklogPerReplica in body should be",
    ),
    ("unknown-field", _with("scaling", {"replicas": 3}), 'unknown field "spec.scaling.replicas"'),
    ("unknown-top-field", _with("queue", "jobs"), 'unknown field "spec.queue"'),
    ("stream-without-group", _with("source", {"stream": {"key": "s"}}), "spec.source.stream.group: Required"),
    ("url-and-host", _with("redis", {"url": "redis://a:1", "host": "b"}), "exactly one of spec.redis.url or"),
    ("bad-scheme", _with("redis", {"url": "http://a:1"}), "must start with redis:// or rediss://"),
    *(
        (f"sentinel-{i}", _with("redis", redis), message)
        for i, redis, message in [
            (
                "and-url",
                {"url": "redis://a:1", "sentinel": {"masterName": "m", "sentinels": ["s:26379"]}},
                "or spec.redis.sentinel (masterName and sentinels)",
            ),
            (
                "and-cluster",
                {"cluster": True, "sentinel": {"masterName": "m", "sentinels": ["s:26379"]}},
                "spec.redis.sentinel and spec.redis.cluster: true exclude each other",
            ),
            ("no-port", {"sentinel": {"masterName": "m", "sentinels": ["s"]}}, "is host:port with a port"),
            ("port-0", {"sentinel": {"masterName": "m", "sentinels": ["s:0"]}}, "is host:port with a port"),
            (
                "port-big",
                {"sentinel": {"masterName": "m", "sentinels": ["s:65536"]}},
                "is host:port with a port",
            ),
            (
                "no-sentinels",
                {"sentinel": {"masterName": "m", "sentinels": []}},
                "sentinels in body should have at least 1",
            ),
            ("no-name", {"sentinel": {"sentinels": ["s:1"]}}, "spec.redis.sentinel.masterName: Required"),
            (
                "slash",
                {"sentinel": {"masterName": "a/b", "sentinels": ["s:1"]}},
                "masterName must not contain",
            ),
            (
                "secret",
                {"sentinel": {"masterName": "m", "sentinels": ["s:1"], "passwordSecretRef": {"name": "x"}}},
                "spec.redis.sentinel.passwordSecretRef.key: Required",
            ),
        ]
    ),
    (
        "fallback-above-max",
        _with("scaling", {"maxReplicas": 3, "fallback": {"replicas": 4}}),
        "fallback.replicas must",
    ),
    (
        "fallback-zero",
        _with("scaling", {"fallback": {"replicas": 0}}),
        "fallback.replicas in body should be greater",
    ),
    (
        "bad-handler",
        _with("worker", {"image": "i", "handler": "nocolon"}, drop=("scaleTargetRef",)),
        "handler",
    ),
    (
        "bad-side",
        _with("source", {"list": {"key": "a", "side": "middle"}}),
        'supported values: "left", "right"',
    ),
    ("zero-step", _with("scaling", {"scaleUp": {"maxStepPods": 0}}), "maxStepPods must be at least 1"),
    ("zero-wait", _with("scaling", {"targetWaitSeconds": 0}), "targetWaitSeconds is how long the oldest"),
    ("negative-wait", _with("scaling", {"targetWaitSeconds": -1.5}), "more than 0 and at most 86400"),
    ("wait-over-a-day", _with("scaling", {"targetWaitSeconds": 86401}), "more than 0 and at most 86400"),
    *(
        (f"schedule-{i}", _with("scaling", {"schedules": [{**SCHEDULE, **change}]}), message)
        for i, change, message in [
            ("four-fields", {"cron": "0 9 * *"}, "spec.scaling.schedules[0].cron in body should match"),
            ("names", {"cron": "0 9 * * MON"}, "spec.scaling.schedules[0].cron in body should match"),
            ("macro", {"cron": "@daily"}, "spec.scaling.schedules[0].cron in body should match"),
            ("zone-shape", {"timezone": "../etc"}, "spec.scaling.schedules[0].timezone in body should match"),
            (
                "zero-duration",
                {"durationSeconds": 0},
                "durationSeconds in body should be greater than or equal to 1",
            ),
            ("long-duration", {"durationSeconds": 2678401}, "durationSeconds in body should be less than"),
            (
                "min-above-max",
                {"minReplicas": 3, "maxReplicas": 2},
                "minReplicas must not exceed its maxReplicas",
            ),
            ("zero-cap", {"maxReplicas": 0}, "maxReplicas in body should be greater than or equal to 1"),
            ("no-bound", {"minReplicas": None}, "needs minReplicas, maxReplicas or both"),
        ]
    ),
]


@pytest.mark.cluster
@pytest.mark.parametrize(("obj", "message"), [pytest.param(o, m, id=i) for i, o, m in INVALID])
def test_invalid_rejected_with_message(crds, namespace, obj, message):
    result = _apply(crds, namespace, obj)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


@pytest.mark.cluster
def test_valid_accepted_and_defaulted(crds, namespace):
    result = _apply(crds, namespace, VALID)
    assert result.returncode == 0, result.stderr
    got = crds.run_kubectl("-n", namespace, "get", "qc", "qc", "-o", "json")
    spec = json.loads(got.stdout)["spec"]
    assert spec["scaling"]["pollingIntervalSeconds"] == 1
    assert spec["source"]["list"]["side"] == "right"
    assert parse_spec(spec).scaling == Scaling()
    with_schedule = _with("scaling", {"schedules": [{k: v for k, v in SCHEDULE.items() if k != "timezone"}]})
    with_schedule["metadata"]["name"] = "qc-scheduled"
    result = _apply(crds, namespace, with_schedule)
    assert result.returncode == 0, result.stderr
    got = crds.run_kubectl("-n", namespace, "get", "qc", "qc-scheduled", "-o", "json")
    (window,) = parse_spec(json.loads(got.stdout)["spec"]).scaling.schedules
    assert (window.timezone, window.min_replicas, window.max_replicas) == ("UTC", 2, None)
    columns = crds.run_kubectl("-n", namespace, "get", "qc").stdout.split("\n")[0].split()
    assert columns == ["NAME", "QUEUE", "BACKLOG", "REPLICAS", "DESIRED", "OLDEST", "AGE"]


@pytest.mark.cluster
def test_lists_accepted_and_parsed(crds, namespace):
    obj = _with("source", {"lists": [{"key": "high", "weight": 3}, {"key": "low", "weight": 1}]})
    obj["metadata"]["name"] = "qc-lists"
    result = _apply(crds, namespace, obj)
    assert result.returncode == 0, result.stderr
    got = crds.run_kubectl("-n", namespace, "get", "qc", "qc-lists", "-o", "json")
    source = parse_spec(json.loads(got.stdout)["spec"]).source
    assert source.lists == (("high", 3), ("low", 1)) and source.side == "right"
    assert source.label == "high,low"


@pytest.mark.cluster
def test_sentinel_accepted_and_parsed(crds, namespace):
    sentinel = {"masterName": "mymaster", "sentinels": ["sentinel.redis.svc:26379", "[fd00::1]:26379"]}
    obj = _with("redis", {"sentinel": sentinel, "tls": {"enabled": True}})
    obj["metadata"]["name"] = "qc-sentinel"
    result = _apply(crds, namespace, obj)
    assert result.returncode == 0, result.stderr
    got = crds.run_kubectl("-n", namespace, "get", "qc", "qc-sentinel", "-o", "json")
    redis = parse_spec(json.loads(got.stdout)["spec"]).redis
    assert redis.url == "rediss+sentinel://sentinel.redis.svc:26379,[fd00::1]:26379/mymaster/0"
    assert redis.sentinel is not None and redis.sentinel.db == 0 and not redis.cluster
