"""Redis clients for the worker, the producer and the CLI: standalone or Cluster, plain or TLS.

Credentials come from the URL or, so they need not appear in a pod spec, from ``TIDE_REDIS_USERNAME``
and ``TIDE_REDIS_PASSWORD`` (which the operator fills from a Secret). ``rediss://`` turns TLS on;
``TIDE_REDIS_CA_FILE`` (or ``ca_file``) names the CA bundle that signs the server's certificate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError
from redis.retry import Retry

from tide_worker import environment as E

# Blocking commands wait up to this long server-side; the socket waits longer so a block never reads
# as a dead connection, and a dead connection never hangs a worker forever.
DEFAULT_BLOCK_TIMEOUT = 2.0
SOCKET_TIMEOUT_MARGIN = 5.0

# Refusals, not outages: a wrong password or a missing ACL permission stays wrong however often it is
# retried. redis-py derives the first two from ConnectionError, so retry loops must test these first.
AUTH_ERRORS: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError, NoPermissionError)


# ``scheme://`` then everything up to the last ``@`` of the same word: the userinfo as urlparse sees it
# (a password may hold an unescaped ``@``), wherever a URL sits in a longer text.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)\S*@")


def redact(text: str) -> str:
    """``text`` with the userinfo (user and password) of every URL in it replaced by ``***``.

    The one redaction of Tide: every log line, event, condition or status that shows a Redis URL (or an
    error message that may quote one) goes through it. Over-redacting is harmless; a word with ``://``
    before an ``@`` loses what lies between."""
    if "@" not in text:  # the common case, and the operator redacts every condition of every poll
        return text
    return _USERINFO.sub(r"\1***@", text)


def refusal_hint(exc: BaseException) -> str:
    """One line saying why Redis refused and what to check."""
    if isinstance(exc, NoPermissionError):
        return f"the Redis user lacks a permission Tide needs (check its ACL): {exc}"
    return f"Redis refused the credentials (check the URL, TIDE_REDIS_USERNAME, TIDE_REDIS_PASSWORD): {exc}"


def _retryable(error: Exception) -> bool:
    return not isinstance(error, AUTH_ERRORS)


class _Retry(Retry):
    """redis-py's retry for the sync clients, minus refusals (they fail at once)."""

    def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        def check(error: Exception) -> bool:
            return _retryable(error) and (is_retryable is None or bool(is_retryable(error)))

        return super().call_with_retry(do, fail, check, with_failure_count)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RedisSettings:
    url: str = E.DEFAULT_REDIS_URL
    cluster: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    tls_insecure: bool = False
    block_timeout: float = DEFAULT_BLOCK_TIMEOUT
    client_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, url: str | None = None, cluster: bool | None = None, **overrides: Any) -> RedisSettings:
        env = os.environ
        return cls(
            url=url or env.get(E.REDIS_URL, cls.url),
            cluster=_truthy(env.get(E.REDIS_CLUSTER)) if cluster is None else cluster,
            username=overrides.pop("username", None) or env.get(E.REDIS_USERNAME) or None,
            password=overrides.pop("password", None) or env.get(E.REDIS_PASSWORD) or None,
            ca_file=overrides.pop("ca_file", None) or env.get(E.REDIS_CA_FILE) or None,
            tls_insecure=_truthy(env.get(E.REDIS_TLS_INSECURE)),
            **overrides,
        )

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "rediss"

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "socket_timeout": self.block_timeout + SOCKET_TIMEOUT_MARGIN,
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "health_check_interval": 15,
        }
        parsed = urlparse(self.url)
        # The URL's own credentials win; the environment fills what it lacks.
        if self.username and not parsed.username:
            kw["username"] = self.username
        if self.password and not parsed.password:
            kw["password"] = self.password
        if self.client_name:
            kw["client_name"] = self.client_name
        if self.tls:
            if self.ca_file:
                kw["ssl_ca_certs"] = self.ca_file
            if self.tls_insecure:
                kw["ssl_cert_reqs"] = "none"
                kw["ssl_check_hostname"] = False
        kw.update(self.extra)
        return kw


def _cluster_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    kw = dict(kw)
    kw.pop("health_check_interval", None)
    return kw


def _from_url(factory: Any, url: str, kw: dict[str, Any]) -> Any:
    """``factory(url, **kw)``; a URL redis-py cannot parse (port 99999, unknown scheme) raises a ValueError
    that names the URL, redacted (the original is dropped: its message or a traceback could quote it)."""
    try:
        return factory(url, **kw)
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {redact(url)}: {redact(str(exc))}") from None


def sync_client(settings: RedisSettings) -> redis.Redis | RedisCluster:
    """A synchronous client (the CLI and the producer): a lost connection is retried 3 times."""
    kw = {"retry": _Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3), **settings.client_kwargs()}
    if settings.cluster:
        return _from_url(RedisCluster.from_url, settings.url, _cluster_kwargs(kw))  # type: ignore[no-any-return]
    return _from_url(redis.Redis.from_url, settings.url, kw)  # type: ignore[no-any-return]


def async_client(settings: RedisSettings) -> aredis.Redis | AsyncRedisCluster:
    """An asyncio client (the worker runtime, the operator's reads)."""
    kw = settings.client_kwargs()
    if settings.cluster:
        # The Cluster client's own loop: up to 3 more attempts, each after refreshing the slot map.
        kw = {"retry": AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=3), **kw}
        return _from_url(AsyncRedisCluster.from_url, settings.url, _cluster_kwargs(kw))  # type: ignore[no-any-return]
    # No retry inside redis-py: callers retry with their own backoff, and a call on a dead connection
    # then fails after one socket timeout instead of four.
    kw = {"retry": AsyncRetry(NoBackoff(), retries=0), **kw}
    return _from_url(aredis.Redis.from_url, settings.url, kw)  # type: ignore[no-any-return]
