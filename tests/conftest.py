"""Shared fixtures: real redis-server processes on loopback ports of their own.

Servers are session-scoped (starting one costs ~50 ms, a Cluster ~2 s); the function-scoped URL
fixtures flush them so every test starts from an empty keyspace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings
from tide_local.redisproc import RedisCluster, RedisSentinelSet, RedisServer, TLSFiles, make_tls_files

pytest_plugins = ["tests.conftest_cluster"]

ROOT = Path(__file__).resolve().parent.parent

# Generated-input tests: `make test` runs a fixed budget with a fixed seed (derandomized, so CI is
# repeatable); `make fuzz` runs many more examples from a fresh seed, to keep finding the next hole.
_slow_ok = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("TIDE_FUZZ_EXAMPLES", "60")),
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_slow_ok,
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("TIDE_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    print_blob=True,
    suppress_health_check=_slow_ok,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The worker CLI and test handlers must be importable by subprocesses the tests start.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a flushed standalone server (no persistence)."""
    if not redis_server.running:  # a test may have stopped it to cause an outage
        redis_server.start()
    with redis_server.client() as c:
        c.flushall()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def redis_aof() -> Iterator[RedisServer]:
    """A private append-only server, for tests that restart Redis and expect their data back."""
    with RedisServer(appendonly=True, extra_args=["--appendfsync", "always"]) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def redis_tls_server(tls_files: TLSFiles) -> Iterator[RedisServer]:
    with RedisServer(tls=tls_files) as server:
        yield server


@pytest.fixture
def redis_tls(redis_tls_server: RedisServer) -> RedisServer:
    """A flushed TLS server; connect with ``rediss://`` and ``ssl_ca_certs=tls_files.ca_cert``."""
    with redis_tls_server.client() as c:
        c.flushall()
    return redis_tls_server


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_server: RedisCluster) -> RedisCluster:
    """A flushed 3-master Redis Cluster."""
    for node in redis_cluster_server.nodes:
        with node.client() as c:
            c.flushall()
    return redis_cluster_server


SENTINEL_PASSWORD = "sentinel-secret"
SENTINEL_DATA_PASSWORD = "data-secret"


@pytest.fixture(scope="session")
def redis_sentinel_set() -> Iterator[RedisSentinelSet]:
    """A master, a replica and three sentinels (both kinds password-protected), shared by the session."""
    with RedisSentinelSet(password=SENTINEL_DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as s:
        yield s


@pytest.fixture
def redis_sentinel(redis_sentinel_set: RedisSentinelSet) -> RedisSentinelSet:
    """The shared Sentinel set, its current master flushed (tests that kill a master use their own)."""
    with redis_sentinel_set.master().client() as c:
        c.flushall()
    return redis_sentinel_set


@pytest.fixture
def redis_sentinel_tls(tls_files: TLSFiles) -> Iterator[RedisSentinelSet]:
    """A Sentinel set of the test's own with TLS everywhere (clients, replication, sentinel to sentinel),
    both kinds password-protected; the certificates are ``tls_files``'."""
    with RedisSentinelSet(
        password=SENTINEL_DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=tls_files
    ) as s:
        yield s


@pytest.fixture
def redis_sentinel_private() -> Iterator[RedisSentinelSet]:
    """A Sentinel set of the test's own, for tests that kill its master."""
    with RedisSentinelSet(password=SENTINEL_DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as s:
        yield s
