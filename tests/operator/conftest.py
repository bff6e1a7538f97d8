"""Fixtures for the operator tests: the CRDs installed on the local control plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


@pytest.fixture(scope="session")
def crds(cluster: Any) -> Any:
    """The QueueConsumer and kopf peering CRDs and the admission policy, applied; the CRDs established."""
    # Server-side apply owns the fields whoever created the CRDs first (the chart's tests install them
    # with helm), so the result is the same in any test order.
    res = cluster.run_kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=tide-tests",
        "-f", str(CRDS / "queueconsumer.yaml"), "-f", str(CRDS / "kopf-peering.yaml"),
        "-f", str(CRDS / "admission-policy.yaml"),
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"applying the CRDs failed: {res.stderr}"
    for name in ("queueconsumers.tide.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        cluster.run_kubectl("wait", "--for=condition=established", "--timeout=30s", f"crd/{name}")
    return cluster
