"""Redis clients for the worker, the producer and the CLI: standalone, Cluster or Sentinel, plain or TLS.

Credentials come from the URL or, so they need not appear in a pod spec, from ``TIDE_REDIS_USERNAME``
and ``TIDE_REDIS_PASSWORD`` (which the operator fills from a Secret). ``rediss://`` turns TLS on;
``TIDE_REDIS_CA_FILE`` (or ``ca_file``) names the CA bundle that signs the server's certificate.

Sentinel: ``redis+sentinel://[:password@]host:port[,host:port...]/<master-name>[/<db>]`` (``rediss+sentinel``
for TLS to the sentinels and the master alike) asks the sentinels for the master and asks again on every
reconnect, so a failover is a reconnect. The URL's password is the data servers'; the sentinels' own
credentials come from ``TIDE_REDIS_SENTINEL_USERNAME`` / ``TIDE_REDIS_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

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


# No master through Sentinel: a wrong master name, no sentinel reachable, or the sentinels refused their
# password (the message lists each sentinel's error). A ConnectionError too, so callers that must not wait
# it out (a worker starting up) test for it first; during a failover it is a short outage like any other.
SENTINEL_ERRORS: tuple[type[Exception], ...] = (MasterNotFoundError, AsyncMasterNotFoundError)


class MasterDown(redis.ConnectionError):
    """The sentinels know the master name but name no healthy master now: a failover is under way.

    An outage (waited out), unlike ``MasterNotFoundError`` (the name unknown to every sentinel that
    answered, or none answered)."""


def _knows(masters: Any, name: str) -> bool:
    return isinstance(masters, dict) and name in masters


class _Sentinel(Sentinel):
    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as exc:
            for sentinel in self.sentinels:
                try:
                    known = _knows(sentinel.sentinel_masters(), service_name)
                except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                    continue
                if known:
                    raise MasterDown(f"{sentinel_detail(exc)} (a failover is under way)") from None
            raise


class _AsyncSentinel(AsyncSentinel):
    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except AsyncMasterNotFoundError as exc:
            for sentinel in self.sentinels:
                try:
                    known = _knows(await sentinel.sentinel_masters(), service_name)
                except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                    continue
                if known:
                    raise MasterDown(f"{sentinel_detail(exc)} (a failover is under way)") from None
            raise


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS


# redis-py names each sentinel by its client's repr (a screenful each); the hint keeps host:port.
_SENTINEL_REPR = re.compile(r"<redis\.(?:asyncio\.)?client\.Redis\(.*?host=([^,]+),port=(\d+),.*?\)>\)>\)>")


def sentinel_detail(exc: BaseException) -> str:
    """A Sentinel error's text with each sentinel named ``sentinel host:port``, redacted."""
    return redact(_SENTINEL_REPR.sub(r"sentinel \1:\2", str(exc)))


def refusal_hint(exc: BaseException) -> str:
    """One line saying why Redis refused and what to check."""
    if isinstance(exc, SENTINEL_ERRORS):
        return (
            "Sentinel gave no master (check the master name and the sentinel addresses in the URL, and "
            f"TIDE_REDIS_SENTINEL_PASSWORD): {sentinel_detail(exc)}"
        )
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
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    addresses: list[tuple[str, int]]
    master_name: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a Sentinel URL; a malformed one raises a ValueError naming it (redacted) and what to fix."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(
            f"bad Sentinel URL {redact(url)}: the scheme must be redis+sentinel or rediss+sentinel"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    netloc, _, path = hostpart.partition("/")
    segments = [p for p in path.split("?")[0].split("/")]
    if not segments or not segments[0]:
        raise ValueError(f"bad Sentinel URL {redact(url)}: give the master name as the path (/mymaster)")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError(f"bad Sentinel URL {redact(url)}: the path is /<master-name>[/<db>], db a number")
    addresses: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad Sentinel URL {redact(url)}: {item!r} is not host:port")
        addresses.append((host, int(port)))
    username: str | None = None
    password: str | None = None
    if at:
        user, has_pw, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    return SentinelURL(
        addresses=addresses,
        master_name=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password or None,
        tls=SENTINEL_SCHEMES[scheme.lower()],
    )


@dataclass(frozen=True)
class RedisSettings:
    url: str = E.DEFAULT_REDIS_URL
    cluster: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None  # the CA bundle itself, PEM (the operator has it from a Secret, no file)
    tls_insecure: bool = False
    block_timeout: float = DEFAULT_BLOCK_TIMEOUT
    client_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    # Standalone asyncio clients: wait up to this long for a free connection when ``max_connections`` (in
    # ``extra``) are all in use, instead of failing at once with MaxConnectionsError (a ConnectionError,
    # which would read as "Redis unreachable"). None: redis-py's pool, which fails at once.
    pool_timeout: float | None = None
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
            sentinel_username=overrides.pop("sentinel_username", None)
            or env.get(E.REDIS_SENTINEL_USERNAME)
            or None,
            sentinel_password=overrides.pop("sentinel_password", None)
            or env.get(E.REDIS_SENTINEL_PASSWORD)
            or None,
            **overrides,
        )

    @property
    def sentinel(self) -> bool:
        return self.url.partition("://")[0].lower() in SENTINEL_SCHEMES

    @property
    def tls(self) -> bool:
        scheme = self.url.partition("://")[0].lower()
        return scheme == "rediss" or SENTINEL_SCHEMES.get(scheme, False)

    def _tls_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.ca_file:
            kw["ssl_ca_certs"] = self.ca_file
        if self.ca_data:
            kw["ssl_ca_data"] = self.ca_data
        if self.tls_insecure:
            kw["ssl_cert_reqs"] = "none"
            kw["ssl_check_hostname"] = False
        return kw

    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to talk to the sentinels themselves: short timeouts, their own credentials, same TLS."""
        kw: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        if self.sentinel_username:
            kw["username"] = self.sentinel_username
        if self.sentinel_password:
            kw["password"] = self.sentinel_password
        if self.tls:
            kw.update(ssl=True, **self._tls_kwargs())
        return kw

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "socket_timeout": self.block_timeout + SOCKET_TIMEOUT_MARGIN,
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "health_check_interval": 15,
        }
        if self.sentinel:
            s = parse_sentinel_url(self.url)
            url_user, url_password = s.username, s.password
        else:
            parsed = urlparse(self.url)
            url_user, url_password = parsed.username, parsed.password
        # The URL's own credentials win; the environment fills what it lacks.
        if self.username and not url_user:
            kw["username"] = self.username
        if self.password and not url_password:
            kw["password"] = self.password
        if self.client_name:
            kw["client_name"] = self.client_name
        if self.tls:
            kw.update(self._tls_kwargs())
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


def _sentinel_master(factory: Any, settings: RedisSettings, kw: dict[str, Any]) -> Any:
    """``factory(addresses, ...).master_for(name)``: a client whose every new connection asks the sentinels
    where the master is (so after a failover the next connection goes to the new one)."""
    if settings.cluster:
        raise ValueError(
            "a Sentinel URL cannot be combined with Cluster mode (TIDE_REDIS_CLUSTER / --cluster)"
        )
    s = parse_sentinel_url(settings.url)
    kw = dict(kw)
    if s.username:
        kw["username"] = s.username
    if s.password:
        kw["password"] = s.password
    if s.tls:
        kw["ssl"] = True
    sentinel = factory(s.addresses, sentinel_kwargs=settings.sentinel_kwargs(), **kw)
    return sentinel.master_for(s.master_name, db=s.db)


def sync_client(settings: RedisSettings, retries: int = 3) -> redis.Redis | RedisCluster:
    """A synchronous client (the CLI, the producer, the worker's direct lane): a lost connection is
    retried ``retries`` times (Cluster: always 3, each after refreshing the slot map, as asyncio's).
    The direct lane passes 0: it retries itself, and a fetch whose reply was lost must not run twice."""
    tries = 3 if settings.cluster else retries
    kw = {"retry": _Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=tries), **settings.client_kwargs()}
    if settings.sentinel:
        return _sentinel_master(_Sentinel, settings, kw)  # type: ignore[no-any-return]
    if settings.cluster:
        return _from_url(RedisCluster.from_url, settings.url, _cluster_kwargs(kw))  # type: ignore[no-any-return]
    return _from_url(redis.Redis.from_url, settings.url, kw)  # type: ignore[no-any-return]


def async_client(settings: RedisSettings) -> aredis.Redis | AsyncRedisCluster:
    """An asyncio client (the worker runtime, the operator's reads)."""
    kw = settings.client_kwargs()
    if settings.sentinel:
        # As for a standalone server: callers retry, each reconnect asks the sentinels again.
        return _sentinel_master(_AsyncSentinel, settings, {"retry": AsyncRetry(NoBackoff(), retries=0), **kw})  # type: ignore[no-any-return]
    if settings.cluster:
        # The Cluster client's own loop: up to 3 more attempts, each after refreshing the slot map.
        kw = {"retry": AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=3), **kw}
        return _from_url(AsyncRedisCluster.from_url, settings.url, _cluster_kwargs(kw))  # type: ignore[no-any-return]
    # No retry inside redis-py: callers retry with their own backoff, and a call on a dead connection
    # then fails after one socket timeout instead of four.
    kw = {"retry": AsyncRetry(NoBackoff(), retries=0), **kw}
    if settings.pool_timeout is not None:
        pool = _from_url(
            aredis.BlockingConnectionPool.from_url, settings.url, {"timeout": settings.pool_timeout, **kw}
        )
        client = aredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # aclose() closes the pool, as with from_url
        return client
    return _from_url(aredis.Redis.from_url, settings.url, kw)  # type: ignore[no-any-return]
