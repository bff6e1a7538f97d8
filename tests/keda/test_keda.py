"""KEDA v2.21.0 on the local stack: the aggregation layer serves its external metrics API, and its redis
scaler reads a real list through it. Slow: builds KEDA on first use (~7 min cold) and starts a cluster of
its own, so the shared one gets no cluster-wide APIService or CRDs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# past the suite's 300 s per test: a cold build of KEDA alone takes ~7 min (the probe's own bound is 1,500 s)
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1600)]

ROOT = Path(__file__).resolve().parents[2]


def test_keda_reads_a_redis_list_through_the_aggregated_external_metrics_api(tmp_path):
    env = {**os.environ, "TIDE_CLUSTER_DIR": str(tmp_path / "cluster"), "PYTHONPATH": str(ROOT)}
    env.pop("TIDE_KEEP_CLUSTER", None)
    res = subprocess.run(
        [sys.executable, "-m", "tests.keda.probe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert res.returncode == 0, f"probe failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    lines = [line for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"the probe printed no result:\n{res.stdout[-4000:]}"
    out = json.loads(lines[-1].removeprefix("PROBE "))
    assert out["value"] == "25", out  # LLEN of the list, as KEDA's metrics server reports it
    assert out["hpa_target"] == "probe"
    assert out["replicas"] >= 1, "KEDA did not activate the Deployment from zero"
