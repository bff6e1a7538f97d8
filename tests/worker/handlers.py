"""Handlers for subprocess workers in tests: ``--handler tests.worker.handlers:<name>``.

Handlers that record what they saw append to the Redis list named by TIDE_TEST_LOG (via
TIDE_REDIS_URL), so a test can read exactly which messages ran, in which order, how often.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
from tide_worker import Message, Reject, RetryAfter
from tide_worker.connection import RedisSettings, sync_client

_client: redis.Redis | None = None


def _log_client() -> redis.Redis:
    global _client
    if _client is None:
        # TIDE_TEST_LOG_URL: a log outside the Redis under test (a failover must not eat the evidence).
        log_url = os.environ.get("TIDE_TEST_LOG_URL")
        _client = sync_client(RedisSettings.from_env(url=log_url))  # type: ignore[assignment]
    return _client


def _record(msg: Message) -> None:
    key = os.environ.get("TIDE_TEST_LOG")
    if key:
        _log_client().rpush(key, str(msg.body))


def noop(msg: Message) -> None:
    return None


async def anoop(msg: Message) -> None:
    return None


def record(msg: Message) -> None:
    _record(msg)


def slow_record(msg: Message) -> None:
    """Sleep for the seconds in TIDE_TEST_SLEEP (default 0.5), then record."""
    time.sleep(float(os.environ.get("TIDE_TEST_SLEEP", "0.5")))
    _record(msg)


def hang(msg: Message) -> None:
    time.sleep(3600)


async def ahang(msg: Message) -> None:
    await asyncio.sleep(3600)


def chaos(msg: Message) -> None:
    """Bodies 'ok:N', 'transient:N' (fails its first two attempts) and 'permanent:N' (always fails)."""
    kind = str(msg.body).split(":", 1)[0]
    if kind == "permanent":
        raise RuntimeError("permanent failure")
    if kind == "transient" and msg.attempts < 2:
        raise RuntimeError("transient failure")
    pause = float(os.environ.get("TIDE_TEST_SLEEP", "0"))
    if pause:
        time.sleep(pause)  # some work, so kills land while messages are in flight
    _record(msg)


def reject(msg: Message) -> None:
    raise Reject("no thanks")


def retry_after(msg: Message) -> None:
    raise RetryAfter(0.2)


async def async_sleepy(msg: Message) -> None:
    await asyncio.sleep(float(os.environ.get("TIDE_TEST_SLEEP", "0.5")))
    _record(msg)


def pill(msg: Message) -> None:
    """Bodies starting with 'pill' kill the process (after TIDE_TEST_SLEEP, default 0.3 s: the prefetch
    lands meanwhile); the others are recorded."""
    if str(msg.body).startswith("pill"):
        time.sleep(float(os.environ.get("TIDE_TEST_SLEEP", "0.3")))
        os._exit(17)
    _record(msg)


def reject_some(msg: Message) -> None:
    """Bodies starting with 'reject' are dead-lettered at once; the others are recorded."""
    if str(msg.body).startswith("reject"):
        raise Reject("rejected")
    _record(msg)


def slow_record_who(msg: Message) -> None:
    """As slow_record, recording ``<TIDE_WORKER_ID> <body>``: which worker ran what."""
    time.sleep(float(os.environ.get("TIDE_TEST_SLEEP", "0.5")))
    key = os.environ.get("TIDE_TEST_LOG")
    if key:
        _log_client().rpush(key, f"{os.environ.get('TIDE_WORKER_ID', '')} {msg.body}")
