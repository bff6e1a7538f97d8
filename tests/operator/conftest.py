"""Fixtures for the operator tests: the CRDs installed on the local control plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


@pytest.fixture(scope="session")
def crds(cluster: Any) -> Any:
    """The QueueConsumer and kopf peering CRDs, applied and established."""
    cluster.run_kubectl(
        "apply", "-f", str(CRDS / "queueconsumer.yaml"), "-f", str(CRDS / "kopf-peering.yaml")
    )
    for name in ("queueconsumers.tide.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        cluster.run_kubectl("wait", "--for=condition=established", "--timeout=30s", f"crd/{name}")
    return cluster
