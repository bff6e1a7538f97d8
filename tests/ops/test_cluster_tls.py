"""The producer, stats and dead letters on Redis Cluster (hash tags keep a queue in one slot) and TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster as ClusterClient
from tide_local.redisproc import RedisCluster, RedisServer, TLSFiles
from tide_worker import ops
from tide_worker.connection import RedisSettings, sync_client
from tide_worker.envelope import decode
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.producer import Producer

from tests.ops.cli_helpers import run_proc
from tests.ops.conftest import now, seed_dead, seed_worker


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[ClusterClient]:
    client = sync_client(RedisSettings(url=redis_cluster.url, cluster=True))
    assert isinstance(client, ClusterClient)
    yield client
    client.close()


def test_cluster_producer_stats_and_dlq(redis_cluster: RedisCluster, cluster_client: ClusterClient) -> None:
    c = cluster_client
    # One queue per node (one with its own hash tag), and each queue's keys share its slot.
    by_port: dict[int, str] = {}
    for name in ["{tenant}:jobs", *(f"queue:{i}" for i in range(100))]:
        by_port.setdefault(c.get_node_from_key(name).port, name)
    queues = list(by_port.values())
    assert len(queues) == 3 and "{tenant}:jobs" in queues
    slots = {q: c.keyslot(q) for q in queues}
    for q in queues:
        k = QueueKeys(q)
        assert {c.keyslot(x) for x in (k.processing("w"), k.dead, k.delayed, k.workers)} == {slots[q]}

    t = now()
    for q in queues:
        p = Producer(c)
        ids = p.enqueue_many(q, range(2500), chunk=1000)
        p.enqueue(q, "later", delay=60)
        seed_worker(c, q, "w1", held=2, rate=3.0, now=t)
        c.lpush(QueueKeys(q).processing("orphan"), b"x")  # found by SCAN across the nodes
        seed_dead(c, q, 1200)
        s = ops.queue_stats(c, q, now=t)
        assert (s["ready"], s["in_flight"], s["delayed"], s["dead"]) == (2500, 3, 1, 1200), q
        assert decode(c.rpop(q) or b"").id == ids[0]

        assert ops.dlq_requeue(c, q, count=700, batch=300) == 700
        assert ops.dlq_list(c, q, limit=1)[0].message_id == "m1199"
        assert ops.dlq_purge(c, q, chunk=200) == 500
        assert c.llen(q) == 2499 + 700 and c.llen(QueueKeys(q).dead) == 0

    Producer(c).xadd_many("events", range(50), maxlen=10)
    c.xgroup_create("events", "g", id="0")
    c.xadd(StreamKeys("events", "g").dead, {"message": "m", "encoding": "utf-8", "reason": "failed"})
    s = ops.stream_stats(c, "events", "g")
    assert s["lag"] == s["length"] > 0 and s["dead"] == 1
    assert ops.stream_dlq_requeue(c, "events") == 1


def test_cluster_cli(redis_cluster: RedisCluster, cluster_client: ClusterClient) -> None:
    env = {"TIDE_REDIS_URL": redis_cluster.url, "TIDE_REDIS_CLUSTER": "true"}
    proc = run_proc(["enqueue", "-q", "orders", "a", "b"], env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_proc(["stats", "-q", "orders", "--json"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ready"] == 2
    seed_dead(cluster_client, "orders", 3)
    proc = run_proc(["dlq", "requeue", "-q", "orders", "--redis-url", redis_cluster.url, "--redis-cluster"])
    assert proc.returncode == 0, proc.stderr
    assert cluster_client.llen("orders") == 5
    proc = run_proc(["stats", "-q", "orders", "--json", "--redis-url", redis_cluster.url, "--redis-cluster"])
    assert proc.returncode == 0 and json.loads(proc.stdout)["ready"] == 5, proc.stderr
    # Without --redis-cluster the node answers MOVED for a slot it does not own; the CLI says so in one line.
    other = next(n for n in redis_cluster.nodes if n.port != cluster_client.get_node_from_key("orders").port)
    proc = run_proc(["stats", "-q", "orders", "--redis-url", other.url])
    assert proc.returncode == 1 and "add --redis-cluster" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def tls_auth(tls_files: TLSFiles) -> Iterator[RedisServer]:
    with RedisServer(
        tls=tls_files, password="defpass", extra_args=["--user", "bob", "on", ">bobpw", "~*", "&*", "+@all"]
    ) as s:
        yield s


def test_tls_with_credentials_from_url_and_env(tls_auth: RedisServer, tls_files: TLSFiles) -> None:
    ca = str(tls_files.ca_cert)
    bare = f"rediss://127.0.0.1:{tls_auth.port}/0"
    with_creds = f"rediss://bob:bobpw@127.0.0.1:{tls_auth.port}/0"

    client = sync_client(RedisSettings(url=with_creds, ca_file=ca))
    Producer(client).enqueue_many("secure", ["a", "b"])
    seed_dead(client, "secure", 2)
    assert ops.queue_stats(client, "secure")["ready"] == 2
    client.close()

    proc = run_proc(["enqueue", "-q", "secure", "c", "--redis-url", with_creds, "--redis-ca-file", ca])
    assert proc.returncode == 0, proc.stderr
    env = {
        "TIDE_REDIS_URL": bare,
        "TIDE_REDIS_CA_FILE": ca,
        "TIDE_REDIS_USERNAME": "bob",
        "TIDE_REDIS_PASSWORD": "bobpw",
    }
    proc = run_proc(["dlq", "requeue", "-q", "secure"], env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_proc(["stats", "-q", "secure", "--json"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ready"] == 5

    # Without the CA the certificate cannot be verified: exit 1, one line, no password shown.
    proc = run_proc(["stats", "-q", "secure", "--redis-url", with_creds])
    assert proc.returncode == 1 and "cannot reach Redis at rediss://bob:***@" in proc.stderr
    assert "bobpw" not in proc.stderr and proc.stderr.count("\n") == 1
    # Plain redis:// to a TLS port fails cleanly too.
    proc = run_proc(["stats", "-q", "secure", "--redis-url", f"redis://127.0.0.1:{tls_auth.port}/0"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
