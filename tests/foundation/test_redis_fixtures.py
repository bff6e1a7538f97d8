"""The Redis fixtures start what they claim: these guard every other integration test."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from tide_local.redisproc import RedisCluster, RedisSentinelSet, RedisServer, TLSFiles
from tide_worker.keys import QueueKeys


def test_standalone_answers_and_is_flushed(r: redis.Redis) -> None:
    assert r.dbsize() == 0
    r.set("k", "v")
    assert r.get("k") == b"v"


def test_aof_server_keeps_data_across_restart(redis_aof: RedisServer) -> None:
    with redis_aof.client() as c:
        c.lpush("q", "a", "b")
    redis_aof.stop()
    assert not redis_aof.running
    redis_aof.start()
    with redis_aof.client() as c:
        assert c.lrange("q", 0, -1) == [b"b", b"a"]


def test_tls_server_needs_tls(redis_tls: RedisServer, tls_files: TLSFiles) -> None:
    assert redis_tls.url.startswith("rediss://")
    with redis.Redis.from_url(redis_tls.url, ssl_ca_certs=str(tls_files.ca_cert)) as c:
        assert c.ping()
    plain = redis.Redis(host="127.0.0.1", port=redis_tls.port, socket_timeout=2)
    try:
        plain.ping()
        raise AssertionError("a plaintext client must not get an answer from the TLS port")
    except (redis.ConnectionError, redis.TimeoutError):
        pass
    finally:
        plain.close()


def test_cluster_keeps_a_queues_keys_in_one_slot(redis_cluster: RedisCluster) -> None:
    keys = QueueKeys("queue:orders")
    c = ClusterClient(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        slots = {
            c.keyslot(k) for k in (keys.ready, keys.processing("w1"), keys.delayed, keys.dead, keys.workers)
        }
        assert len(slots) == 1
        # A multi-key command across them succeeds only if they share a slot (else CROSSSLOT).
        c.lpush(keys.ready, "m")
        assert c.lmove(keys.ready, keys.processing("w1"), "RIGHT", "LEFT") == b"m"
        assert len(c.get_nodes()) == 3
    finally:
        c.close()


def test_sentinel_set_replicates_and_fails_over(redis_sentinel_private: RedisSentinelSet) -> None:
    s = redis_sentinel_private
    assert len(s.watchers) == 3 and len(s.servers) == 2
    master = s.master()
    replica = next(x for x in s.servers if x is not master)
    # start() returned after the initial sync, not merely once the replica connected (wait_bgsave)
    info = s.replication()
    assert info[master.port]["slave0"]["state"] == "online", info  # type: ignore[index]
    assert info[replica.port]["master_link_status"] == "up", info
    with master.client() as c:
        c.set("k", "v")
        assert c.wait(1, 5000) == 1  # the replica acknowledged the write
    with replica.client() as c:
        assert c.info("replication")["role"] == "slave"
        assert c.get("k") == b"v"
    old = s.kill_master()
    _, port = s.wait_failover(old.port)
    assert port == replica.port
    with replica.client() as c:
        assert c.info("replication")["role"] == "master"
        assert c.get("k") == b"v"


def test_kill_master_refuses_while_a_replica_is_not_in_sync(redis_sentinel_private: RedisSentinelSet) -> None:
    """A replica that has not synced with the master would be promoted empty: kill_master says so."""
    s = redis_sentinel_private
    master = s.master()
    replica = next(x for x in s.servers if x is not master)
    with replica.client() as c:
        c.replicaof("NO", "ONE")  # no longer a copy of the master
    try:
        with pytest.raises(RuntimeError, match="not in sync"):
            s.kill_master()
        assert master.running
    finally:
        with replica.client() as c:
            c.replicaof(master.host, master.port)
    s.wait_synced()
    assert s.unsynced_replicas() == []
