"""The producer API: put messages on a Tide list queue or stream.

Every message gets the envelope of :mod:`tide_worker.envelope` (id, timestamp, version, attempts 0), so
workers know its id from the first attempt. ``side`` is the end the *workers* take from, the same value
as the worker's ``--side``: producers push to the opposite end, so the queue stays FIFO (``right``, the
default, means ``LPUSH`` here and ``BLMOVE ... RIGHT`` in the worker).

Bulk enqueue pipelines without MULTI in chunks: one round trip per chunk, and no transaction holding
Redis while a large batch is sent. Every key of a queue shares its hash tag, so on Redis Cluster one
pipeline goes to one node.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from tide_worker.connection import RedisSettings, async_client, sync_client
from tide_worker.envelope import encode_envelope, new_id
from tide_worker.keys import QueueKeys

Side = Literal["right", "left"]
SyncClient = redis.Redis | RedisCluster
AsyncClient = aredis.Redis | AsyncRedisCluster

DEFAULT_CHUNK = 1000
STREAM_FIELD = "data"  # the stream entry field that holds the envelope (the worker reads it)


def push_command(side: str) -> str:
    """The push that feeds workers taking from ``side``: they take from one end, producers push the other."""
    if side == "right":
        return "LPUSH"
    if side == "left":
        return "RPUSH"
    raise ValueError(f"side must be 'right' or 'left', not {side!r}")


def _as_body(body: Any) -> Any:
    # JSON has no bytes: UTF-8 bytes become the string they spell, so callers can pass what they read.
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8")
    return body


def _check_delay(delay: float | None) -> None:
    if delay is not None and not (math.isfinite(delay) and delay >= 0):
        raise ValueError(f"delay must be a finite number >= 0 seconds, not {delay}")


def _prepare(body: Any, message_id: str | None, headers: dict[str, Any] | None) -> tuple[str, bytes]:
    mid = message_id or new_id()
    return mid, encode_envelope(_as_body(body), message_id=mid, headers=headers)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk must be an integer >= 1, not {size!r}")
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _xadd_args(maxlen: int | None) -> dict[str, Any]:
    if maxlen is not None and maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, not {maxlen}")
    # "~" trimming removes whole macro nodes only: cheap, and the stream stays at least maxlen long.
    return {"maxlen": maxlen, "approximate": True} if maxlen is not None else {}


class NotReplicated(redis.RedisError):
    """A durable write reached the master but fewer replicas than asked within the timeout.

    The message is queued on the master; only a failover before it replicates loses it. Enqueueing it
    again with the same ``id`` is safe with ``--dedupe-ttl`` on the workers (a duplicate otherwise)."""

    def __init__(self, acked: int, wanted: int, timeout: float, ids: list[str]) -> None:
        super().__init__(
            f"only {acked} of {wanted} replicas acknowledged the write within {timeout:g}s "
            f"(ids {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}); it is on the master and a failover "
            "before it replicates would lose it"
        )
        self.acked = acked
        self.wanted = wanted
        self.ids = ids


def _check_durable(client: Any, replicas: int, timeout: float) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"wait_replicas must be an integer >= 0, not {replicas!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"wait_timeout must be a finite number > 0 seconds, not {timeout}")
    if replicas and isinstance(client, RedisCluster | AsyncRedisCluster):
        raise ValueError("wait_replicas is for a standalone or Sentinel master, not a Redis Cluster client")


def _entry_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Prep:
    """What both producers send, decided once; the subclasses only do the (sync or async) I/O.

    Each method returns the Redis call to make as ``(command, args)``, or, for the bulk methods, the list
    of those per chunk, plus the ids the caller returns.
    """

    push: str

    def _enqueue(
        self, queue: str, body: Any, id: str | None, delay: float | None, headers: dict[str, Any] | None
    ) -> tuple[str, tuple[Any, ...], str]:
        _check_delay(delay)
        mid, data = _prepare(body, id, headers)
        if delay:
            return "ZADD", (QueueKeys(queue).delayed, {data: time.time() + delay}), mid
        return self.push, (queue, data), mid

    def _enqueue_chunks(
        self, queue: str, bodies: Iterable[Any], chunk: int, headers: dict[str, Any] | None
    ) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
        # One variadic push per chunk keeps the chunk's order: LPUSH a b c leaves c at the head.
        for batch in _chunks(bodies, chunk):
            prepared = [_prepare(b, None, headers) for b in batch]
            yield (queue, *(data for _, data in prepared)), [mid for mid, _ in prepared]

    @staticmethod
    def _xadd(
        stream: str,
        body: Any,
        maxlen: int | None,
        id: str,
        message_id: str | None,
        headers: dict[str, Any] | None,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        _, data = _prepare(body, message_id, headers)
        return (stream, {STREAM_FIELD: data}), {"id": id, **_xadd_args(maxlen)}

    @staticmethod
    def _xadd_chunks(
        stream: str, bodies: Iterable[Any], maxlen: int | None, chunk: int, headers: dict[str, Any] | None
    ) -> Iterator[list[tuple[tuple[Any, ...], dict[str, Any]]]]:
        trim = _xadd_args(maxlen)
        for batch in _chunks(bodies, chunk):
            yield [((stream, {STREAM_FIELD: _prepare(b, None, headers)[1]}), trim) for b in batch]


class Producer(_Prep):
    """Synchronous producer over a ``connection.sync_client`` (standalone, Cluster, TLS)."""

    def __init__(
        self,
        client: SyncClient | None = None,
        *,
        settings: RedisSettings | None = None,
        side: Side = "right",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        """``wait_replicas=N``: durable writes. Each push (each chunk of the bulk methods) is followed by
        ``WAIT N timeout`` on the same connection and returns only once N replicas have it, else raises
        :class:`NotReplicated`. What that buys across a failover: docs/worker.md, At-least-once."""
        self._owned = client is None
        self.client: SyncClient = (
            client if client is not None else sync_client(settings or RedisSettings.from_env())
        )
        self.push = push_command(side)
        _check_durable(self.client, wait_replicas, wait_timeout)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout

    def _write(self, ids: list[str], *calls: tuple[str, tuple[Any, ...], dict[str, Any]]) -> list[Any]:
        """Run ``calls`` (then WAIT, when durable) in one pipeline: one connection, one round trip."""
        if not self.wait_replicas and len(calls) == 1:
            command, args, kw = calls[0]
            return [getattr(self.client, command)(*args, **kw)]
        pipe = self.client.pipeline(transaction=False)
        for command, args, kw in calls:
            getattr(pipe, command)(*args, **kw)
        if self.wait_replicas:
            pipe.wait(self.wait_replicas, int(self.wait_timeout * 1000))
        out = pipe.execute()
        if self.wait_replicas:
            acked = int(out.pop())
            if acked < self.wait_replicas:
                raise NotReplicated(acked, self.wait_replicas, self.wait_timeout, ids)
        return list(out)

    def _call(self, command: str, args: tuple[Any, ...], ids: list[str]) -> Any:
        return self._write(ids, (command.lower(), args, {}))[0]  # lpush, rpush or zadd

    def enqueue(
        self,
        queue: str,
        body: Any,
        *,
        id: str | None = None,
        delay: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Put one message on ``queue`` (or in its retry set ``delay`` seconds from now); return its id."""
        command, args, mid = self._enqueue(queue, body, id, delay, headers)
        self._call(command, args, [mid])
        return mid

    def enqueue_many(
        self,
        queue: str,
        bodies: Iterable[Any],
        *,
        chunk: int = DEFAULT_CHUNK,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        """Put many messages on ``queue`` in order, one variadic push per ``chunk``; return their ids.

        Not transactional: when Redis fails midway, the chunks already sent stay queued and the error
        propagates (the ids of what was sent are not returned, so retry with explicit ids if duplicates
        matter).
        """
        ids: list[str] = []
        for args, chunk_ids in self._enqueue_chunks(queue, bodies, chunk, headers):
            self._call(self.push, args, chunk_ids)
            ids.extend(chunk_ids)
        return ids

    def xadd(
        self,
        stream: str,
        body: Any,
        *,
        maxlen: int | None = None,
        id: str = "*",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Append one message to ``stream`` (``MAXLEN ~ maxlen`` when given); return the entry id."""
        args, kw = self._xadd(stream, body, maxlen, id, message_id, headers)
        return _entry_id(self._write([message_id or id], ("xadd", args, kw))[0])

    def xadd_many(
        self,
        stream: str,
        bodies: Iterable[Any],
        *,
        maxlen: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        """Append many messages in order, pipelined per ``chunk``; return the entry ids."""
        out: list[str] = []
        for calls in self._xadd_chunks(stream, bodies, maxlen, chunk, headers):
            replies = self._write([stream], *(("xadd", args, kw) for args, kw in calls))
            out.extend(_entry_id(v) for v in replies)
        return out

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProducer(_Prep):
    """The asyncio twin of :class:`Producer` over ``connection.async_client``: same arguments, same
    messages; only the I/O differs."""

    def __init__(
        self,
        client: AsyncClient | None = None,
        *,
        settings: RedisSettings | None = None,
        side: Side = "right",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._owned = client is None
        self.client: AsyncClient = (
            client if client is not None else async_client(settings or RedisSettings.from_env())
        )
        self.push = push_command(side)
        _check_durable(self.client, wait_replicas, wait_timeout)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout

    async def _write(self, ids: list[str], *calls: tuple[str, tuple[Any, ...], dict[str, Any]]) -> list[Any]:
        if not self.wait_replicas and len(calls) == 1:
            command, args, kw = calls[0]
            return [await getattr(self.client, command)(*args, **kw)]
        pipe = self.client.pipeline(transaction=False)
        for command, args, kw in calls:
            getattr(pipe, command)(*args, **kw)
        if self.wait_replicas:
            pipe.wait(self.wait_replicas, int(self.wait_timeout * 1000))
        out = await pipe.execute()
        if self.wait_replicas:
            acked = int(out.pop())
            if acked < self.wait_replicas:
                raise NotReplicated(acked, self.wait_replicas, self.wait_timeout, ids)
        return list(out)

    async def _call(self, command: str, args: tuple[Any, ...], ids: list[str]) -> Any:
        return (await self._write(ids, (command.lower(), args, {})))[0]  # lpush, rpush or zadd

    async def enqueue(
        self,
        queue: str,
        body: Any,
        *,
        id: str | None = None,
        delay: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        command, args, mid = self._enqueue(queue, body, id, delay, headers)
        await self._call(command, args, [mid])
        return mid

    async def enqueue_many(
        self,
        queue: str,
        bodies: Iterable[Any],
        *,
        chunk: int = DEFAULT_CHUNK,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        ids: list[str] = []
        for args, chunk_ids in self._enqueue_chunks(queue, bodies, chunk, headers):
            await self._call(self.push, args, chunk_ids)
            ids.extend(chunk_ids)
        return ids

    async def xadd(
        self,
        stream: str,
        body: Any,
        *,
        maxlen: int | None = None,
        id: str = "*",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        args, kw = self._xadd(stream, body, maxlen, id, message_id, headers)
        return _entry_id((await self._write([message_id or id], ("xadd", args, kw)))[0])

    async def xadd_many(
        self,
        stream: str,
        bodies: Iterable[Any],
        *,
        maxlen: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        headers: dict[str, Any] | None = None,
    ) -> list[str]:
        out: list[str] = []
        for calls in self._xadd_chunks(stream, bodies, maxlen, chunk, headers):
            replies = await self._write([stream], *(("xadd", args, kw) for args, kw in calls))
            out.extend(_entry_id(v) for v in replies)
        return out

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
