"""KEDA (operator and metrics API server) built from the pinned Go module in ``hack/keda`` and run as
local processes against the local control plane, for bench/vs_keda.py.

Nothing of KEDA is vendored: ``hack/keda/go.mod`` pins ``github.com/kedacore/keda/v2`` and the Go module
proxy serves it. The binaries land in ``.cache/keda/<version>/`` (a relink when Go's build cache is warm);
the CRDs are applied from the module's own ``config/crd/bases`` in the module cache.

:func:`start` applies the CRDs, runs ``keda`` (the operator, with its own certificate rotation writing the
KEDA CA and serving certificate into the run directory) and ``keda-adapter`` (the external metrics API
server), and registers ``v1beta1.external.metrics.k8s.io``: a Service without selector whose Endpoints name
this host's address (the apiserver routes to endpoints; the Endpoints API refuses loopback addresses).

Usage: ``python -m tide_local.keda`` builds and prints the binaries' directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tide_local.build import _build_one, _go, file_lock, pinned_version
from tide_local.certs import Pki
from tide_local.cluster import ClusterInfo, pid_runs, stop_pid
from tide_local.kube import Kube, KubeError
from tide_local.kubeconfig import write_cert_kubeconfig
from tide_local.paths import CACHE_DIR, REPO_ROOT
from tide_local.ports import free_port

KEDA_MODULE_DIR = REPO_ROOT / "hack" / "keda"
MODULE = "github.com/kedacore/keda/v2"
BINARIES = {"keda": f"{MODULE}/cmd/operator", "keda-adapter": f"{MODULE}/cmd/adapter"}
NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"
OPERATOR_SERVICE = "keda-operator"
CERT_SECRET = "kedaorg-certs"


def keda_version() -> str:
    return pinned_version(KEDA_MODULE_DIR, "github.com/kedacore/keda/v2")


def ensure_keda() -> Path:
    """Directory holding the ``keda`` and ``keda-adapter`` binaries, building them first if needed."""
    version = keda_version()
    directory = CACHE_DIR / "keda" / version
    if all(os.access(directory / name, os.X_OK) for name in BINARIES):
        return directory
    with file_lock(CACHE_DIR / "keda" / ".build.lock", "building KEDA"):
        directory.mkdir(parents=True, exist_ok=True)
        ldflags = f"-s -w -X={MODULE}/version.Version={version}"
        for name, package in BINARIES.items():
            if not os.access(directory / name, os.X_OK):
                _build_one(_go(), name, package, directory / name, ldflags, cwd=KEDA_MODULE_DIR)
    return directory


def module_dir() -> Path:
    """KEDA's source in the Go module cache (downloaded through the proxy when missing)."""
    out = subprocess.run(
        [_go(), "mod", "download", "-json", f"{MODULE}@{keda_version()}"],
        cwd=KEDA_MODULE_DIR,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["Dir"])


def crd_files() -> list[Path]:
    return sorted((module_dir() / "config" / "crd" / "bases").glob("*.yaml"))


def host_address() -> str:
    """This host's non-loopback IPv4 address (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
            address = str(sock.getsockname()[0])
        except OSError as exc:
            raise RuntimeError(
                f"no non-loopback IPv4 address to register KEDA's metrics API server: {exc}"
            ) from exc
    if address.startswith("127."):
        raise RuntimeError("only a loopback address here; the Endpoints API refuses it for the APIService")
    return address


@dataclass
class Keda:
    """The running operator and metrics API server."""

    directory: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs.values())

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            binary = str(proc.args[0]) if isinstance(proc.args, list) else ""

            def runs(argv: list[str], binary: str = binary) -> bool:
                return bool(argv) and argv[0] == binary

            stop_pid(proc.pid, runs, name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _wait(what: str, check: Callable[[], bool], timeout: float, keda: Keda) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KubeError, OSError, ValueError):
            if check():
                return
        if not keda.alive():
            tails = {n: keda.log(n).read_text(errors="replace").splitlines()[-20:] for n in keda.procs}
            raise RuntimeError(f"KEDA exited while waiting for {what}: {json.dumps(tails, indent=1)}")
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {keda.directory}")


def _secret_data(kube: Kube, path: str) -> dict[str, str]:
    try:
        data: dict[str, str] = kube.get(path).get("data") or {}
    except KubeError:
        return {}
    return data


def _spawn(keda: Keda, name: str, argv: list[str], env: dict[str, str]) -> None:
    with keda.log(name).open("ab") as out:
        keda.procs[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=keda.directory
        )


def _apply(cluster: ClusterInfo, manifest: dict[str, object] | Path) -> None:
    if isinstance(manifest, Path):
        cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
        return
    subprocess.run(
        [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
        input=json.dumps(manifest),
        check=True,
        capture_output=True,
        text=True,
    )


def start(cluster: ClusterInfo, directory: Path) -> Keda:
    """Apply KEDA's CRDs, start its operator and metrics API server, register the external metrics API."""
    bins = ensure_keda()
    directory.mkdir(parents=True, exist_ok=True)
    certs = directory / "certs"
    (directory / "ca").mkdir(exist_ok=True)  # --ca-dir: no extra CAs for scalers
    for crd in crd_files():
        _apply(cluster, crd)
    _apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})

    kube = Kube(cluster.kubeconfig)
    pki = Pki(cluster.directory / "pki")
    # KEDA's own user ("keda", in system:masters), so the API audit tells its writes from the bench's
    kubeconfig = write_cert_kubeconfig(
        directory / "kubeconfig",
        cluster.server,
        pki.ca_cert,
        pki.client_cert("keda"),
        pki.client_key("keda"),
        "keda",
    )
    address = host_address()
    ports = {name: free_port() for name in ("metrics", "probe", "grpc", "adapter", "adapter_metrics")}
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        "WATCH_NAMESPACE": "",
    }
    keda = Keda(directory)
    try:
        operator_argv = [
            str(bins / "keda"),
            "--leader-elect=false",
            "--zap-log-level=info",
            "--zap-encoder=console",
            "--enable-cert-rotation=true",
            f"--cert-dir={certs}",
            f"--ca-dir={directory / 'ca'}",
            "--enable-webhook-patching=false",
            f"--metrics-bind-address=127.0.0.1:{ports['metrics']}",
            f"--health-probe-bind-address=127.0.0.1:{ports['probe']}",
            f"--metrics-service-bind-address=127.0.0.1:{ports['grpc']}",
        ]
        _spawn(keda, "keda-operator", operator_argv, env)
        # KEDA's cert rotation writes its CA and serving certificate into a Secret and, in a pod, exits so
        # the kubelet restarts it with the Secret mounted at --cert-dir. Here: mount it (write the files)
        # and restart it once it has exited; the second run finds the Secret valid and the files matching.
        secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{CERT_SECRET}"
        operator = keda.procs["keda-operator"]
        deadline = time.monotonic() + 120
        while "tls.crt" not in _secret_data(kube, secret_path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"KEDA wrote no {CERT_SECRET} Secret; see {keda.log('keda-operator')}")
            time.sleep(0.5)
        certs.mkdir(parents=True, exist_ok=True)
        for key, value in _secret_data(kube, secret_path).items():
            (certs / key).write_bytes(base64.b64decode(value))
        with contextlib.suppress(subprocess.TimeoutExpired):
            operator.wait(timeout=15)
        if operator.poll() is not None:
            _spawn(keda, "keda-operator", operator_argv, env)
        time.sleep(3)
        if not keda.alive():
            raise RuntimeError(f"KEDA's operator exited after its restart; see {keda.log('keda-operator')}")

        # The aggregated API: a Service without selector, its Endpoints this host's address.
        _apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ports["adapter"]}]},
            },
        )
        _apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
                "subsets": [
                    {"addresses": [{"ip": address}], "ports": [{"name": "https", "port": ports["adapter"]}]}
                ],
            },
        )
        _apply(
            cluster,
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{METRICS_SERVICE}-local",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": METRICS_SERVICE},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": ports["adapter"], "protocol": "TCP"}],
            },
        )
        _spawn(
            keda,
            "keda-adapter",
            [
                str(bins / "keda-adapter"),
                f"--secure-port={ports['adapter']}",
                "--bind-address=0.0.0.0",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{ports['grpc']}",
                f"--metrics-service-grpc-authority={OPERATOR_SERVICE}.{NAMESPACE}.svc.cluster.local",
                f"--port={ports['adapter_metrics']}",
                "--zap-log-level=info",
            ],
            env,
        )
        ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        _apply(
            cluster,
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": APISERVICE},
                "spec": {
                    "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "caBundle": ca_bundle,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        )

        def available() -> bool:
            status = kube.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}").get("status", {})
            return any(
                c.get("type") == "Available" and c.get("status") == "True"
                for c in status.get("conditions", [])
            )

        _wait(f"APIService {APISERVICE} Available", available, 120, keda)
    except BaseException:
        keda.stop()
        raise
    return keda


def running(pid: int, binary: Path) -> bool:
    return pid_runs(pid, lambda argv: bool(argv) and argv[0] == str(binary))


def main(argv: list[str] | None = None) -> int:
    del argv
    print(ensure_keda())
    return 0


if __name__ == "__main__":
    sys.exit(main())
