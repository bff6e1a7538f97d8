from __future__ import annotations

import pytest
from tide_operator.spec import (
    Behavior,
    Scaling,
    SecretKeyRef,
    SpecError,
    is_paused,
    parse_spec,
)

BASE = {
    "redis": {"url": "redis://r:6379/0"},
    "source": {"list": {"key": "jobs"}},
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
}


def test_defaults():
    s = parse_spec(BASE)
    assert s.scaling == Scaling()
    assert s.scaling.polling_interval_seconds == 1.0
    assert s.scaling.scale_up == Behavior(0.0, None, None, 1.0)
    assert s.scaling.scale_down.max_step_percent == 50.0
    assert s.source.kind == "list" and s.source.key == "jobs" and s.source.side == "right"
    assert s.target is not None and (s.target.group, s.target.version) == ("apps", "v1")
    assert s.worker is None


def test_full_spec():
    s = parse_spec(
        {
            "redis": {
                "host": "redis.ns",
                "port": 6380,
                "cluster": True,
                "passwordSecretRef": {"name": "redis", "key": "password"},
                "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"}},
            },
            "source": {"stream": {"key": "events", "group": "g"}},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 20,
                "targetBacklogPerReplica": 100,
                "targetDrainSeconds": 30,
                "targetWaitSeconds": 2.5,
                "pollingIntervalSeconds": 0.5,
                "scaleDown": {"maxStepPods": 2},
                "fallback": {"failureThreshold": 5, "replicas": 3},
            },
            "worker": {"image": "tide:1", "handler": "app:handle", "concurrency": 8},
        }
    )
    assert s.redis.url == "rediss://redis.ns:6380" and s.redis.tls and s.redis.cluster
    assert s.redis.password_secret == SecretKeyRef("redis", "password")
    assert s.redis.ca_secret == SecretKeyRef("redis-ca", "ca.crt")
    assert s.source.label == "events/g"
    # a behaviour that names one limit drops the default's other limit
    assert s.scaling.scale_down.max_step_pods == 2 and s.scaling.scale_down.max_step_percent is None
    assert s.scaling.fallback.replicas == 3 and s.scaling.target_drain_seconds == 30
    assert s.scaling.target_wait_seconds == 2.5
    assert s.worker is not None and s.worker.concurrency == 8 and s.target is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"source": {}}, "exactly one of list, lists or stream"),
        ({"source": {"list": {"key": "a"}, "stream": {"key": "b", "group": "g"}}}, "exactly one"),
        ({"worker": {"image": "i", "handler": "h"}}, "exactly one of scaleTargetRef or worker"),
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas <= maxReplicas"),
        ({"scaling": {"targetBacklogPerReplica": 0}}, "at least 1"),
        ({"scaling": {"targetWaitSeconds": 0}}, "targetWaitSeconds .* more than 0 and at most 86400"),
        ({"scaling": {"targetWaitSeconds": 1e6}}, r"at most 86400 \(got 1e\+06\)"),
        ({"redis": {}}, "url, or host"),
    ],
)
def test_errors(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **patch})


def test_paused():
    assert is_paused({"tide.dev/paused": "true"})
    assert is_paused({"tide.dev/paused": "True"})
    assert not is_paused({"tide.dev/paused": "false"})
    assert not is_paused(None)


def test_source_lists_parse_in_order_with_weights_or_none():
    s = parse_spec({**BASE, "source": {"lists": [{"key": "high"}, {"key": "queue:low"}]}})
    assert s.source.lists == (("high", 0), ("queue:low", 0)) and s.source.key == "high"
    assert s.source.keys == ("high", "queue:low") and s.source.label == "high,queue:low"
    s = parse_spec(
        {
            **BASE,
            "source": {"lists": [{"key": "a", "weight": 3}, {"key": "b", "weight": 1}], "listSide": "left"},
        }
    )
    assert s.source.lists == (("a", 3), ("b", 1)) and s.source.side == "left"


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ([], "one or more"),
        ([{"key": "a"}, {"key": "a"}], "each key must appear once"),
        ([{"key": "a", "weight": 2}, {"key": "b"}], "every list a weight"),
        ([{"key": "a", "weight": 0}, {"key": "b", "weight": 1}], "weight must be an integer of at least 1"),
        ([{"key": "a,b"}], "without a comma"),
        ([{"key": "jobs:2024"}, {"key": "low"}], "reads as a weight"),
    ],
)
def test_source_lists_errors(lists, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, "source": {"lists": lists}})


SENTINEL_REDIS = {
    "sentinel": {
        "masterName": "mymaster",
        "sentinels": ["sentinel-0.redis:26379", "10.0.0.7:26380", "[fd00::1]:5000"],
        "db": 2,
        "passwordSecretRef": {"name": "sentinel", "key": "password"},
    },
    "passwordSecretRef": {"name": "redis", "key": "password"},
}


def test_sentinel_gives_a_sentinel_url_the_worker_reads_back():
    from tide_worker.connection import parse_sentinel_url

    r = parse_spec({**BASE, "redis": SENTINEL_REDIS}).redis
    assert r.sentinel is not None and r.sentinel.master_name == "mymaster"
    assert r.sentinel.password_secret == SecretKeyRef("sentinel", "password")
    assert r.password_secret == SecretKeyRef("redis", "password")
    assert r.url == "redis+sentinel://sentinel-0.redis:26379,10.0.0.7:26380,[fd00::1]:5000/mymaster/2"
    assert not r.tls and not r.cluster
    parsed = parse_sentinel_url(r.url)
    assert parsed.addresses == [("sentinel-0.redis", 26379), ("10.0.0.7", 26380), ("fd00::1", 5000)]
    assert (parsed.master_name, parsed.db, parsed.password) == ("mymaster", 2, None)
    tls = parse_spec({**BASE, "redis": {**SENTINEL_REDIS, "tls": {"enabled": True}}}).redis
    assert tls.url.startswith("rediss+sentinel://") and tls.tls


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({**SENTINEL_REDIS, "url": "redis://r:1"}, "exactly one of spec.redis.url or spec.redis.host"),
        ({**SENTINEL_REDIS, "cluster": True}, "exclude each other"),
        ({"sentinel": {"masterName": "a b", "sentinels": ["s:1"]}}, "masterName must not"),
        ({"sentinel": {"masterName": "m", "sentinels": []}}, "at least one host:port"),
        ({"sentinel": {"masterName": "m", "sentinels": ["s"]}}, "is host:port with a port from 1"),
        ({"sentinel": {"masterName": "m", "sentinels": ["s:70000"]}}, "is host:port with a port from 1"),
        ({"sentinel": {"masterName": "m", "sentinels": ["s:0"]}}, "is host:port with a port from 1"),
        ({"sentinel": {"masterName": "m", "sentinels": ["s:1"], "db": -1}}, "database number"),
        (
            {"sentinel": {"masterName": "m", "sentinels": ["s:1"], "passwordSecretRef": {"name": "x"}}},
            "spec.redis.sentinel.passwordSecretRef needs a Secret name and key",
        ),
    ],
)
def test_bad_sentinel_specs_say_what_to_fix(redis, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, "redis": redis})
