"""Waking from zero on a push, the whole operator on the local control plane and real redis-servers:
with keyspace notifications on, a resource polling every 30 s is scaled long before its next poll; where
they are off or CONFIG is refused the resource says so (WakeOnPush=False) and polling still scales it;
``TIDE_OPERATOR_KEYSPACE_EVENTS=configure`` turns them on; a bad value stops the operator with the reason."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from tide_local.redisproc import RedisServer

from tests.operator.operator_harness import Api, Operator, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

LONG = 30  # pollingIntervalSeconds: a scale-up within LONG / 3 of the push did not come from a poll
SCALING = {"targetBacklogPerReplica": 10, "cooldownSeconds": 600, "pollingIntervalSeconds": LONG}


@pytest.fixture
def notifying() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--notify-keyspace-events", "Kl"]) as server:
        yield server


def wakeups(op: Operator) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as res:
        text = res.read().decode()
    m = re.search(r"^tide_wakeups_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wake_condition(api: Api, name: str) -> dict[str, str]:
    return api.conditions(name).get("WakeOnPush") or {}


def test_a_resource_at_zero_is_scaled_on_the_first_push_long_before_its_poll(
    crds, namespace, k8s, sa_kubeconfig, notifying, tmp_path
):
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    api.create_qc(qc("idle", notifying.url, {"list": {"key": "jobs"}}, SCALING))
    r = redis.Redis.from_url(notifying.url)
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        c = wait_for(
            "WakeOnPush=True",
            lambda: wake_condition(api, "idle").get("status") == "True" and wake_condition(api, "idle"),
            timeout=60,
        )
        assert c["reason"] == "KeyspaceEvents", c
        assert api.replicas() == 0
        time.sleep(1)  # past the reads that follow the subscription
        before = wakeups(op)
        pushed = time.monotonic()
        r.lpush("jobs", *range(25))
        wait_for("3 replicas on the push", lambda: api.replicas() == 3, timeout=LONG / 3, interval=0.02)
        print(f"push -> /scale seen after {time.monotonic() - pushed:.3f}s (polling every {LONG}s)")
        assert wakeups(op) >= before + 1, op.log()[-3000:]  # a notification, not a poll, woke it
    r.close()


def test_notifications_off_gives_the_condition_and_polling_still_scales(
    crds, namespace, k8s, sa_kubeconfig, redis_url, tmp_path
):
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    api.create_qc(qc("polled", redis_url, {"list": {"key": "pq"}}, {**SCALING, "pollingIntervalSeconds": 1}))
    r = redis.Redis.from_url(redis_url)
    assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        c = wait_for(
            "WakeOnPush=False",
            lambda: wake_condition(api, "polled").get("status") == "False" and wake_condition(api, "polled"),
            timeout=60,
        )
        assert (
            c["reason"] == "NotificationsOff" and "TIDE_OPERATOR_KEYSPACE_EVENTS=configure" in c["message"]
        ), c
        r.lpush("pq", *range(25))
        wait_for("3 replicas by polling", lambda: api.replicas() == 3, timeout=30)
        assert wakeups(op) == 0
        assert op.log().count("waking on push is off") == 1, op.log()[-3000:]  # said once
    assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""  # untouched in "use"
    r.close()


def test_configure_turns_them_on_and_a_refusing_server_gives_the_condition(
    crds, namespace, k8s, sa_kubeconfig, redis_url, tmp_path
):
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    api.create_deployment(deployment("w2", {}))
    api.create_qc(qc("conf", redis_url, {"list": {"key": "cq"}}, SCALING))
    r = redis.Redis.from_url(redis_url)
    with RedisServer(extra_args=["--rename-command", "CONFIG", '""']) as refusing:
        api.create_qc(
            qc(
                "refused",
                refusing.url,
                {"list": {"key": "rq"}},
                {**SCALING, "pollingIntervalSeconds": 1},
                target="w2",
            )
        )
        env = {"TIDE_OPERATOR_KEYSPACE_EVENTS": "configure"}
        with run_operator(crds, namespace, sa_kubeconfig, tmp_path, env=env) as op:
            c = wait_for(
                "WakeOnPush=True",
                lambda: wake_condition(api, "conf").get("status") == "True" and wake_condition(api, "conf"),
                timeout=60,
            )
            assert c["reason"] == "KeyspaceEvents", c
            assert set(r.config_get("notify-keyspace-events")["notify-keyspace-events"]) == set("Klt")
            c = wait_for(
                "WakeOnPush=False",
                lambda: (
                    wake_condition(api, "refused").get("status") == "False" and wake_condition(api, "refused")
                ),
                timeout=60,
            )
            assert (
                c["reason"] == "ConfigRefused" and "CONFIG GET notify-keyspace-events refused" in c["message"]
            ), c
            time.sleep(1)
            r.lpush("cq", *range(25))
            wait_for(
                "the configured server wakes", lambda: api.replicas() == 3, timeout=LONG / 3, interval=0.02
            )
            with refusing.client() as rc:
                rc.lpush("rq", *range(25))
            wait_for("the refusing server's resource by polling", lambda: api.replicas("w2") == 3, timeout=30)
            assert wakeups(op) >= 1
    r.config_set("notify-keyspace-events", "")  # the session's shared server, as it was
    r.close()


def test_a_bad_setting_stops_the_operator_with_the_reason(crds, namespace, sa_kubeconfig, tmp_path):
    with run_operator(
        crds, namespace, sa_kubeconfig, tmp_path, env={"TIDE_OPERATOR_KEYSPACE_EVENTS": "yes"}
    ) as op:
        op.proc.wait(60)
        assert op.proc.returncode != 0
        assert "TIDE_OPERATOR_KEYSPACE_EVENTS='yes' is not one of off, use, configure" in op.log()
