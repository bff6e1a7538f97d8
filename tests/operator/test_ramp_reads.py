"""Ramp reads end to end: while a scale-up's pods start and messages wait, the operator reads the queue
``RAMP_READS`` times per polling interval (so the backlog's fall is measured at the worker count of the
moment, which drains-first and the knee use), then goes back to one read per interval. A real worker (a pod
run by the node agent) is up before the burst; the reads are counted from the operator's own
``tide_decision_seconds`` histogram (one observation per poll)."""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

import pytest
import redis
from tide_operator.consumer import RAMP_READS, RAMP_SECONDS
from tide_worker.keys import QueueKeys

from tests.operator.operator_harness import Api, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]


def _polls(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^tide_decision_seconds_count (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def _rate(port: int, seconds: float) -> float:
    before, t0 = _polls(port), time.monotonic()
    time.sleep(seconds)
    return (_polls(port) - before) / (time.monotonic() - t0)


def test_a_scale_up_with_a_live_worker_reads_faster_until_the_pods_are_up(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    env = {
        "TIDE_REDIS_URL": redis_url,
        "TIDE_QUEUE": "rq",
        "TIDE_HANDLER": "tests.operator.slow_handler:paced",  # 10 messages/s per worker: they keep waiting
        "TIDE_CONCURRENCY": "1",
        "TIDE_METRICS_PORT": "0",
    }
    api.create_deployment(deployment("w", env))
    scaling = {"minReplicas": 1, "maxReplicas": 3, "targetBacklogPerReplica": 10, "cooldownSeconds": 300}
    api.create_qc(qc("ramp", redis_url, {"list": {"key": "rq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        node_agent("app=w")
        wait_for("a live worker", lambda: r.zcard(QueueKeys("rq").workers) == 1, timeout=60, interval=0.2)
        wait_for("ready", lambda: api.condition("ramp", "Ready") == "True", timeout=30)
        idle = _rate(op.metrics_port, 3.0)
        r.lpush(QueueKeys("rq").ready, *range(400))  # 40 s for one worker: messages wait all through the ramp
        wait_for("1 -> 3", lambda: api.events("Scaled", about="ramp"), timeout=10, interval=0.05)
        ramp = _rate(op.metrics_port, RAMP_SECONDS - 2.0)
        time.sleep(2.5)  # the ramp is over (no more scale-ups at maxReplicas)
        after = _rate(op.metrics_port, 3.0)
        assert idle <= 1.5, idle  # one read per 1 s interval
        assert ramp >= 0.6 * RAMP_READS, (idle, ramp, after)
        assert after <= 1.5, (idle, ramp, after)
        assert r.llen(QueueKeys("rq").ready) > 0  # messages still waited throughout
        assert op.proc.poll() is None
    r.close()
