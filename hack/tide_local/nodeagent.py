"""A local node agent: the part of a kubelet that Tide's tests and demo need, with pods run as processes.

    python -m tide_local.nodeagent --kubeconfig .cache/cluster/kubeconfig --node-name local-1 \\
        --selector app=tide-worker [--namespace NS]

It registers a Node (Ready, renewed through a Lease in ``kube-node-lease``), watches the pods matching the
label selector, binds unscheduled ones to itself through ``pods/binding`` (there is no scheduler), and runs
each container's ``command`` + ``args`` as a local process (in its own process group) with the pod's
environment: ``env`` (``value``, ``$(VAR)`` expansion, ``fieldRef``, ``resourceFieldRef``,
``configMapKeyRef``, ``secretKeyRef``) and ``envFrom``, plus ``HOSTNAME``/``POD_NAME``/``POD_NAMESPACE`` and
``KUBECONFIG`` pointing at a kubeconfig with a token bound to the pod for its ServiceAccount. The image is
ignored; executables are looked up on ``PATH`` with the repository's ``.venv/bin`` first.

A container is Ready once its process has been alive for ``--ready-after`` seconds (0.2 s by default), or,
when it has an ``exec`` readiness probe, once the probe succeeds. ``httpGet``/``tcpSocket`` probes are
ignored: every pod shares the host's loopback network. Status (phase, conditions, containerStatuses with
restartCount) goes through ``pods/status``. Crashed containers restart per ``restartPolicy`` with a short
backoff (0.5 s doubling to 10 s). On deletion the agent sends SIGTERM to the container's process group, waits
up to the pod's grace period, sends SIGKILL, then finalizes the deletion (delete with grace 0), as the
kubelet does. On SIGTERM/SIGINT the agent stops its processes the same way and exits.
Logs: ``.cache/cluster/pods/<namespace>_<pod>.log``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tide_local.kube import JSON, Kube, KubeError
from tide_local.paths import CLUSTER_DIR, REPO_ROOT, VENV_BIN

log = logging.getLogger("tide_local.nodeagent")

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def die_with_parent() -> None:
    """``preexec_fn``: have Linux SIGKILL the child when the thread that started it dies, so processes do not
    outlive an agent that was itself SIGKILLed (a clean stop terminates them gracefully first)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes, unknown ones stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return VAR_REF.sub(sub, value)


class ConfigError(Exception):
    """The container's configuration cannot be resolved yet (missing Secret/ConfigMap/key)."""


@dataclass
class Container:
    spec: JSON
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic
    started_at_wall: str = ""
    restart_count: int = 0
    ready: bool = False
    next_start: float = 0.0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    last_terminated: JSON | None = None
    terminated: JSON | None = None  # final state once it will not run again
    next_probe: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.kube = Kube(args.kubeconfig)
        self.node = args.node_name
        self.selector = args.selector
        self.namespace = args.namespace
        self.ready_after = args.ready_after
        self.shutdown_grace = args.shutdown_grace
        self.workdir = Path(args.workdir).resolve()
        self.pods_dir = Path(args.pods_dir).resolve()
        self.inherit_env = args.inherit_env
        self.delete_node = args.delete_node_on_exit
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.runners: dict[str, PodRunner] = {}
        self.finished: set[str] = set()

    # --- node ----------------------------------------------------------------------------------------

    def node_status(self, ready: bool) -> JSON:
        now = now_rfc3339()
        cpus = str(os.cpu_count() or 1)
        mem_kib = "16Gi"
        with contextlib.suppress(OSError, ValueError, IndexError):
            mem_kib = Path("/proc/meminfo").read_text().split("\n")[0].split()[1] + "Ki"
        resources = {"cpu": cpus, "memory": mem_kib, "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletStopped",
                    "message": "tide-local node agent is posting ready status"
                    if ready
                    else "tide-local node agent stopped",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "machineID": "tide-local",
                "systemUUID": "tide-local",
                "bootID": "tide-local",
                "kernelVersion": platform.release(),
                "osImage": "tide-local processes",
                "containerRuntimeVersion": "tide-local://0.1",
                "kubeletVersion": "tide-local",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "tide.dev/local-node": "true",
                },
            },
        }
        try:
            self.kube.post("/api/v1/nodes", body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self.kube.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status(True)})
        log.info("registered node %s", self.node)

    def heartbeat(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        last_status = time.monotonic()
        while not self.stop.wait(10):
            micro = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                try:
                    self.kube.merge_patch(path, {"spec": {"renewTime": micro, "holderIdentity": self.node}})
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    self.kube.post(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": self.node},
                            "spec": {
                                "holderIdentity": self.node,
                                "leaseDurationSeconds": 40,
                                "renewTime": micro,
                            },
                        },
                    )
                if time.monotonic() - last_status > 50:
                    last_status = time.monotonic()
                    self.kube.merge_patch(
                        f"/api/v1/nodes/{self.node}/status", {"status": self.node_status(True)}
                    )
            except Exception as exc:  # keep beating through transient errors
                log.warning("heartbeat failed: %s", exc)

    # --- pods ----------------------------------------------------------------------------------------

    def pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods" if self.namespace else "/api/v1/pods"

    def watch_loop(self) -> None:
        params = {"labelSelector": self.selector} if self.selector else {}
        while not self.stop.is_set():
            try:
                listing = self.kube.get(self.pods_path(), **params)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.handle("ADDED", pod)
                with self.lock:
                    gone = [uid for uid in self.runners if uid not in seen]
                for uid in gone:
                    self.forget(uid)
                rv = listing["metadata"]["resourceVersion"]
                while not self.stop.is_set():
                    for event in self.kube.watch(
                        self.pods_path(), {**params, "resourceVersion": rv, "allowWatchBookmarks": True}, 30
                    ):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise KubeError(int(obj.get("code", 500)), json.dumps(obj), "watch")
                        rv = obj["metadata"]["resourceVersion"]
                        if kind != "BOOKMARK":
                            self.handle(kind, obj)
                        if self.stop.is_set():
                            return
            except KubeError as exc:
                if exc.status == 410:
                    log.info("watch expired; relisting")
                else:
                    log.warning("pod watch failed: %s; relisting", exc)
                    self.stop.wait(1)
            except Exception as exc:
                if self.stop.is_set():
                    return
                log.warning("pod watch failed: %s; relisting", exc)
                self.stop.wait(1)

    def handle(self, kind: str, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        if kind == "DELETED":
            self.forget(uid)
            return
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                self.bind(ns, name, uid)
            return
        if node != self.node:
            return
        with self.lock:
            runner = self.runners.get(uid)
            if runner is not None:
                runner.update(pod)
                return
            if uid in self.finished or self.stop.is_set():
                return
            if meta.get("deletionTimestamp"):
                # Bound to us but not running here (e.g. the agent restarted): finalize at once.
                self.finished.add(uid)
                threading.Thread(target=finalize_delete, args=(self.kube, ns, name, uid), daemon=True).start()
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                self.finished.add(uid)
                return
            runner = PodRunner(self, pod)
            self.runners[uid] = runner
        runner.start()

    def forget(self, uid: str) -> None:
        with self.lock:
            runner = self.runners.get(uid)
        if runner is not None:
            runner.api_deleted.set()
            runner.wake.set()

    def runner_done(self, uid: str) -> None:
        with self.lock:
            self.runners.pop(uid, None)
            self.finished.add(uid)

    def bind(self, ns: str, name: str, uid: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            self.kube.post(f"/api/v1/namespaces/{ns}/pods/{name}/binding", body)
            log.info("bound %s/%s to %s", ns, name, self.node)
        except KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", ns, name, exc)

    # --- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> None:
        self.register_node()
        threads = [
            threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True),
            threading.Thread(target=self.watch_loop, name="watch", daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.stop.wait()
        log.info("stopping: terminating pods")
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.wake.set()
        for runner in runners:
            runner.join(self.shutdown_grace + 5)
        try:
            if self.delete_node:
                self.kube.delete(f"/api/v1/nodes/{self.node}")
            else:
                self.kube.merge_patch(
                    f"/api/v1/nodes/{self.node}/status", {"status": self.node_status(False)}
                )
        except Exception as exc:
            log.warning("could not update node %s on exit: %s", self.node, exc)
        log.info("stopped")


def finalize_delete(kube: Kube, ns: str, name: str, uid: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": uid},
    }
    for attempt in range(5):
        try:
            kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}", body)
            return
        except KubeError as exc:
            if exc.status in (404, 409):
                return
            log.warning("finalizing %s/%s failed: %s", ns, name, exc)
        except Exception as exc:
            log.warning("finalizing %s/%s failed: %s", ns, name, exc)
        time.sleep(0.5 * (attempt + 1))


@dataclass
class Conditions:
    times: dict[str, tuple[str, str]] = field(default_factory=dict)

    def set(self, kind: str, status: bool) -> JSON:
        value = "True" if status else "False"
        previous = self.times.get(kind)
        if previous is None or previous[0] != value:
            self.times[kind] = (value, now_rfc3339())
        return {
            "type": kind,
            "status": value,
            "lastTransitionTime": self.times[kind][1],
            "lastProbeTime": None,
        }


class PodRunner(threading.Thread):
    def __init__(self, agent: Agent, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.kube = agent.kube
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.wake = threading.Event()
        self.api_deleted = threading.Event()
        self.conditions = Conditions()
        self.start_time = now_rfc3339()
        self.last_sent: str = ""
        self.token_kubeconfig: Path | None = None
        specs = pod["spec"].get("containers", [])
        base = f"{self.ns}_{self.pod_name}"
        agent.pods_dir.mkdir(parents=True, exist_ok=True)
        self.containers = [
            Container(
                spec=c,
                log_path=agent.pods_dir / (f"{base}.log" if len(specs) == 1 else f"{base}_{c['name']}.log"),
            )
            for c in specs
        ]
        for init in pod["spec"].get("initContainers", []) or []:
            log.warning("%s: init container %s is not run by the local agent", self.name, init.get("name"))

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    # --- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s: runner failed", self.name)
            self.kill_all(0)
        finally:
            self.agent.runner_done(self.uid)

    def _run(self) -> None:
        while True:
            if self.api_deleted.is_set():
                self.kill_all(self.grace_seconds())
                return
            if self.pod["metadata"].get("deletionTimestamp"):
                grace = self.grace_seconds()
                log.info("%s: deleting (grace %.0fs)", self.name, grace)
                self.kill_all(grace)
                self.report(final=True)
                finalize_delete(self.kube, self.ns, self.pod_name, self.uid)
                return
            if self.agent.stop.is_set():
                self.kill_all(min(self.grace_seconds(), self.agent.shutdown_grace))
                return
            self.step()
            self.report()
            if self.phase() in ("Succeeded", "Failed"):
                return
            self.wake.wait(self.next_wakeup())
            self.wake.clear()

    def next_wakeup(self) -> float:
        """Seconds until something is due (readiness, a restart, a probe); exits and pod updates wake the
        loop at once, so nothing polls while all is steady."""
        now = time.monotonic()
        due = [now + 2.0]
        for c in self.containers:
            if c.terminated is not None:
                continue
            if c.proc is None:
                due.append(c.next_start)
            elif (c.spec.get("readinessProbe") or {}).get("exec"):
                due.append(max(c.next_probe, c.started_at))
            elif not c.ready:
                due.append(c.started_at + self.agent.ready_after)
        return min(max(min(due) - now, 0.01), 2.0)

    def step(self) -> None:
        now = time.monotonic()
        for c in self.containers:
            if c.terminated is not None:
                continue
            if c.proc is None:
                if now >= c.next_start:
                    self.start_container(c)
                continue
            code = c.proc.poll()
            if code is None:
                self.check_ready(c, now)
                continue
            # the container exited
            state = {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.started_at_wall,
                "finishedAt": now_rfc3339(),
                "containerID": f"tide-local://{c.proc.pid}",
            }
            if code < 0:
                state["signal"] = -code
            self.kill_group_leftovers(c)
            c.proc = None
            c.ready = False
            policy = self.restart_policy
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                c.last_terminated = state
                c.restart_count += 1
                backoff = min(0.5 * 2 ** (c.restart_count - 1), 10.0)
                if now - c.started_at > 60:
                    backoff = 0.5
                c.next_start = now + backoff
                c.waiting_reason, c.waiting_message = (
                    "CrashLoopBackOff",
                    f"back-off {backoff:.1f}s restarting",
                )
                log.info("%s: container %s exited %s; restarting in %.1fs", self.name, c.name, code, backoff)
            else:
                c.terminated = state
                log.info("%s: container %s exited %s", self.name, c.name, code)

    def check_ready(self, c: Container, now: float) -> None:
        probe = c.spec.get("readinessProbe") or {}
        exec_probe = probe.get("exec")
        if not exec_probe:
            c.ready = now - c.started_at >= self.agent.ready_after
            return
        if now < c.started_at + float(probe.get("initialDelaySeconds", 0)) or now < c.next_probe:
            return
        c.next_probe = now + float(probe.get("periodSeconds", 10))
        try:
            env = self.resolve_env(c.spec)
            result = subprocess.run(
                exec_probe.get("command", []),
                env=env,
                cwd=self.agent.workdir,
                capture_output=True,
                timeout=float(probe.get("timeoutSeconds", 1)),
            )
            c.ready = result.returncode == 0
        except (OSError, subprocess.TimeoutExpired, ConfigError):
            c.ready = False

    # --- processes -----------------------------------------------------------------------------------

    def start_container(self, c: Container) -> None:
        try:
            env = self.resolve_env(c.spec)
            argv = [expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
            if not argv:
                raise ConfigError("the container has no command or args (images are not run locally)")
            executable = shutil.which(argv[0], path=env.get("PATH")) if "/" not in argv[0] else argv[0]
            if executable is None:
                raise ConfigError(f"executable {argv[0]!r} not found on PATH")
        except (ConfigError, KubeError) as exc:
            c.waiting_reason, c.waiting_message = "CreateContainerConfigError", str(exc)
            c.next_start = time.monotonic() + 2
            log.warning("%s: container %s cannot start: %s", self.name, c.name, exc)
            return
        workdir = c.spec.get("workingDir")
        cwd = Path(workdir) if workdir and Path(workdir).is_dir() else self.agent.workdir
        with c.log_path.open("ab") as out:
            out.write(f"--- {now_rfc3339()} starting {c.name}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                c.proc = subprocess.Popen(
                    [executable, *argv[1:]],
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: signals reach its children too
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                c.waiting_reason, c.waiting_message = "StartError", str(exc)
                c.next_start = time.monotonic() + 2
                return
        c.started_at = time.monotonic()
        c.started_at_wall = now_rfc3339()
        c.ready = False
        c.waiting_reason = c.waiting_message = ""
        log.info("%s: started %s as pid %d", self.name, c.name, c.proc.pid)
        proc = c.proc

        def wake_on_exit() -> None:
            proc.wait()
            self.wake.set()

        threading.Thread(target=wake_on_exit, name=f"wait-{proc.pid}", daemon=True).start()

    def kill_group_leftovers(self, c: Container) -> None:
        if c.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)

    def kill_all(self, grace: float) -> None:
        """SIGTERM every running container's process group, wait up to ``grace`` s, then SIGKILL."""
        running = [c for c in self.containers if c.alive()]
        for c in running:
            assert c.proc is not None
            log.info("%s: SIGTERM to %s (pid %d)", self.name, c.name, c.proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0)
        while any(c.alive() for c in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in running:
            assert c.proc is not None
            if c.alive():
                log.info("%s: SIGKILL to %s (pid %d) after %.0fs", self.name, c.name, c.proc.pid, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            code = c.proc.wait()
            c.terminated = {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.started_at_wall,
                "finishedAt": now_rfc3339(),
                "containerID": f"tide-local://{c.proc.pid}",
            }
            c.ready = False
        for c in self.containers:
            if c.terminated is None:
                c.terminated = {"exitCode": 0, "reason": "Completed", "finishedAt": now_rfc3339()}

    # --- environment ---------------------------------------------------------------------------------

    def _configmap(self, name: str) -> JSON | None:
        try:
            return self.kube.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _secret(self, name: str) -> dict[str, str] | None:
        try:
            secret = self.kube.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        data = {
            k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()
        }
        data.update(secret.get("stringData") or {})
        return data

    def _field(self, path: str) -> str:
        pod = self.pod
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.agent.node,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise ConfigError(f"unsupported fieldRef {path}")

    def _resource(self, spec: JSON, ref: JSON) -> str:
        container = spec
        if ref.get("containerName"):
            container = next(
                (c for c in self.pod["spec"]["containers"] if c["name"] == ref["containerName"]), spec
            )
        kind, _, resource = str(ref["resource"]).partition(".")
        value = (container.get("resources", {}).get(kind) or {}).get(resource)
        if value is None:
            value = str(os.cpu_count() or 1) if resource == "cpu" else "0"
        return str(value)

    def resolve_env(self, spec: JSON) -> dict[str, str]:
        if self.agent.inherit_env:
            env = dict(os.environ)
        else:
            env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        path = env.get("PATH", os.defpath)
        if VENV_BIN.is_dir() and str(VENV_BIN) not in path.split(os.pathsep):
            path = f"{VENV_BIN}{os.pathsep}{path}"
        env["PATH"] = path
        env["HOSTNAME"] = self.pod_name
        env["POD_NAME"] = self.pod_name
        env["POD_NAMESPACE"] = self.ns
        kubeconfig = self.service_account_kubeconfig()
        if kubeconfig:
            env["KUBECONFIG"] = str(kubeconfig)
        pod_env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef")
            if not ref:
                continue
            if "configMapRef" in source:
                cm = self._configmap(ref["name"])
                data = None if cm is None else (cm.get("data") or {})
            else:
                data = self._secret(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(
                    f"{'configmap' if 'configMapRef' in source else 'secret'} {ref['name']} not found"
                )
            for key, value in data.items():
                if ENV_NAME.match(prefix + key):
                    pod_env[prefix + key] = value
        for item in spec.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                pod_env[name] = expand(item.get("value", ""), {**env, **pod_env})
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                pod_env[name] = self._field(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                pod_env[name] = self._resource(spec, source["resourceFieldRef"])
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                is_cm = "configMapKeyRef" in source
                ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
                if is_cm:
                    cm = self._configmap(ref["name"])
                    data = None if cm is None else (cm.get("data") or {})
                else:
                    data = self._secret(ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    what = "configmap" if is_cm else "secret"
                    raise ConfigError(f"couldn't find key {ref['key']} in {what} {self.ns}/{ref['name']}")
                pod_env[name] = data[ref["key"]]
        env.update(pod_env)
        return env

    def service_account_kubeconfig(self) -> Path | None:
        """A kubeconfig with a token bound to this pod for its ServiceAccount (the local stand-in for the
        projected token volume); None when the pod opts out of automounting."""
        if self.token_kubeconfig is not None:
            return self.token_kubeconfig
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        sa = spec.get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],
                "expirationSeconds": 86400,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
            },
        }
        token = self.kube.post(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", request)["status"][
            "token"
        ]
        ca = Path(self.kube.ca_file).read_bytes() if self.kube.ca_file else b""
        user = f"system:serviceaccount:{self.ns}:{sa}"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.kube.server,
                        "certificate-authority-data": base64.b64encode(ca).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user, "namespace": self.ns}}],
            "current-context": user,
        }
        path = self.agent.pods_dir / f"{self.ns}_{self.pod_name}.kubeconfig"
        path.write_text(json.dumps(doc))
        path.chmod(0o600)
        self.token_kubeconfig = path
        return path

    # --- status --------------------------------------------------------------------------------------

    def phase(self) -> str:
        if any(c.terminated is None for c in self.containers):
            started = any(c.proc is not None or c.restart_count or c.last_terminated for c in self.containers)
            return "Running" if started else "Pending"
        if all(c.terminated and c.terminated.get("exitCode") == 0 for c in self.containers):
            return "Succeeded"
        return "Failed"

    def container_status(self, c: Container) -> JSON:
        state: JSON
        if c.terminated is not None:
            state = {"terminated": c.terminated}
        elif c.alive():
            state = {"running": {"startedAt": c.started_at_wall}}
        else:
            state = {
                "waiting": {"reason": c.waiting_reason or "ContainerCreating", "message": c.waiting_message}
            }
        status: JSON = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready and c.alive(),
            "started": c.alive(),
            "restartCount": c.restart_count,
            "state": state,
            "lastState": {"terminated": c.last_terminated} if c.last_terminated else {},
        }
        if c.proc is not None:
            status["containerID"] = f"tide-local://{c.proc.pid}"
        return status

    def report(self, final: bool = False) -> None:
        statuses = [self.container_status(c) for c in self.containers]
        ready = not final and all(s["ready"] for s in statuses)
        phase = self.phase()
        body = {
            "status": {
                "phase": phase,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "conditions": [
                    self.conditions.set("PodReadyToStartContainers", not final),
                    self.conditions.set("Initialized", True),
                    self.conditions.set("ContainersReady", ready),
                    self.conditions.set("Ready", ready),
                    self.conditions.set("PodScheduled", True),
                ],
                "containerStatuses": statuses,
            }
        }
        encoded = json.dumps(body, sort_keys=True)
        if encoded == self.last_sent:
            return
        for attempt in range(5):
            try:
                self.kube.merge_patch(f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status", body)
                self.last_sent = encoded
                return
            except KubeError as exc:
                if exc.status == 404:
                    self.api_deleted.set()
                    return
                log.warning("%s: status update failed (%s); retrying", self.name, exc)
            except Exception as exc:
                log.warning("%s: status update failed (%s); retrying", self.name, exc)
            time.sleep(0.2 * (attempt + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tide_local.nodeagent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubeconfig", default=str(CLUSTER_DIR / "kubeconfig"))
    parser.add_argument("--node-name", default="tide-local-node")
    parser.add_argument("--selector", default="", help="label selector of the pods this node runs")
    parser.add_argument("--namespace", default=None, help="only pods in this namespace (default: all)")
    parser.add_argument("--ready-after", type=float, default=0.2, help="seconds alive before Ready")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="cap on each pod's grace period when the agent stops",
    )
    parser.add_argument("--workdir", default=str(REPO_ROOT), help="working directory of the processes")
    parser.add_argument("--pods-dir", default=str(CLUSTER_DIR / "pods"), help="per-pod logs and kubeconfigs")
    parser.add_argument("--inherit-env", action="store_true", help="pass the agent's whole environment on")
    parser.add_argument("--delete-node-on-exit", action="store_true")
    parser.add_argument("--pid-file", default=None, help="default: .cache/cluster/agents/<node>.pid")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s nodeagent %(message)s"
    )
    pid_file = Path(args.pid_file) if args.pid_file else CLUSTER_DIR / "agents" / f"{args.node_name}.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    agent = Agent(args)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
