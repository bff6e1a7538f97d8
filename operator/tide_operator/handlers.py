"""kopf wiring only: startup settings, cleanup, probes, and the watch events that start and stop each
QueueConsumer's loop.

The loop itself (read -> decide -> scale -> status) is ``tide_operator.consumer``; the loops are kept by
``tide_operator.fleet`` (one small task each, fed by kopf's watch, stopped on a peering pause). What the
loops share (Redis clients, the API client, the polling grid) is made at startup and kept in kopf's
operator-wide ``memo``: no module state.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
from typing import Any

import kopf
from prometheus_client import start_http_server

from tide_operator.consumer import Shared
from tide_operator.fleet import Fleet, kopf_pause_toggle
from tide_operator.heap import shrink_tls_buffers, tune_gc
from tide_operator.kube import Kube, connection_info
from tide_operator.sharding import Sharder
from tide_operator.spec import GROUP, PLURAL, VERSION

# before kopf opens any connection (its login, peering and watch streams are TLS to the API server too):
# a buffer is sized when its connection opens
shrink_tls_buffers()


def _not_track_success(record: logging.LogRecord) -> bool:
    # kopf logs "Handler 'track' succeeded." for every watch event, a status write included: at 10,000
    # resources that is a line per resource per status change, saying nothing
    return not (isinstance(record.msg, str) and record.msg.startswith("Handler 'track' succeeded"))


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials are the operator's own (``kube.connection_info``), wherever a Kubernetes client
    library is installed or not: one way in, tested as it ships."""
    return connection_info()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tide.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="tide.dev")
    settings.posting.level = logging.INFO
    event_posting(settings)
    logging.getLogger("kopf.objects").addFilter(_not_track_success)
    # the chart's operator.logLevel (kopf's own --verbose/--debug flags still apply on top)
    level = os.environ.get("TIDE_OPERATOR_LOG_LEVEL", "").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        logging.getLogger("tide_operator").setLevel(level)
    # equal priorities make every replica pause; a random one keeps exactly one active
    settings.peering.priority = int(os.environ.get("TIDE_PEERING_PRIORITY", random.randint(1, 1 << 30)))
    # kopf's 60 s default lets a SIGKILLed active replica hold every standby paused for about a minute;
    # 15 s (keep-alives every 5-10 s) hands over in about 15 s at one small PATCH per replica every few seconds.
    settings.peering.lifetime = int(os.environ.get("TIDE_PEERING_LIFETIME", "15"))
    # A namespaced operator has no cluster-wide grant to list CRDs and namespaces: without this, kopf
    # retries those scans for about a minute before it falls back and starts serving.
    if os.environ.get("TIDE_OPERATOR_SCOPE") == "namespaced":
        settings.scanning.disabled = True
    port = os.environ.get("TIDE_OPERATOR_METRICS_PORT", "9090")
    if port not in ("", "off"):
        start_http_server(int(port))
    try:
        memo.shared = Shared()
    except ValueError as exc:  # an operator setting such as TIDE_OPERATOR_KEYSPACE_EVENTS: stop, say why
        raise kopf.PermanentError(str(exc)) from None
    memo.shared.k8s()
    # before the listing: thousands of loops' state would otherwise stall every full collection
    tune_gc()
    memo.sharder = None
    shards = sharding_settings(settings)
    if shards is not None:
        memo.fleet = Fleet(memo.shared, None, shards.count)
        memo.fleet.start()
        memo.sharder = Sharder(
            # a client of its own: renewals never queue behind the loops' requests for the 64 connections
            # of the shared one (10,000 loops starting at once queue 20,000)
            Kube(),
            shards.namespace,
            shards.prefix,
            shards.count,
            shards.identity,
            settings.peering.lifetime,
            memo.fleet.gain,
            memo.fleet.lose,
        )
        memo.fleet.fence = memo.sharder.may_write
        memo.sharder.start()
        return
    try:
        paused = kopf_pause_toggle()
    except RuntimeError:
        if not settings.peering.standalone:
            raise
        paused = None
    memo.fleet = Fleet(memo.shared, paused)
    memo.fleet.start()


# Objects whose events are posted at once (TIDE_OPERATOR_EVENT_POSTERS; 0: kopf's default, no limit).
EVENT_POSTERS = 8


def event_posting(settings: kopf.OperatorSettings) -> None:
    """Events are for people, the scale writes are what a burst waits on. kopf posts every object's
    events at once, so a burst on 1,000 resources sent 1,000 Event POSTs to the API server beside the
    1,000 /scale PATCHes. Here ``EVENT_POSTERS`` objects' events go at a time, each poster leaving as
    soon as its object has none queued (kopf's 1 s linger would cap the rate at a few events a second);
    the rest wait in kopf's queue, in order."""
    raw = os.environ.get("TIDE_OPERATOR_EVENT_POSTERS", "").strip()
    if raw and not raw.isdigit():
        raise kopf.PermanentError(f"TIDE_OPERATOR_EVENT_POSTERS={raw!r}: give a whole number, 0 for no limit")
    limit = int(raw) if raw else EVENT_POSTERS
    settings.posting.worker_limit = limit or None
    if limit:
        settings.posting.idle_timeout = 0.01


class ShardSettings:
    def __init__(self, count: int, namespace: str, prefix: str, identity: str) -> None:
        self.count, self.namespace, self.prefix, self.identity = count, namespace, prefix, identity


def sharding_settings(settings: kopf.OperatorSettings) -> ShardSettings | None:
    """``TIDE_SHARDS`` (unset or 0: not sharded) and where the leases live; PermanentError saying what to
    fix for a setting that cannot work."""
    raw = os.environ.get("TIDE_SHARDS", "").strip()
    if raw in ("", "0"):
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise kopf.PermanentError(f"TIDE_SHARDS={raw!r}: give a whole number of shards from 1 to 1024, or 0")
    if not settings.peering.standalone:
        raise kopf.PermanentError(
            "TIDE_SHARDS needs `kopf run --standalone`: kopf's peering would pause every replica but one, "
            "while the shard leases already keep each QueueConsumer to one replica"
        )
    namespace = os.environ.get("TIDE_SHARD_NAMESPACE") or os.environ.get("POD_NAMESPACE", "")
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    if not namespace:
        raise kopf.PermanentError(
            "TIDE_SHARDS: the namespace of the shard leases is unknown: set POD_NAMESPACE (the chart does) "
            "or TIDE_SHARD_NAMESPACE"
        )
    prefix = os.environ.get("TIDE_SHARD_LEASE_PREFIX", "tide-operator")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?", prefix):
        raise kopf.PermanentError(
            f"TIDE_SHARD_LEASE_PREFIX={prefix!r}: lowercase letters, digits and '-', at most 50 characters"
        )
    return ShardSettings(int(raw), namespace, prefix, identity)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.sharder is not None:  # stops the loops of its shards first, then gives their leases back
        await memo.sharder.close()
        await memo.sharder.kube.close()
    await memo.fleet.close()
    await memo.shared.close()


@kopf.on.probe(id="daemons")
def probe_daemons(memo: kopf.Memo, **_: Any) -> int:
    return int(memo.shared.daemons)


@kopf.on.probe(id="shards")
def probe_shards(memo: kopf.Memo, **_: Any) -> list[int] | None:
    """The shards this replica serves (None: not sharded)."""
    return None if memo.sharder is None else sorted(memo.fleet.held)


@kopf.on.probe(id="redis_pools")
def probe_pools(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.shared.pool)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a QueueConsumer: its loop starts, gets the new body, or stops (fleet.py)."""
    memo.fleet.event(event.get("type"), event["object"])
