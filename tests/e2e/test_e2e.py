"""The end-to-end scenario on the local stack (and, with TIDE_E2E_BACKEND=kind, on kind)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e import scenario
from tests.e2e.backends import KindBackend, LocalBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_burst_absorbed_with_chaos_nothing_lost(cluster: object) -> None:
    backend: LocalBackend | KindBackend
    if os.environ.get("TIDE_E2E_BACKEND") == "kind":
        missing = KindBackend.missing()
        if missing:
            pytest.fail("make e2e-kind needs: " + ", ".join(missing))
        backend = KindBackend()
    else:
        backend = LocalBackend()
    messages = int(os.environ.get("TIDE_E2E_MESSAGES", "50000"))
    try:
        backend.setup()
        out = scenario.run(backend, scenario.Config(messages=messages))
    finally:
        backend.teardown()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"e2e-{backend.name}.json").write_text(out.to_json())
    print(json.dumps(out.summary(), indent=2))
    scenario.check(out)
