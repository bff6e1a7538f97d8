"""The operator's credentials (``kube.connection_info``) from a kubeconfig, against the real API server."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from tide_operator.kube import Kube, api_path, connection_info

pytestmark = [pytest.mark.cluster]


def test_relative_certificate_paths_are_read_from_the_kubeconfigs_folder(cluster, tmp_path, monkeypatch):
    """As kubectl reads them: a kubeconfig whose CA, client certificate and key are files beside it, named
    by relative paths, works from any working directory."""
    doc: dict[str, Any] = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    folder = tmp_path / "conf"
    (folder / "pki").mkdir(parents=True)
    user = doc["users"][0]["user"]
    for key, name in (
        ("certificate-authority-data", "ca.crt"),
        ("client-certificate-data", "client.crt"),
        ("client-key-data", "client.key"),
    ):
        source = doc["clusters"][0]["cluster"] if key.startswith("certificate-authority") else user
        (folder / "pki" / name).write_bytes(base64.b64decode(source.pop(key)))
        source[key.removesuffix("-data")] = f"pki/{name}"
    (folder / "config").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("KUBECONFIG", str(folder / "config"))
    monkeypatch.chdir(tmp_path)  # not the kubeconfig's folder: "pki/ca.crt" does not resolve here
    info = connection_info()
    assert info.ca_path == str(folder / "pki" / "ca.crt")
    assert info.certificate_path == str(folder / "pki" / "client.crt")

    async def version() -> dict[str, Any]:
        kube = Kube()
        try:
            return await kube.request("GET", api_path("version"))
        finally:
            await kube.close()

    assert asyncio.run(version())["major"] == "1"
