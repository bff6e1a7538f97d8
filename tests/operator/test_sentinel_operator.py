"""The operator through Redis Sentinel (spec.redis.sentinel), on the local control plane and real servers: a
master, replicas and three sentinels, the data servers and the sentinels password-protected with the
passwords in Secrets.

A QueueConsumer with ``spec.worker`` scales its owned Deployment from a list the sentinels serve; the node
agent runs the pods as ``tide worker`` processes, which connect through the same sentinels. The master is
SIGKILLed mid-backlog: the operator's reads fail for the seconds of the failover (RedisReachable=False
and a RedisUnreachable event, one line), the replicas are held, never dropped to zero, the readings
resume on the promoted replica and the workers carry on there. A wrong master name, unreachable
sentinels and a refused sentinel password each give a condition and an event naming the cause, and hold
the replicas. With TLS (tls.enabled, the CA from a Secret) the operator reads through TLS-only sentinels.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tide_local.redisproc import RedisSentinelSet, free_port
from tide_worker.keys import QueueKeys

from tests.conftest import SENTINEL_DATA_PASSWORD, SENTINEL_PASSWORD
from tests.operator.operator_harness import Api, deployment, get_deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]


def _redis(s: RedisSentinelSet, master_name: str | None = None, sentinels: list[str] | None = None) -> dict:
    return {
        "sentinel": {
            "masterName": master_name or s.master_name,
            "sentinels": sentinels or [f"{h}:{p}" for h, p in s.addresses],
            "passwordSecretRef": {"name": "sentinel", "key": "password"},
        },
        "passwordSecretRef": {"name": "redis", "key": "password"},
    }


def _secrets(api: Api, sentinel_password: str = SENTINEL_PASSWORD) -> None:
    api.create_secret("redis", {"password": SENTINEL_DATA_PASSWORD})
    api.create_secret("sentinel", {"password": sentinel_password})


@contextlib.contextmanager
def _explained(op: Any, api: Api, *names: str) -> Iterator[None]:
    try:
        yield
    except AssertionError:
        print(op.log()[-6000:])
        for name in names:
            print(name, json.dumps(api.get_qc(name).get("status"), indent=1))
        raise


def _replicas(api: Api, name: str) -> int | None:
    dep = get_deployment(api, name)
    return None if dep is None else int(dep.spec.replicas or 0)


@pytest.mark.slow
def test_scales_from_a_sentinel_served_list_and_holds_through_a_failover(
    crds, namespace, k8s, sa_kubeconfig, node_agent, tmp_path
):
    with RedisSentinelSet(password=SENTINEL_DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as s:
        api = Api(k8s, namespace)
        _secrets(api)
        worker = {
            "image": "tide-worker:dev",
            "handler": "tests.operator.slow_handler:paced",  # 0.1 s a message: 10/s a pod
            "env": [{"name": "TIDE_METRICS_PORT", "value": "0"}],
        }
        scaling = {"targetBacklogPerReplica": 20, "maxReplicas": 3, "cooldownSeconds": 5}
        body = qc("sq", "unused", {"list": {"key": "sj"}}, scaling, worker=worker)
        body["spec"]["redis"] = _redis(s)
        api.create_qc(body)
        with s.master().client() as c:
            c.lpush("sj", *[json.dumps({"n": i}) for i in range(1500)])
        stats = QueueKeys("sj").stats
        with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api, "sq"):
            wait_for(
                "3 replicas from the Sentinel-served list",
                lambda: _replicas(api, "sq-worker") == 3,
                timeout=60,
            )
            env = {e.name: e for e in get_deployment(api, "sq-worker").spec.template.spec.containers[0].env}
            assert env["TIDE_REDIS_URL"].value == s.url().replace(f":{SENTINEL_DATA_PASSWORD}@", "")
            assert env["TIDE_REDIS_SENTINEL_PASSWORD"].value_from.secret_key_ref.name == "sentinel"
            assert env["TIDE_REDIS_PASSWORD"].value_from.secret_key_ref.name == "redis"
            node_agent("tide.dev/queueconsumer=sq")  # the pods, as `tide worker` processes

            def processed() -> int:
                with s.master().client() as c:
                    return int(c.hget(stats, "processed") or 0)

            wait_for("the workers consume through the sentinels", lambda: processed() >= 30, timeout=60)
            assert api.condition("sq", "RedisReachable") == "True"

            old = s.kill_master()
            killed_at = time.monotonic()
            seen_replicas: set[int] = set()
            went_false = came_back = None
            deadline = killed_at + 90
            while time.monotonic() < deadline:
                seen_replicas.add(api.replicas("sq-worker"))
                reachable = api.condition("sq", "RedisReachable")
                if reachable == "False" and went_false is None:
                    went_false = time.monotonic() - killed_at
                    gap_message = str(api.conditions("sq")["RedisReachable"]["message"])
                if reachable == "True" and went_false is not None:
                    came_back = time.monotonic() - killed_at
                    break
                time.sleep(0.1)
            print(f"\nfailover: RedisReachable False after {went_false}s, True again after {came_back}s; "
                  f"replicas seen {sorted(seen_replicas)}; message {gap_message!r}")  # fmt: skip
            assert went_false is not None, "the failover gap never showed in RedisReachable"
            assert came_back is not None, "the readings did not resume after the failover"
            assert seen_replicas == {3}, f"replicas moved during the failover: {sorted(seen_replicas)}"
            new = s.master()
            assert new.port != old.port
            warnings = api.events("RedisUnreachable", kind="Warning", about="sq")
            assert warnings and all("\n" not in m and "<redis." not in m for m in warnings), warnings
            assert any("holding replicas" in m for m in warnings), warnings
            wait_for("a readable-again event", lambda: api.events("RedisReachable", about="sq"), timeout=20)

            # the readings come from the new master: what it holds shows in the status
            before = processed()
            wait_for("the workers carry on on the new master", lambda: processed() >= before + 20, timeout=60)
            with new.client() as c:
                c.delete("sj")
                c.lpush("sj", *[json.dumps({"n": i}) for i in range(7)])

            def ready() -> int | None:
                return (api.get_qc("sq").get("status") or {}).get("backlog", {}).get("ready")

            wait_for(
                "the status reads the new master", lambda: ready() is not None and ready() <= 7, timeout=30
            )
            assert op.proc.poll() is None


def test_bad_sentinel_settings_give_a_condition_and_an_event_and_hold_the_replicas(
    crds, namespace, k8s, sa_kubeconfig, redis_sentinel, tmp_path
):
    """A wrong master name, no sentinel listening, a refused sentinel password: each a condition and one
    warning line that says so; the target's 2 replicas stay (no scale to zero on a failed read)."""
    s = redis_sentinel
    api = Api(k8s, namespace)
    _secrets(api)
    api.create_secret("wrong", {"password": "not-the-sentinel-password"})
    scaling = {"minReplicas": 0, "cooldownSeconds": 1, "scaleDown": {"stabilizationSeconds": 0}}
    cases = {
        "name": (_redis(s, master_name="nosuchmaster"), "No master found for 'nosuchmaster'"),
        "down": (_redis(s, sentinels=[f"127.0.0.1:{free_port()}"]), "Error 111 connecting"),
        "pass": (
            {**_redis(s), "sentinel": {**_redis(s)["sentinel"], "passwordSecretRef": {"name": "wrong", "key": "password"}}},
            "invalid username-password pair",
        ),
    }  # fmt: skip
    for name, (redis_spec, _) in cases.items():
        dep = deployment(f"w-{name}", {})
        dep["spec"]["replicas"] = 2
        api.create_deployment(dep)
        body = qc(name, "unused", {"list": {"key": "bq"}}, scaling, target=f"w-{name}")
        body["spec"]["redis"] = redis_spec
        api.create_qc(body)
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api, *cases):
        for name, (_, cause) in cases.items():
            cond = wait_for(
                f"{name}: RedisReachable=False",
                lambda n=name: (
                    (c := api.conditions(n).get("RedisReachable")) and c["status"] == "False" and c
                ),
                timeout=60,
            )
            message = str(cond["message"])
            assert "Sentinel gave no master" in message and cause in message, message
            assert "check spec.redis.sentinel" in message and "<redis." not in message, message
            events = wait_for(
                f"{name}: a RedisUnreachable event",
                lambda n=name: api.events("RedisUnreachable", kind="Warning", about=n),
                timeout=20,
            )
            assert all("\n" not in m and cause in m for m in events), events
            assert SENTINEL_PASSWORD not in message and SENTINEL_DATA_PASSWORD not in message
        time.sleep(3)  # several failed polls
        for name in cases:
            assert api.replicas(f"w-{name}") == 2, name
        assert op.proc.poll() is None


def test_sentinel_over_tls_with_the_ca_from_a_secret(
    crds, namespace, k8s, sa_kubeconfig, redis_sentinel_tls, tls_files, tmp_path
):
    """spec.redis.sentinel with tls.enabled and tls.caSecretRef: the operator reads the CA from the Secret
    and reaches TLS-only sentinels and master with it (rediss+sentinel://)."""
    from pathlib import Path

    s = redis_sentinel_tls
    api = Api(k8s, namespace)
    _secrets(api)
    api.create_secret("redis-ca", {"ca.crt": Path(tls_files.ca_cert).read_text()})
    api.create_deployment(deployment("w", {}))
    body = qc("tq", "unused", {"list": {"key": "tq"}}, {"targetBacklogPerReplica": 10, "maxReplicas": 5})
    tls = {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}
    body["spec"]["redis"] = {**_redis(s), "tls": tls}
    api.create_qc(body)
    with s.master().client() as c:
        c.lpush("tq", *range(30))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op, _explained(op, api, "tq"):
        wait_for("3 replicas read over TLS through the sentinels", lambda: api.replicas() == 3, timeout=60)
        wait_for("RedisReachable=True", lambda: api.condition("tq", "RedisReachable") == "True", timeout=20)
