"""The drain-time objective end to end: real ``tide worker`` processes (pods run by the node agent) publish
their throughput in their heartbeats, and the operator sizes replicas as backlog / (rate x drain seconds)."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import pytest
import redis
from tide_worker.keys import QueueKeys
from tide_worker.records import Heartbeat

from tests.operator.operator_harness import Api, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

DRAIN = 10
DECISION = re.compile(
    r"backlog (?P<backlog>\d+) .*?= (?P<raw>\d+); draining in (?P<drain>[\d.]+)s at (?P<rate>[\d.]+)/s per "
    r"replica needs (?P<need>\d+); (?P<cur>\d+) -> (?P<new>\d+)"
)


class RateSampler(threading.Thread):
    """Every rate the live workers publish in their heartbeats while the test runs (for a cross-check)."""

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url)
        self.keys = QueueKeys(queue)
        self.rates: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.sample()
        # once more after the stop: the heartbeat the operator just acted on may be younger than a poll
        self.sample()

    def sample(self) -> None:
        ids = [w.decode() for w in self.r.zrange(self.keys.workers, 0, -1)]
        for raw in self.r.mget([self.keys.worker(i) for i in ids]) if ids else []:
            if raw is not None and (rate := Heartbeat.decode(raw).rate) > 0:
                self.rates.append(rate)

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.r.close()


def test_drain_time_sizes_replicas_from_worker_rates(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    env = {
        "TIDE_REDIS_URL": redis_url,
        "TIDE_QUEUE": "dq",
        "TIDE_HANDLER": "tests.operator.slow_handler:paced",  # <= 10 messages/s per worker
        "TIDE_CONCURRENCY": "1",
        "TIDE_HEARTBEAT_TTL": "4",  # a heartbeat (and a rate sample) every ~1.3 s
        "TIDE_METRICS_PORT": "0",
    }
    api.create_deployment(deployment("w", env))
    # The backlog target alone asks for ceil(600 / 1000) = 1 replica; only the drain objective asks for more.
    scaling = {"targetBacklogPerReplica": 1000, "targetDrainSeconds": DRAIN, "maxReplicas": 10}
    api.create_qc(qc("drain", redis_url, {"list": {"key": "dq"}}, scaling))
    sampler = RateSampler(redis_url, "dq")
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        wait_for("ready", lambda: api.condition("drain", "Ready") == "True", timeout=60)
        r.lpush("dq", *range(600))
        first = wait_for("0 -> 1", lambda: api.events("Scaled", about="drain"), timeout=20)
        assert "0 -> 1" in first[0] and "draining" not in first[0], first  # no worker, no rate yet
        wait_for(
            "lastRule target", lambda: api.get_qc("drain")["status"].get("lastRule") == "target", timeout=10
        )

        sampler.start()
        node_agent("app=w")  # runs the Deployment's pods as local `tide worker` processes
        try:
            msgs = wait_for(
                "a drain-time scale-up",
                lambda: [m for m in api.events("Scaled", about="drain") if "draining" in m],
                timeout=60,
                interval=0.2,
            )
            replicas_after = api.replicas()
        finally:
            sampler.stop()
        print("decision:", msgs[0])
        m = DECISION.search(msgs[0])
        assert m, msgs[0]
        backlog, rate, need = int(m["backlog"]), float(m["rate"]), int(m["need"])
        assert (int(m["raw"]), float(m["drain"])) == (1, DRAIN)
        # the operator's figure is the mean of what workers measured, rounded to 0.1 in the message
        assert 0 < rate <= 10.5, rate
        assert sampler.rates, "no worker published a rate"
        assert min(sampler.rates) - 0.1 <= rate <= max(sampler.rates) + 0.1, (rate, sampler.rates)
        # replicas = backlog / (per-replica rate x drain seconds), rounded up
        lo = math.ceil(backlog / ((rate + 0.05) * DRAIN))
        hi = math.ceil(backlog / (max(rate - 0.05, 0.01) * DRAIN))
        assert lo <= need <= hi, (backlog, rate, need)
        assert need > 1 and int(m["new"]) == need, msgs[0]
        # the Deployment went there (a later drain-time decision may only have raised it further)
        assert replicas_after >= need, (replicas_after, msgs)
        assert op.proc.poll() is None
    r.close()
