"""Start, reuse and stop the local control plane: etcd, kube-apiserver and kube-controller-manager.

``python -m tide_local.cluster up|down|status|env|kubectl ARGS...``. Everything lives under ``.cache/cluster/``: the PKI in
``pki/``, etcd's data, a log and a pid file per component, ``state.json`` (ports, pids) and the admin
``kubeconfig``. ``up`` is idempotent: a healthy cluster is reused; stale state is cleaned up and a fresh
cluster started. ``down`` stops the components (and any node agents) by pid, checking each pid still runs
the expected binary first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tide_local import build, certs
from tide_local.kube import Kube, KubeError
from tide_local.kubeconfig import admin_api_client, write_cert_kubeconfig
from tide_local.paths import CLUSTER_DIR, CLUSTER_LOCK
from tide_local.ports import free_port

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    # Idle without HorizontalPodAutoscalers (Tide makes none); KEDA's ScaledObjects drive it in bench/vs_keda.py.
    "horizontal-pod-autoscaler-controller",
)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE = "state.json"
AUTO_STOP = "auto-stop"
# TIDE_APISERVER_AUDIT=1: the apiserver logs every write (who, what, when) to audit.log in the cluster's
# directory, for benchmarks that count API writes per client (bench/vs_keda.py). Off by default.
AUDIT_ENV = "TIDE_APISERVER_AUDIT"
AUDIT_LOG = "audit.log"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted", "Panic"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"""  # marks a cluster started for test sessions: the last one to leave stops it

# Popen handles of the components this process started, kept so they are not reported as leaked.
_STARTED: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class ClusterInfo:
    """What a client needs to talk to the running cluster."""

    directory: Path
    server: str
    kubeconfig: Path
    ca_file: Path
    bin_dir: Path
    started: bool  # True when this call started the cluster, False when it reused a running one
    session: str | None = None  # the token `up(session=...)` registered; pass it to release()

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def api_client(self) -> Any:
        """A new admin ``kubernetes.client.ApiClient``; close it when done."""
        return admin_api_client(self.kubeconfig)

    def run_kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
        )


def _log(message: str) -> None:
    print(message, flush=True)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_runs(pid: int, expect: Callable[[list[str]], bool]) -> bool:
    """True when ``pid`` is alive (not a zombie) and its command line satisfies ``expect``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return expect(_cmdline(pid))


def _runs_binary(path: Path) -> Callable[[list[str]], bool]:
    return lambda argv: bool(argv) and argv[0] == str(path)


def stop_pid(pid: int, expect: Callable[[list[str]], bool], name: str, grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; only if the pid still runs what we expect."""
    if not pid_runs(pid, expect):
        return
    _log(f"==> stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_runs(pid, expect):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not pid_runs(pid, expect):
            return
        time.sleep(0.1)


def _ssl_context(pki: certs.Pki | None) -> ssl.SSLContext:
    if pki is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.client_cert("admin")), str(pki.client_key("admin")))
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (OSError, ssl.SSLError):
        return 0, ""


def _wait_for(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            raise RuntimeError(f"{what} exited during start-up; last lines of {log}:\n" + "\n".join(tail))
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {log}")


def _spawn(name: str, argv: Sequence[str], directory: Path) -> subprocess.Popen[bytes]:
    log = directory / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # survives the caller; `down` stops it by pid
        )
    _STARTED.append(proc)
    (directory / f"{name}.pid").write_text(str(proc.pid))
    return proc


def _read_state(directory: Path = CLUSTER_DIR) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((directory / STATE).read_text())
        return state
    except (OSError, ValueError):
        return None


def _info(state: dict[str, Any], directory: Path, started: bool) -> ClusterInfo:
    return ClusterInfo(
        directory=directory,
        server=state["server"],
        kubeconfig=directory / "kubeconfig",
        ca_file=directory / "pki" / "ca.crt",
        bin_dir=Path(state["bin_dir"]),
        started=started,
    )


def _healthy(state: dict[str, Any], directory: Path) -> bool:
    bin_dir = Path(state["bin_dir"])
    for name in COMPONENTS:
        pid = state.get("pids", {}).get(name)
        if not pid or not pid_runs(int(pid), _runs_binary(bin_dir / name)):
            return False
    pki = certs.Pki(directory / "pki")
    # A busy machine can make a shared, healthy cluster slow to answer: retry before declaring it broken
    # (which would make `up` restart it under the feet of other test sessions).
    deadline = time.monotonic() + 20
    while True:
        status, body = http_get(f"{state['server']}/readyz", _ssl_context(pki), timeout=5)
        if status == 200 and body.strip() == "ok":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def current() -> ClusterInfo | None:
    """The running, healthy cluster, or None."""
    state = _read_state()
    if state and _healthy(state, CLUSTER_DIR):
        return _info(state, CLUSTER_DIR, started=False)
    return None


def _stop_all(directory: Path) -> None:
    state = _read_state(directory) or {}
    # node agents started against this cluster register a pid file under agents/
    for pid_file in sorted((directory / "agents").glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            stop_pid(
                pid, lambda argv: "tide_local.nodeagent" in " ".join(argv), f"node agent {pid_file.stem}"
            )
        pid_file.unlink(missing_ok=True)
    bin_dir = Path(state["bin_dir"]) if state.get("bin_dir") else build.bin_dir()
    for name in reversed(COMPONENTS):
        component_pid: int | None = state.get("pids", {}).get(name)
        if component_pid is None:
            with contextlib.suppress(OSError, ValueError):
                component_pid = int((directory / f"{name}.pid").read_text().strip())
        if component_pid is not None:
            stop_pid(component_pid, _runs_binary(bin_dir / name), name)
        (directory / f"{name}.pid").unlink(missing_ok=True)
    (directory / STATE).unlink(missing_ok=True)


def up(verbose: bool = True, session: int | None = None, adopt: bool = False) -> ClusterInfo:
    """Reuse the healthy cluster or start a fresh one; build the binaries first when needed.

    ``session``: register that pid as a user of the cluster (see :func:`release`); a cluster started for a
    session is marked to be stopped when its last session releases it. ``adopt``: clear that mark, so the
    cluster stays up until ``down`` (what ``make cluster-up`` does).
    """
    started_at = time.monotonic()
    bin_dir = build.ensure_binaries()
    with build.file_lock(CLUSTER_LOCK, "starting the cluster"):
        state = _read_state()
        if state and _healthy(state, CLUSTER_DIR):
            if verbose:
                _log(
                    f"==> reusing the running cluster at {state['server']} (kubeconfig {CLUSTER_DIR / 'kubeconfig'})"
                )
            info = _info(state, CLUSTER_DIR, started=False)
        else:
            if state or CLUSTER_DIR.exists():
                if verbose:
                    _log("==> cleaning up stale cluster state")
                _stop_all(CLUSTER_DIR)
                shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
            info = _start(bin_dir, CLUSTER_DIR)
            if session is not None:
                (CLUSTER_DIR / AUTO_STOP).touch()
            if verbose:
                _log(f"==> cluster ready in {time.monotonic() - started_at:.1f}s at {info.server}")
                _log(
                    f"    kubectl --kubeconfig {info.kubeconfig} get --raw /readyz   (kubectl: {info.kubectl})"
                )
        if session is not None:
            info = dataclasses.replace(info, session=register_session(session))
        if adopt:
            (CLUSTER_DIR / AUTO_STOP).unlink(missing_ok=True)
    return info


def release(session: str | None, verbose: bool = True) -> bool:
    """The session ``up`` registered (``info.session``) stops using the cluster; stop the cluster when it was started for sessions, this was the
    last one, and ``TIDE_KEEP_CLUSTER`` is not set. True when it stopped the cluster."""
    with build.file_lock(CLUSTER_LOCK, "releasing the cluster"):
        if session:
            (CLUSTER_DIR / "sessions" / session).unlink(missing_ok=True)
        if live_sessions() or not (CLUSTER_DIR / AUTO_STOP).exists() or os.environ.get("TIDE_KEEP_CLUSTER"):
            return False
        _down_locked(verbose)
        return True


def _start(bin_dir: Path, directory: Path) -> ClusterInfo:
    directory.mkdir(parents=True, exist_ok=True)
    _log("==> generating the cluster's certificates and service-account keys")
    pki = certs.generate(directory / "pki")
    ports = {
        "etcd_client": free_port(),
        "etcd_peer": free_port(),
        "apiserver": free_port(),
        "controller_manager": free_port(),
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state: dict[str, Any] = {"bin_dir": str(bin_dir), "server": server, "ports": ports, "pids": {}}

    try:
        etcd_url = f"http://127.0.0.1:{ports['etcd_client']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        _log(f"==> starting etcd on {etcd_url}")
        etcd = _spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=tide-local",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=tide-local={peer_url}",
                "--unsafe-no-fsync=true",  # test cluster: speed over durability
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
            directory,
        )
        state["pids"]["etcd"] = etcd.pid
        _wait_for(
            "etcd",
            lambda: http_get(f"{etcd_url}/health")[0] == 200,
            30,
            lambda: etcd.poll() is None,
            directory / "logs" / "etcd.log",
        )

        _log(f"==> starting kube-apiserver on {server}")
        audit: list[str] = []
        if os.environ.get(AUDIT_ENV) == "1":
            (directory / "audit-policy.yaml").write_text(AUDIT_POLICY)
            audit = [
                f"--audit-policy-file={directory / 'audit-policy.yaml'}",
                f"--audit-log-path={directory / AUDIT_LOG}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        apiserver = _spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--cert-dir={directory / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--anonymous-auth=false",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                # The aggregation layer, for extension API servers (KEDA's external.metrics.k8s.io in
                # bench/vs_keda.py): front-proxy authentication, and the apiserver dials an APIService's
                # endpoints directly (no kube-proxy here). Inert while no APIService names a Service.
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
                f"--proxy-client-key-file={pki.front_proxy_client_key}",
                "--enable-aggregator-routing=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
                *audit,
            ],
            directory,
        )
        state["pids"]["kube-apiserver"] = apiserver.pid
        ctx = _ssl_context(pki)
        _wait_for(
            "kube-apiserver",
            lambda: http_get(f"{server}/readyz", ctx)[0] == 200,
            180,
            lambda: apiserver.poll() is None,
            directory / "logs" / "kube-apiserver.log",
        )

        kubeconfig = write_cert_kubeconfig(
            directory / "kubeconfig",
            server,
            pki.ca_cert,
            pki.client_cert("admin"),
            pki.client_key("admin"),
            "tide-admin",
        )
        cm_kubeconfig = write_cert_kubeconfig(
            directory / "controller-manager.kubeconfig",
            server,
            pki.ca_cert,
            pki.client_cert("controller-manager"),
            pki.client_key("controller-manager"),
            "system:kube-controller-manager",
        )

        _log("==> starting kube-controller-manager (" + ", ".join(CONTROLLERS) + ")")
        cm = _spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller_manager']}",
                f"--cert-dir={directory / 'controller-manager-certs'}",
                "--controllers=" + ",".join(CONTROLLERS),
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--concurrent-deployment-syncs=5",
                "--concurrent-replicaset-syncs=5",
                "--profiling=false",
                "--v=1",
            ],
            directory,
        )
        state["pids"]["kube-controller-manager"] = cm.pid
        _wait_for(
            "kube-controller-manager",
            lambda: (
                http_get(f"https://127.0.0.1:{ports['controller_manager']}/healthz", _ssl_context(None))[0]
                == 200
            ),
            60,
            lambda: cm.poll() is None,
            directory / "logs" / "kube-controller-manager.log",
        )
        (directory / STATE).write_text(json.dumps(state, indent=2))
        _wait_for_default_service_account(kubeconfig, cm, directory)
    except BaseException:
        (directory / STATE).write_text(json.dumps(state, indent=2))
        _stop_all(directory)
        raise
    return _info(state, directory, started=True)


def _wait_for_default_service_account(kubeconfig: Path, cm: subprocess.Popen[bytes], directory: Path) -> None:
    """Pods can only be admitted once the serviceaccount controller has created ``default``."""
    kube = Kube(kubeconfig)

    def ready() -> bool:
        try:
            kube.get("/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except KubeError:
            return False

    _wait_for(
        "the default ServiceAccount",
        ready,
        60,
        lambda: cm.poll() is None,
        directory / "logs" / "kube-controller-manager.log",
    )


def down(verbose: bool = True) -> None:
    """Stop every component and node agent by pid; keeps the logs for inspection."""
    with build.file_lock(CLUSTER_LOCK, "stopping the cluster"):
        _down_locked(verbose)


def _down_locked(verbose: bool) -> None:
    if not CLUSTER_DIR.exists():
        if verbose:
            _log("==> no cluster state; nothing to stop")
        return
    _stop_all(CLUSTER_DIR)
    for sub in ("etcd", "sessions"):
        shutil.rmtree(CLUSTER_DIR / sub, ignore_errors=True)
    (CLUSTER_DIR / "kubeconfig").unlink(missing_ok=True)
    (CLUSTER_DIR / AUTO_STOP).unlink(missing_ok=True)
    if verbose:
        _log("==> cluster stopped")


def status() -> dict[str, Any]:
    state = _read_state()
    if not state:
        return {"running": False}
    bin_dir = Path(state["bin_dir"])
    pids = {
        name: {"pid": pid, "alive": pid_runs(int(pid), _runs_binary(bin_dir / name))}
        for name, pid in state.get("pids", {}).items()
    }
    return {
        "running": _healthy(state, CLUSTER_DIR),
        "server": state["server"],
        "kubeconfig": str(CLUSTER_DIR / "kubeconfig"),
        "kubectl": str(bin_dir / "kubectl"),
        "components": pids,
    }


# --- sessions: test runs that share the cluster ------------------------------------------------------


def register_session(pid: int) -> str:
    """Record that process ``pid`` uses the cluster (a pytest session, a demo); returns the session's token.

    One process may hold several sessions (the e2e scenario inside a pytest session), so each gets its own
    entry: releasing one must not look like the last user leaving.
    """
    sessions = CLUSTER_DIR / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    token = f"{pid}-{uuid.uuid4().hex[:8]}"
    (sessions / token).write_text(" ".join(_cmdline(pid)))
    return token


def live_sessions() -> list[int]:
    """Pids of the live processes registered as using the cluster (stale entries are removed)."""
    sessions = CLUSTER_DIR / "sessions"
    others = []
    for entry in sessions.glob("*") if sessions.exists() else []:
        head = entry.name.split("-", 1)[0]
        other = int(head) if head.isdigit() else -1
        if other > 0 and pid_runs(other, lambda argv: bool(argv)):
            others.append(other)
        else:
            entry.unlink(missing_ok=True)
    return others


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tide_local.cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "kubectl"])
    parser.add_argument("--force", action="store_true", help="down: stop even while test sessions use it")
    parser.add_argument("kubectl_args", nargs=argparse.REMAINDER, help="kubectl: its arguments")
    args = parser.parse_args(argv)
    if args.command in ("env", "kubectl"):
        state = _read_state()
        if not state:
            print("no cluster running; make cluster-up", file=sys.stderr)
            return 1
        kubectl = Path(state["bin_dir"]) / "kubectl"
        if args.command == "env":  # eval "$(python -m tide_local.cluster env)"
            print(f"export KUBECONFIG={CLUSTER_DIR / 'kubeconfig'}")
            print(f"export PATH={kubectl.parent}:$PATH")
            return 0
        os.execv(kubectl, [str(kubectl), f"--kubeconfig={CLUSTER_DIR / 'kubeconfig'}", *args.kubectl_args])
    if args.command == "up":
        up(adopt=True)  # started or adopted by hand: test sessions must not stop it when they end
    elif args.command == "down":
        users = live_sessions()
        if users and not args.force:
            print(f"==> test sessions still use the cluster (pids {users}); not stopping (use --force)")
            return 1
        down()
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
