"""The operator's Kubernetes client keeps a lane of connections for ``/scale`` writes (``kube.LANES``), so a
burst's scale-ups never wait on the client side behind other requests. Against the real API server: every
connection of the other lane held by a long watch, a ``PATCH /scale`` still goes through while they all
hang; and the re-read period that keeps the idle ``GET /scale`` rate bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tide_operator.consumer import SCALE_REREAD_SECONDS, SCALE_REREADS_PER_SECOND, reread_period
from tide_operator.kube import LANES, Kube, api_path
from tide_operator.spec import TargetRef

from tests.operator.operator_harness import Api, deployment


@pytest.mark.cluster
def test_a_scale_write_passes_while_every_other_connection_is_held(
    cluster: Any, namespace: str, k8s: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    Api(k8s, namespace).create_deployment(deployment("w", {}))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    watch = api_path("api", "v1", "namespaces", namespace, "configmaps") + "?watch=1&timeoutSeconds=20"

    async def run() -> tuple[int, int]:
        kube = Kube()
        try:
            target = TargetRef("apps/v1", "Deployment", "w")
            await kube.get_replicas(namespace, target)  # discovery first, on the other lane
            # more watches than the other lane's connections: all of them busy, some queued behind
            held = [
                asyncio.create_task(kube.request("GET", watch, parse=False))
                for _ in range(LANES["other"] + 4)
            ]
            await asyncio.sleep(1.0)
            replicas = await asyncio.wait_for(kube.set_replicas(namespace, target, 2), timeout=15)
            hanging = sum(not t.done() for t in held)
            for t in held:
                t.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            return replicas, hanging
        finally:
            await kube.close()

    replicas, hanging = asyncio.run(run())
    assert replicas == 2
    assert hanging == LANES["other"] + 4  # the write did not wait for any of them


@pytest.mark.parametrize(
    "resources,period",
    [(1, SCALE_REREAD_SECONDS), (600, SCALE_REREAD_SECONDS), (1_000, 50.0), (10_000, 500.0)],
)
def test_re_reads_stay_within_their_rate(resources: int, period: float) -> None:
    """Every 30 s up to 600 resources, then as many re-reads a second as SCALE_REREADS_PER_SECOND."""
    assert reread_period(resources) == period
    assert resources / period <= max(SCALE_REREADS_PER_SECOND, resources / SCALE_REREAD_SECONDS)
