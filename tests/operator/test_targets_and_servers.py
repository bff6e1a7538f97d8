"""The whole operator (``kopf run -m tide_operator`` under its own ServiceAccount) against a missing scale
target, a TLS Redis with credentials from Secrets, and a 3-master Redis Cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from tide_local.redisproc import RedisCluster, RedisServer, TLSFiles
from tide_worker.keys import QueueKeys

from tests.operator.operator_harness import Api, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]


def _reason(api: Api, name: str, ctype: str) -> tuple[str, str] | None:
    c = api.conditions(name).get(ctype)
    return None if c is None else (str(c["status"]), str(c.get("reason")))


def test_missing_target_reported_then_scaled_once_created(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    scaling = {"targetBacklogPerReplica": 10}
    api.create_qc(qc("lost", redis_url, {"list": {"key": "lq"}}, scaling, target="nowhere"))
    # a healthy neighbour: the operator must keep serving it while the other target is missing
    api.create_deployment(deployment("w", {}))
    api.create_qc(qc("fine", redis_url, {"list": {"key": "fq"}}, scaling))
    r.lpush("lq", *range(30))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        wait_for(
            "Ready=False/TargetNotFound",
            lambda: _reason(api, "lost", "Ready") == ("False", "TargetNotFound"),
            timeout=60,
        )
        assert "nowhere" in api.conditions("lost")["Ready"]["message"]
        events = wait_for(
            "a TargetNotFound warning",
            lambda: api.events("TargetNotFound", kind="Warning", about="lost"),
            timeout=20,
        )
        assert any("Deployment nowhere" in m for m in events), events

        r.lpush("fq", *range(20))
        wait_for("the neighbour scales", lambda: api.replicas("w") == 2, timeout=20)
        assert op.proc.poll() is None, op.log()[-3000:]

        api.create_deployment(deployment("nowhere", {}))
        # the retry backs off to at most 10 s between attempts
        wait_for("the late target scales", lambda: api.replicas("nowhere") == 3, timeout=40)
        wait_for("Ready=True", lambda: api.condition("lost", "Ready") == "True", timeout=20)
        wait_for(
            "the Scaled event",
            lambda: any("nowhere 0 -> 3" in m for m in api.events("Scaled", about="lost")),
            timeout=10,
        )
        assert op.proc.poll() is None
    r.close()


PASSWORD = "tide-s3cret"


def test_tls_redis_with_password_and_ca_from_secrets(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, tls_files: TLSFiles, tmp_path: Any
) -> None:
    # A private server: the shared TLS fixture has no password, and requirepass on it would break its users.
    with RedisServer(tls=tls_files, password=PASSWORD) as server:
        url = f"rediss://{server.host}:{server.port}/0"  # no credentials in the URL: they come from Secrets
        api = Api(k8s, namespace)
        api.create_secret("redis-auth", {"password": PASSWORD})
        api.create_secret("wrong-auth", {"password": "not-it"})
        api.create_secret("redis-ca", {"ca.crt": tls_files.ca_cert.read_text()})
        ca = {"caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}
        cases = {
            "tls": {"passwordSecretRef": {"name": "redis-auth", "key": "password"}, "tls": ca},
            # controls: the same server with a wrong password, and without the CA, must fail to read
            "wrongpass": {"passwordSecretRef": {"name": "wrong-auth", "key": "password"}, "tls": ca},
            "noca": {"passwordSecretRef": {"name": "redis-auth", "key": "password"}},
        }
        for name, redis_extra in cases.items():
            api.create_deployment(deployment(name, {}))
            body = qc(name, url, {"list": {"key": "tq"}}, {"targetBacklogPerReplica": 50}, target=name)
            body["spec"]["redis"].update(redis_extra)
            api.create_qc(body)
        with server.client() as c:
            c.lpush("tq", *range(250))
        with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
            wait_for("5 replicas over TLS", lambda: api.replicas("tls") == 5, timeout=60)
            # the status patch follows the scale
            wait_for(
                "RedisReachable=True", lambda: api.condition("tls", "RedisReachable") == "True", timeout=10
            )
            assert api.get_qc("tls")["status"]["backlog"]["ready"] == 250
            for name, expect in (("wrongpass", ("WRONGPASS", "invalid", "password")), ("noca", ("certif",))):
                wait_for(
                    f"{name}: RedisReachable=False",
                    lambda name=name: api.condition(name, "RedisReachable") == "False",
                    timeout=30,
                )
                message = api.conditions(name)["RedisReachable"]["message"]
                assert any(e.lower() in message.lower() for e in expect), (name, message)
                assert api.replicas(name) == 0
            assert op.proc.poll() is None


def test_redis_cluster_source(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_cluster: RedisCluster, tmp_path: Any
) -> None:
    url = redis_cluster.url
    rc = redis.RedisCluster(host=redis_cluster.nodes[0].host, port=redis_cluster.nodes[0].port)
    k = QueueKeys("cq")
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    body = qc("cl", url, {"list": {"key": "cq"}}, {"targetBacklogPerReplica": 50, "maxReplicas": 20})
    body["spec"]["redis"]["cluster"] = True
    api.create_qc(body)
    rc.lpush("cq", *range(300))
    # work a (registered) worker holds counts too: its processing list lives in the queue's slot
    rc.zadd(k.workers, {"w1": time.time()})
    rc.lpush(k.processing("w1"), *range(200))
    assert rc.keyslot(k.processing("w1")) == rc.keyslot("cq")
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        wait_for("10 replicas from a cluster", lambda: api.replicas() == 10, timeout=60)
        backlog = wait_for("the backlog in status", lambda: api.get_qc("cl").get("status", {}).get("backlog"))
        assert (backlog["ready"], backlog["inFlight"]) == (300, 200), backlog
        rc.lpush("cq", *range(500))
        wait_for("20 replicas after a second burst", lambda: api.replicas() == 20, timeout=20)
        assert op.proc.poll() is None
    rc.close()
