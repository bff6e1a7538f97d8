"""Sharded replicas (``TIDE_SHARDS``): real operator processes share 40 QueueConsumers through shard Leases
on the real kube-apiserver. Every resource is served (and scaled) by exactly one replica, the 8 shards split
4/4; a SIGKILLed replica's shards are taken over once its leases expire; a replica started later gets its
share back, and at no moment do two processes run the loop of one resource (loop start/end lines, with
their timestamps, from each process's log)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tide_operator.shard import lease_of, shard_of

from tests.operator.operator_harness import (
    ROOT,
    Api,
    Operator,
    deployment,
    kubectl,
    operator_rbac,
    qc,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHARDS, RESOURCES, LIFETIME = 8, 40, 9
PREFIX = "tide-operator"  # TIDE_SHARD_LEASE_PREFIX's default
NAMES = [f"qc-{i}" for i in range(RESOURCES)]
# kopf's log line: "[2026-12-07 00:51:02,345] tide_operator        [DEBUG   ] [ns/qc-3] loop started"
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] .*?\[([^\]/]+)/([^\]]+)\] (.*)$")


def holders(api: Api) -> dict[int, str]:
    """Shard -> the holder of its unexpired Lease (from the API server: the truth every replica acts on)."""
    from kubernetes import client

    now = time.time()
    out = {}
    for obj in client.CoordinationV1Api(api.apps.api_client).list_namespaced_lease(api.ns).items:
        lease = lease_of(obj.to_dict() | {"spec": _spec(obj)})
        if lease.name.startswith(f"{PREFIX}-shard-") and lease.holder and lease.expires > now:
            out[int(lease.name.rsplit("-", 1)[1])] = lease.holder
    return out


def _spec(obj: Any) -> dict[str, Any]:
    spec = obj.spec
    renewed = spec.renew_time.isoformat() if spec.renew_time else None
    return {
        "holderIdentity": spec.holder_identity,
        "renewTime": renewed,
        "leaseDurationSeconds": spec.lease_duration_seconds,
    }


def shards_of(api: Api, op: Operator) -> set[int] | None:
    """The shards whose Lease names ``op`` as holder (None once it exited)."""
    if op.proc.poll() is not None:
        return None
    return {i for i, who in holders(api).items() if who == op.log_path.stem.removeprefix("operator-")}


def start(kubeconfig: Path, ns: str, tmp_path: Path, name: str) -> Operator:
    return Operator(
        kubeconfig,
        ns,
        tmp_path / f"operator-{name}.log",
        env={
            "TIDE_SHARDS": str(SHARDS),
            "TIDE_SHARD_NAMESPACE": ns,
            "POD_NAME": name,
            "TIDE_PEERING_LIFETIME": str(LIFETIME),
            "TIDE_OPERATOR_SCOPE": "namespaced",
            "TIDE_OPERATOR_LOG_LEVEL": "DEBUG",
        },
    )


def events(op: Operator) -> list[tuple[float, str, str]]:
    """(epoch time, resource name, message) of the per-resource lines of one process's log."""
    out = []
    for line in op.log().splitlines():
        m = LINE.match(line)
        if m:
            when = dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((when, m[3], m[4]))
    return out


def intervals(op: Operator, killed_at: float | None = None) -> dict[str, list[tuple[float, float]]]:
    """Per resource, when this process ran its loop: from "loop started" to "loop ended" (or its kill,
    or now)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    open_: dict[str, float] = {}
    for when, name, msg in events(op):
        if msg == "loop started":
            assert name not in open_, f"{op.log_path.name}: two loops of {name} at once"
            open_[name] = when
        elif msg == "loop ended" and name in open_:
            spans.setdefault(name, []).append((open_.pop(name), when))
    end = killed_at if killed_at is not None else time.time() + 1
    for name, since in open_.items():
        spans.setdefault(name, []).append((since, end))
    return spans


def assert_never_two_at_once(*ops: tuple[Operator, float | None]) -> None:
    spans = [intervals(op, killed) for op, killed in ops]
    for name in NAMES:
        runs = sorted(s for per in spans for s in per.get(name, []))
        for (a0, a1), (b0, b1) in itertools.pairwise(runs):
            # a log line's time is to the millisecond: strict order, with that much slack
            assert b0 >= a1 - 0.001, f"{name}: loops at once {a0}-{a1} and {b0}-{b1}"


def scaled_by(ops: list[Operator], arrow: str) -> dict[str, list[str]]:
    """Resource -> the processes that logged its "Scaled ... <arrow>" line."""
    who: dict[str, list[str]] = {}
    for op in ops:
        for _, name, msg in events(op):
            if msg.startswith("Scaled") and arrow in msg:
                who.setdefault(name, []).append(op.log_path.stem)
    return who


def split(api: Api, *ops: Operator) -> bool:
    """Each live process holds SHARDS / len(ops) shards, and together all of them, none twice."""
    held = [shards_of(api, op) for op in ops]
    if any(h is None for h in held):
        return False
    sets = [h for h in held if h is not None]
    return sorted(i for s in sets for i in s) == list(range(SHARDS)) and all(
        len(s) == SHARDS // len(ops) for s in sets
    )


def push(r: redis.Redis, n: int) -> None:
    with r.pipeline() as p:
        for name in NAMES:
            p.lpush(f"list-{name}", *range(n))
        p.execute()


def burst_scaled_by(
    api: Api, r: redis.Redis, ops: list[Operator], n: int, target: int, arrow: str
) -> dict[str, list[str]]:
    """Push ``n`` onto every queue, wait until every target is at ``target``, and return which processes
    logged ``arrow`` for each resource; every resource must have been scaled."""
    push(r, n)
    wait_for(
        f"every target at {target}", lambda: set(replicas(api).values()) == {target}, timeout=60, interval=0.5
    )
    who = scaled_by(ops, arrow)
    assert sorted(who) == sorted(NAMES), who
    return who


def replicas(api: Api) -> dict[str, int]:
    return {
        d.metadata.name: int(d.spec.replicas or 0) for d in api.apps.list_namespaced_deployment(api.ns).items
    }


@pytest.fixture
def fleet(
    crds: Any, namespace: str, k8s: Any, sa_kubeconfig: Any, redis_url: str
) -> Iterator[tuple[Api, Path]]:
    api = Api(k8s, namespace)
    for name in NAMES:
        api.create_deployment(deployment(f"w-{name}", {}))
        api.create_qc(
            qc(
                name,
                redis_url,
                {"list": {"key": f"list-{name}"}},
                {"targetBacklogPerReplica": 10, "maxReplicas": 10, "cooldownSeconds": 600},
                target=f"w-{name}",
            )
        )
    text = (ROOT / "crds/rbac/role-shard-leases.yaml").read_text().replace("NAMESPACE", namespace)
    kubectl(crds, "apply", "-f", "-", input=text)
    with operator_rbac(crds, namespace, sa_kubeconfig, namespaced=True) as kubeconfig:
        yield api, kubeconfig


def test_replicas_share_the_resources_take_over_and_hand_back(
    fleet: tuple[Api, Path], redis_url: str, tmp_path: Path
) -> None:
    api, kubeconfig = fleet
    ops: list[Operator] = []
    try:
        a = start(kubeconfig, api.ns, tmp_path, "op-a")
        b = start(kubeconfig, api.ns, tmp_path, "op-b")
        ops += [a, b]
        wait_for(
            "8 shards split 4/4 between op-a and op-b", lambda: split(api, a, b), timeout=90, interval=0.5
        )
        owner = {0: a, 1: b}
        held_a = shards_of(api, a) or set()
        mine_a = {n for n in NAMES if shard_of(api.ns, n, SHARDS) in held_a}
        assert 0 < len(mine_a) < RESOURCES

        # every resource scaled, each by the one replica that holds its shard
        with redis.Redis.from_url(redis_url) as r:
            who = burst_scaled_by(api, r, [a, b], 30, 3, "0 -> 3")
            for name, procs in who.items():
                assert procs == [(a if name in mine_a else b).log_path.stem], (name, procs)
            del owner

            # SIGKILL op-a: op-b takes its shards once their leases expire, and scales its resources
            a.kill()
            killed = time.time()
            wait_for(
                "op-b holds all 8 shards",
                lambda: shards_of(api, b) == set(range(SHARDS)),
                timeout=LIFETIME * 3,
            )
            took = time.time() - killed
            print(f"takeover after SIGKILL: {took:.1f}s (lifetime {LIFETIME}s)")
            # a behaviour bound, not a speed figure: the lifetime plus one renew round and slack
            assert took < LIFETIME + LIFETIME / 3 + 3, took
            who = burst_scaled_by(api, r, [a, b], 20, 5, "3 -> 5")
            assert all(p == ["operator-op-b"] for p in who.values()), who

            # a new replica gets its share back; op-b releases only after its loops ended
            c = start(kubeconfig, api.ns, tmp_path, "op-c")
            ops.append(c)
            wait_for(
                "8 shards split 4/4 between op-b and op-c", lambda: split(api, b, c), timeout=90, interval=0.5
            )
            held_c = shards_of(api, c) or set()
            mine_c = {n for n in NAMES if shard_of(api.ns, n, SHARDS) in held_c}
            who = burst_scaled_by(api, r, [a, b, c], 20, 7, "5 -> 7")
            for name, procs in who.items():
                assert procs == [("operator-op-c" if name in mine_c else "operator-op-b")], (name, procs)
            # nothing else moved the counts: one "Scaled" line per resource and step across all processes
            for arrow in ("0 -> 3", "3 -> 5", "5 -> 7"):
                assert all(len(p) == 1 for p in scaled_by([a, b, c], arrow).values()), arrow
        assert_never_two_at_once((a, killed), (b, None), (c, None))
        # op-b's loops of op-c's shards ended; op-a's ran until the kill and op-b's started after it
        spans_b = intervals(b)
        for name in mine_c:
            assert spans_b[name][-1][1] < time.time(), name
        for name in mine_a:
            assert min(s[0] for s in spans_b[name]) >= killed - 0.001, name
    finally:
        for op in ops:
            op.stop()
            print(f"--- {op.log_path.name}\n{op.log()[-3000:]}")


def test_sharding_refuses_kopf_peering(fleet: tuple[Api, Path], tmp_path: Path) -> None:
    """TIDE_SHARDS with kopf's peering would pause all but one replica: the operator says so and stops."""
    api, kubeconfig = fleet
    op = Operator(
        kubeconfig,
        api.ns,
        tmp_path / "operator.log",
        extra=("--peering=tide",),
        env={"TIDE_SHARDS": "8", "TIDE_SHARD_NAMESPACE": api.ns, "TIDE_OPERATOR_SCOPE": "namespaced"},
    )
    try:
        wait_for("the operator exits", lambda: op.proc.poll() is not None, timeout=60)
        assert "TIDE_SHARDS needs `kopf run --standalone`" in op.log()
    finally:
        op.stop()


def scale_patches(op: Operator) -> float:
    """The PATCHes of /scale this process made (its tide_kube_requests_total)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r'tide_kube_requests_total\{[^}]*resource="scale"[^}]*verb="PATCH"[^}]*\} (\S+)', text)
    m = m or re.search(r'tide_kube_requests_total\{[^}]*verb="PATCH"[^}]*resource="scale"[^}]*\} (\S+)', text)
    return float(m[1]) if m else 0.0


def test_a_stalled_replica_writes_nothing_once_its_shards_are_taken(
    fleet: tuple[Api, Path], redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP one replica past its lease lifetime while a burst waits on every queue: the other takes its
    shards and scales everything; on SIGCONT the stalled one stops its loops before they write (its /scale
    PATCH count does not move), then gets its share back."""
    api, kubeconfig = fleet
    ops: list[Operator] = []
    try:
        a = start(kubeconfig, api.ns, tmp_path, "op-a")
        b = start(kubeconfig, api.ns, tmp_path, "op-b")
        ops += [a, b]
        wait_for("8 shards split 4/4", lambda: split(api, a, b), timeout=90, interval=0.5)
        time.sleep(3)  # every loop past its first poll
        before = scale_patches(a)
        with redis.Redis.from_url(redis_url) as r:
            a.proc.send_signal(signal.SIGSTOP)
            stopped = time.time()
            try:
                push(r, 30)
                wait_for(
                    "op-b holds all 8",
                    lambda: len(holders(api)) == 8 and set(holders(api).values()) == {"op-b"},
                    timeout=LIFETIME * 3,
                    interval=0.5,
                )
                wait_for(
                    "every target at 3", lambda: set(replicas(api).values()) == {3}, timeout=60, interval=0.5
                )
            finally:
                a.proc.send_signal(signal.SIGCONT)
            resumed = time.time()
            assert resumed - stopped > LIFETIME
            wait_for("op-a back with its share", lambda: split(api, a, b), timeout=90, interval=0.5)
            # op-a's loops saw the backlog when they woke, but were stopped and cancelled before writing
            assert scale_patches(a) == before, a.log()[-3000:]
            log = a.log()
            assert "stopping their loops before they expire" in log or "stopping its loops now" in log, log[
                -3000:
            ]
            who = scaled_by([a, b], "0 -> 3")
            assert sorted(who) == sorted(NAMES) and all(p == ["operator-op-b"] for p in who.values()), who
            # and, served by two again, every resource scales once more, by one of them
            held_a = shards_of(api, a) or set()
            who = burst_scaled_by(api, r, [a, b], 20, 5, "3 -> 5")
            for name, procs in who.items():
                mine = shard_of(api.ns, name, SHARDS) in held_a
                assert procs == ["operator-op-a" if mine else "operator-op-b"], (name, procs)
    finally:
        for op in ops:
            op.stop()
            print(f"--- {op.log_path.name}\n{op.log()[-3000:]}")


def test_a_write_behind_a_lapsed_lease_is_not_sent(
    cluster: Any, namespace: str, k8s: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write fence a sharded fleet sets in each loop's context (kube.WRITE_FENCE): once the loop's
    shard lease lapses, its next /scale PATCH raises FencedOff before anything is sent; reads still go."""
    import asyncio

    from tide_operator.kube import WRITE_FENCE, FencedOff, Kube, api_path

    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))  # what kube.connection_info reads
    lease_valid = [True]

    async def go() -> int:
        kube = Kube()
        token = WRITE_FENCE.set(lambda: lease_valid[0])
        path = api_path("apis", "apps", "v1", "namespaces", namespace, "deployments", "w", "scale")
        try:
            await kube.request("PATCH", path, {"spec": {"replicas": 2}}, resource="scale")
            lease_valid[0] = False
            with pytest.raises(FencedOff, match="not sent"):
                await kube.request("PATCH", path, {"spec": {"replicas": 5}}, resource="scale")
            scale = await kube.request("GET", path, resource="scale")
            return int(scale["spec"]["replicas"])
        finally:
            WRITE_FENCE.reset(token)
            await kube.close()

    assert asyncio.run(go()) == 2
    assert api.replicas() == 2
