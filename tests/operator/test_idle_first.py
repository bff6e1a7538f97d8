"""Idle workers go first, end to end: six real ``tide worker`` pods (run by the node agent), two of them
busy with 30 s jobs; the backlog drops so the target goes to 2. The operator sets each pod's
``controller.kubernetes.io/pod-deletion-cost`` from its heartbeat before lowering ``/scale``, and the real
ReplicaSet controller removes the four idle pods: the two busy ones are the ones left, and neither job runs
twice. Without the costs the controller picks among six equal ready pods, and a busy pod going (its job
handed back after a 2 s shutdown grace and started again) makes this fail."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from tide_worker.connection import RedisSettings
from tide_worker.keys import QueueKeys
from tide_worker.producer import Producer
from tide_worker.records import Heartbeat

from tests.operator.operator_harness import Api, deployment, kubectl, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

COST = "controller.kubernetes.io/pod-deletion-cost"
JOB_SECONDS = 30


def _lower_the_floor(api, namespace: str) -> None:
    """minReplicas 0: the target follows the backlog, which is the jobs in flight."""
    api.custom.patch_namespaced_custom_object(
        "tide.dev", "v1alpha1", namespace, "queueconsumers", "idle", {"spec": {"scaling": {"minReplicas": 0}}}
    )


def _live_pods(api: Api) -> dict[str, Any]:
    pods = api.core.list_namespaced_pod(api.ns, label_selector="app=w").items
    return {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None}


def _beats(r: redis.Redis, queue: str) -> list[Heartbeat]:
    k = QueueKeys(queue)
    ids = [w.decode() for w in r.zrange(k.workers, 0, -1)]
    return [Heartbeat.decode(raw) for raw in (r.mget([k.worker(i) for i in ids]) if ids else []) if raw]


def _worker_deployment(redis_url: str) -> dict[str, Any]:
    env = {
        "TIDE_REDIS_URL": redis_url,
        "TIDE_QUEUE": "iq",
        "TIDE_HANDLER": "tests.operator.slow_handler:held",
        "TIDE_CONCURRENCY": "1",
        "TIDE_HEARTBEAT_TTL": "3",  # a heartbeat every second
        "TIDE_SHUTDOWN_GRACE": "2",  # a busy pod deleted hands its job back at once: an interruption
        "TIDE_METRICS_PORT": "0",
    }
    dep = deployment("w", env)
    dep["spec"]["template"]["spec"]["containers"][0]["env"] += [
        {"name": "TIDE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TIDE_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return dep


def test_a_scale_down_removes_the_idle_pods_and_interrupts_no_job(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str, tmp_path: Any
) -> None:
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    api.create_deployment(_worker_deployment(redis_url))
    scaling = {
        "minReplicas": 6, "maxReplicas": 6, "targetBacklogPerReplica": 1, "cooldownSeconds": 1,
        "scaleDown": {"stabilizationSeconds": 0},
    }  # fmt: skip
    api.create_qc(qc("idle", redis_url, {"list": {"key": "iq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        node_agent("app=w")
        wait_for("6 replicas", lambda: api.replicas() == 6, timeout=60)
        wait_for(
            "6 workers reporting their pods",
            lambda: len({b.pod for b in _beats(r, "iq") if b.namespace == namespace and b.pod}) == 6,
            timeout=90,
            interval=0.5,
        )
        producer = Producer(settings=RedisSettings(url=redis_url))
        for i in range(2):
            producer.enqueue("iq", {"hold": JOB_SECONDS, "id": f"job{i}"})
        started = wait_for(
            "2 jobs started", lambda: (s := r.lrange("iq:held:started", 0, -1)) and len(s) == 2 and s
        )
        busy = {s.decode().split("|")[1] for s in started}
        assert len(busy) == 2, started  # concurrency 1: two pods
        wait_for(
            "the busy pods' heartbeats say so",
            lambda: {b.pod for b in _beats(r, "iq") if b.inflight > 0 and b.oldest_started > 0} == busy,
            timeout=10,
            interval=0.2,
        )
        # the backlog is the 2 jobs in flight: with minReplicas 0 the target goes to 2
        _lower_the_floor(api, namespace)
        wait_for("6 -> 2", lambda: api.replicas() == 2, timeout=30, interval=0.2)
        left = wait_for("2 pods left", lambda: (p := _live_pods(api)) and len(p) == 2 and p, timeout=30)
        assert set(left) == busy, (sorted(left), sorted(busy))
        for name, pod in left.items():
            assert int((pod.metadata.annotations or {}).get(COST, "0")) > 0, (name, pod.metadata.annotations)
        assert api.condition("idle", "DeletionCostsSet") == "True", api.conditions("idle")
        done = wait_for(
            "both jobs done", lambda: (d := r.lrange("iq:held:done", 0, -1)) and len(d) == 2 and d, timeout=60
        )

        # each job ran once, to its end, on the pod that took it
        def runs(entries: list[bytes]) -> list[str]:
            return sorted("|".join(e.decode().split("|")[:2]) for e in entries)

        assert runs(r.lrange("iq:held:started", 0, -1)) == runs(done), (started, done)
        assert op.proc.poll() is None
    r.close()


def test_a_refused_pod_patch_still_scales_down_and_says_why(
    cluster: Any, crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str,
    tmp_path: Any,
) -> None:  # fmt: skip
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    api.create_deployment(_worker_deployment(redis_url))
    scaling = {
        "minReplicas": 2, "maxReplicas": 2, "targetBacklogPerReplica": 1, "cooldownSeconds": 1,
        "scaleDown": {"stabilizationSeconds": 0},
    }  # fmt: skip
    api.create_qc(qc("idle", redis_url, {"list": {"key": "iq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path, namespaced=True) as op:
        # the namespaced Role without its `patch` on pods: every deletion cost is refused (403)
        role = json.loads(kubectl(cluster, "-n", namespace, "get", "role", "tide-operator", "-o", "json"))
        rules = [x for x in role["rules"] if "pods" not in x.get("resources", [])]
        assert len(rules) == len(role["rules"]) - 1, role["rules"]
        role["rules"] = rules
        kubectl(cluster, "replace", "-f", "-", input=json.dumps(role))
        node_agent("app=w")
        wait_for(
            "2 workers reporting their pods",
            lambda: len({b.pod for b in _beats(r, "iq") if b.namespace == namespace and b.pod}) == 2,
            timeout=90,
            interval=0.5,
        )
        Producer(settings=RedisSettings(url=redis_url)).enqueue("iq", {"hold": 10, "id": "job"})
        wait_for(
            "the job in flight", lambda: any(b.inflight for b in _beats(r, "iq")), timeout=20, interval=0.2
        )
        _lower_the_floor(api, namespace)
        wait_for("2 -> 1 all the same", lambda: api.replicas() == 1, timeout=30, interval=0.2)
        cond = wait_for(
            "DeletionCostsSet=False",
            lambda: (c := api.conditions("idle").get("DeletionCostsSet")) and c,
            timeout=10,
        )
        assert (cond["status"], cond["reason"]) == ("False", "PodsNotPatchable"), cond
        assert "forbidden" in cond["message"], cond
        warnings = wait_for("a warning", lambda: api.events("PodsNotPatchable", kind="Warning"), timeout=10)
        assert "scaling down without deletion costs" in warnings[0], warnings
        assert all(COST not in (p.metadata.annotations or {}) for p in _live_pods(api).values())
        assert op.proc.poll() is None
    r.close()


def test_a_pod_whose_job_ended_goes_before_the_scale_down_window_and_the_busy_one_stays(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, node_agent: Any, redis_url: str, tmp_path: Any
) -> None:
    """The idle-pods rule, end to end: two jobs on two pods (concurrency 1, one job per replica), one of
    3 s and one of 40 s, at the default scale-down window (30 s). The pod whose job ended is idle past
    5 s with nothing waiting, so it goes well within the window; the busy one stays and finishes its job.
    Without the rule the window holds both until 30 s after the short job ended."""
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    api.create_deployment(_worker_deployment(redis_url))
    scaling = {"maxReplicas": 2, "targetBacklogPerReplica": 1, "cooldownSeconds": 120}
    api.create_qc(qc("idle", redis_url, {"list": {"key": "iq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        node_agent("app=w")
        producer = Producer(settings=RedisSettings(url=redis_url))
        producer.enqueue("iq", {"hold": 40, "id": "long"})
        wait_for("the long job started", lambda: r.llen("iq:held:started") == 1, timeout=90, interval=0.2)
        producer.enqueue("iq", {"hold": 3, "id": "short"})  # the first pod is busy: it goes to a second
        started = wait_for(
            "2 jobs started",
            lambda: (s := r.lrange("iq:held:started", 0, -1)) and len(s) == 2 and s,
            timeout=90,
            interval=0.2,
        )
        pods = {s.decode().split("|")[0]: s.decode().split("|")[1] for s in started}
        assert len(set(pods.values())) == 2, started
        done = wait_for(
            "the short job done", lambda: r.lrange("iq:held:done", 0, -1), timeout=30, interval=0.1
        )
        ended = float(done[0].decode().split("|")[2])
        wait_for("2 -> 1", lambda: api.replicas() == 1, timeout=25, interval=0.2)
        took = time.time() - ended
        assert took < 20, took  # idle 5 s (+ a heartbeat, a poll, the deletion costs); the window is 30 s
        left = wait_for("1 pod left", lambda: (p := _live_pods(api)) and len(p) == 1 and p, timeout=30)
        assert list(left) == [pods["long"]], (left, pods)
        events = [e.message or "" for e in api.core.list_namespaced_event(namespace).items]
        assert any("2 -> 1" in m and "idle for 5s or more with nothing waiting" in m for m in events), events
        both = wait_for(
            "the long job done",
            lambda: (d := r.lrange("iq:held:done", 0, -1)) and len(d) == 2 and d,
            timeout=60,
        )
        assert sorted(e.decode().split("|")[0] for e in both) == ["long", "short"]
        assert len(r.lrange("iq:held:started", 0, -1)) == 2  # neither ran twice
        assert op.proc.poll() is None
    r.close()
