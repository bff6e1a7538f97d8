"""The end-to-end handler: bodies say how they behave, and every run is recorded in Redis for the checks.

Body ``{"i": n, "kind": "ok" | "transient" | "permanent"}``: ``transient`` fails its first attempt and then
succeeds; ``permanent`` always fails, so it must end in the dead letters after max attempts.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

PROCESSED = "e2e:processed"  # set of message numbers that succeeded
RUNS = "e2e:runs"  # hash: message number -> successful runs (duplicates show as > 1)
COUNT = "e2e:count"  # successful runs in total, for the live throughput

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        kw: dict[str, Any] = {}
        if os.environ.get("TIDE_REDIS_CA_FILE"):
            kw["ssl_ca_certs"] = os.environ["TIDE_REDIS_CA_FILE"]
        _client = redis.Redis.from_url(os.environ.get("TIDE_REDIS_URL", "redis://127.0.0.1:6379/0"), **kw)
    return _client


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


def handle(msg: Any) -> None:
    body = msg.body
    kind = body.get("kind", "ok")
    if kind == "permanent":
        raise PermanentError(f"message {body['i']} can never succeed")
    if kind == "transient" and msg.attempts == 0:
        raise TransientError(f"message {body['i']} fails its first attempt")
    work = float(os.environ.get("E2E_WORK_SECONDS", "0"))
    if work:
        time.sleep(work)
    pipe = _redis().pipeline(transaction=False)
    pipe.sadd(PROCESSED, body["i"])
    pipe.hincrby(RUNS, str(body["i"]), 1)
    pipe.incr(COUNT)
    pipe.execute()
