"""Kubeconfigs: the admin's (client certificate) and one for any ServiceAccount (a TokenRequest token).

``python -m tide_local.kubeconfig --namespace NS --service-account NAME [--out PATH]`` prints the path of a
kubeconfig that authenticates as ``system:serviceaccount:NS:NAME``, with exactly that account's RBAC.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import Any

import yaml

from tide_local.paths import CLUSTER_DIR


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _document(server: str, ca_file: Path, name: str, user: dict[str, str], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tide-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [
            {"name": name, "context": {"cluster": "tide-local", "user": name, "namespace": namespace}}
        ],
        "current-context": name,
    }


def write_cert_kubeconfig(path: Path, server: str, ca_file: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig that authenticates with a client certificate (embedded, so the file is portable)."""
    doc = _document(
        server,
        ca_file,
        user,
        {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)},
        "default",
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def _server_and_ca(admin_kubeconfig: Path) -> tuple[str, str]:
    doc = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    return str(cluster["server"]), str(cluster["certificate-authority-data"])


def admin_api_client(kubeconfig: Path | str | None = None) -> Any:
    """A fresh ``kubernetes.client.ApiClient`` for a kubeconfig (the cluster's admin one by default)."""
    from kubernetes import client, config

    path = Path(kubeconfig) if kubeconfig else CLUSTER_DIR / "kubeconfig"
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


def service_account_kubeconfig(
    namespace: str,
    name: str,
    *,
    admin_kubeconfig: Path | str | None = None,
    out: Path | str | None = None,
    expiration_seconds: int = 3600,
    create: bool = True,
) -> Path:
    """Issue a kubeconfig for the ServiceAccount ``namespace/name`` through the TokenRequest API.

    The ServiceAccount is created first when missing and ``create`` is true. The returned kubeconfig carries
    a bound token, so whoever uses it has exactly the permissions RBAC grants that account.
    """
    from tide_local.kube import Kube, KubeError

    admin_path = Path(admin_kubeconfig) if admin_kubeconfig else CLUSTER_DIR / "kubeconfig"
    kube = Kube(admin_path)
    if create:
        try:
            kube.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": expiration_seconds},
    }
    token = kube.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request)["status"][
        "token"
    ]

    server, ca_data = _server_and_ca(admin_path)
    user = f"system:serviceaccount:{namespace}:{name}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tide-local", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": user, "context": {"cluster": "tide-local", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    if out is None:
        directory = admin_path.parent / "serviceaccounts"
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / f"{namespace}_{name}.kubeconfig"
    out_path = Path(out)
    out_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out_path.chmod(0o600)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tide_local.kubeconfig", description=__doc__)
    parser.add_argument("--namespace", "-n", required=True)
    parser.add_argument("--service-account", required=True)
    parser.add_argument("--kubeconfig", help="admin kubeconfig (default .cache/cluster/kubeconfig)")
    parser.add_argument("--out", help="where to write the kubeconfig")
    parser.add_argument("--expiration-seconds", type=int, default=3600)
    parser.add_argument("--no-create", action="store_true", help="fail if the ServiceAccount is missing")
    args = parser.parse_args(argv)
    path = service_account_kubeconfig(
        args.namespace,
        args.service_account,
        admin_kubeconfig=args.kubeconfig,
        out=args.out,
        expiration_seconds=args.expiration_seconds,
        create=not args.no_create,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
