"""Pods as local processes: the node agent with the real Deployment and ReplicaSet controllers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests import waiting

pytestmark = pytest.mark.cluster

SLEEPER = r"""
import os, pathlib, signal, sys, time
d = pathlib.Path(os.environ["MARKER_DIR"])
name = os.environ["POD_NAME"]
(d / (name + ".pid")).write_text(str(os.getpid()))
def term(*_):
    (d / (name + ".term")).write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(1)
"""

ENV_DUMP = r"""
import json, os, pathlib, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL after the grace period ends this one
d = pathlib.Path(os.environ["MARKER_DIR"])
keys = ["POD_NAME", "MY_NAMESPACE", "MY_IP", "TOKEN", "MODE", "CM_mode", "CM_level", "GREETING", "KUBECONFIG"]
(d / ("env-%d.json" % os.getpid())).write_text(json.dumps({k: os.environ.get(k) for k in keys}))
while True:
    time.sleep(1)
"""


def wait_until(predicate, timeout=120.0, interval=0.1, what="condition"):
    # generous bounds: these take about a second on an idle machine, but the cluster may be shared with
    # benchmarks and other test sessions on 2 cores
    return waiting.wait_until(predicate, timeout, interval, what)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def live_processes(marker_dir: Path) -> dict[str, int]:
    pids = {p.stem: int(p.read_text()) for p in marker_dir.glob("*.pid")}
    return {name: pid for name, pid in pids.items() if pid_alive(pid)}


def test_deployment_scales_local_processes_0_3_0(k8s, namespace, node_agent, tmp_path):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    labels = {"app": "sleeper"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="sleeper"),
            spec=client.V1DeploymentSpec(
                replicas=0,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        termination_grace_period_seconds=10,
                        containers=[
                            client.V1Container(
                                name="main",
                                image="not-pulled",
                                command=["python", "-c", SLEEPER],
                                env=[client.V1EnvVar(name="MARKER_DIR", value=str(tmp_path))],
                            )
                        ],
                    ),
                ),
            ),
        ),
    )
    agent = node_agent("app=sleeper")

    apps.patch_namespaced_deployment_scale("sleeper", namespace, {"spec": {"replicas": 3}})

    def three_ready():
        status = apps.read_namespaced_deployment_status("sleeper", namespace).status
        return status.ready_replicas == 3 and status.available_replicas == 3

    wait_until(three_ready, what="3 ready replicas")
    # readyReplicas counts pods whose processes run: all three are alive now
    live = live_processes(tmp_path)
    assert len(live) == 3, live
    pods = core.list_namespaced_pod(namespace, label_selector="app=sleeper").items
    assert sorted(p.metadata.name for p in pods) == sorted(live)
    for pod in pods:
        assert pod.spec.node_name == agent.node_name
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        assert pod.status.container_statuses[0].ready is True

    apps.patch_namespaced_deployment_scale("sleeper", namespace, {"spec": {"replicas": 0}})

    def scaled_down():
        status = apps.read_namespaced_deployment_status("sleeper", namespace).status
        pods = core.list_namespaced_pod(namespace, label_selector="app=sleeper").items
        return not status.ready_replicas and not pods

    wait_until(scaled_down, what="0 replicas and no pods")
    assert live_processes(tmp_path) == {}
    # every stopped process got SIGTERM (and handled it) rather than a SIGKILL
    assert sorted(p.stem for p in tmp_path.glob("*.term")) == sorted(live)
    assert agent.alive()


def test_env_sources_restart_and_sigkill_after_grace(k8s, namespace, node_agent, tmp_path):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cret"}),
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="settings"), data={"mode": "fast", "level": "3"}
        ),
    )
    env = [
        client.V1EnvVar(name="MARKER_DIR", value=str(tmp_path)),
        client.V1EnvVar(
            name="MY_NAMESPACE",
            value_from=client.V1EnvVarSource(
                field_ref=client.V1ObjectFieldSelector(field_path="metadata.namespace")
            ),
        ),
        client.V1EnvVar(
            name="MY_IP",
            value_from=client.V1EnvVarSource(
                field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
            ),
        ),
        client.V1EnvVar(
            name="TOKEN",
            value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name="creds", key="token")
            ),
        ),
        client.V1EnvVar(
            name="MODE",
            value_from=client.V1EnvVarSource(
                config_map_key_ref=client.V1ConfigMapKeySelector(name="settings", key="mode")
            ),
        ),
        client.V1EnvVar(name="GREETING", value="hello $(MODE) $(POD_NAME)"),
    ]
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="envcheck", labels={"app": "envcheck"}),
            spec=client.V1PodSpec(
                termination_grace_period_seconds=1,
                containers=[
                    client.V1Container(
                        name="main",
                        image="not-pulled",
                        command=["python", "-c", ENV_DUMP],
                        env=env,
                        env_from=[
                            client.V1EnvFromSource(
                                prefix="CM_", config_map_ref=client.V1ConfigMapEnvSource(name="settings")
                            )
                        ],
                    )
                ],
            ),
        ),
    )
    node_agent("app=envcheck")

    first = wait_until(lambda: list(tmp_path.glob("env-*.json")), what="the container to start")[0]
    seen = json.loads(first.read_text())
    assert seen["POD_NAME"] == "envcheck"
    assert seen["MY_NAMESPACE"] == namespace
    assert seen["MY_IP"] == "127.0.0.1"
    assert seen["TOKEN"] == "s3cret"
    assert seen["MODE"] == "fast" and seen["CM_mode"] == "fast" and seen["CM_level"] == "3"
    assert seen["GREETING"] == "hello fast envcheck"
    assert seen["KUBECONFIG"] and Path(seen["KUBECONFIG"]).exists()

    # a crashed container is restarted and the restart counted
    first_pid = int(first.stem.split("-")[1])
    os.kill(first_pid, signal.SIGKILL)

    def restarted():
        pod = core.read_namespaced_pod("envcheck", namespace)
        statuses = pod.status.container_statuses or []
        return statuses and statuses[0].restart_count == 1 and statuses[0].ready

    wait_until(restarted, what="the restart")
    second_pid = next(int(p.stem.split("-")[1]) for p in tmp_path.glob("env-*.json") if p != first)
    assert pid_alive(second_pid)

    # it ignores SIGTERM, so deletion waits out the 1 s grace period and then SIGKILLs it
    started = time.monotonic()
    core.delete_namespaced_pod("envcheck", namespace)

    def deleted():
        return not core.list_namespaced_pod(namespace, label_selector="app=envcheck").items

    wait_until(deleted, what="the pod to be finalized")
    assert time.monotonic() - started >= 0.9
    assert not pid_alive(second_pid)
