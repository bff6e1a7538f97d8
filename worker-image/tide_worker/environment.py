"""How a worker process is configured: the ``TIDE_*`` environment names and the worker's defaults.

The one place both halves read them: ``tide worker`` (worker_cli.py: each option reads its variable and
falls back to its default; config.py: ``WorkerConfig``'s defaults; connection.py: the Redis variables)
and the operator (workload.py writes these variables into the Deployment it generates; spec.py's worker
defaults). Pure constants: no I/O, importable by the operator's pure modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

# --- the environment ---------------------------------------------------------------------------------

REDIS_URL = "TIDE_REDIS_URL"
REDIS_CLUSTER = "TIDE_REDIS_CLUSTER"
REDIS_USERNAME = "TIDE_REDIS_USERNAME"
REDIS_PASSWORD = "TIDE_REDIS_PASSWORD"
REDIS_CA_FILE = "TIDE_REDIS_CA_FILE"
REDIS_TLS_INSECURE = "TIDE_REDIS_TLS_INSECURE"
REDIS_SENTINEL_USERNAME = "TIDE_REDIS_SENTINEL_USERNAME"  # the sentinels' own ACL user, if any
REDIS_SENTINEL_PASSWORD = "TIDE_REDIS_SENTINEL_PASSWORD"  # the sentinels' own requirepass
QUEUE = "TIDE_QUEUE"
QUEUES = "TIDE_QUEUES"  # several list queues, comma-separated, as --queue takes them (name or name:N)
STREAM = "TIDE_STREAM"
GROUP = "TIDE_GROUP"
HANDLER = "TIDE_HANDLER"
CONCURRENCY = "TIDE_CONCURRENCY"
BATCH_SIZE = "TIDE_BATCH_SIZE"
MAX_ATTEMPTS = "TIDE_MAX_ATTEMPTS"
BACKOFF_BASE = "TIDE_BACKOFF_BASE"
BACKOFF_CAP = "TIDE_BACKOFF_CAP"
HANDLER_TIMEOUT = "TIDE_HANDLER_TIMEOUT"
HEARTBEAT_TTL = "TIDE_HEARTBEAT_TTL"
SHUTDOWN_GRACE = "TIDE_SHUTDOWN_GRACE"
DEDUPE_TTL = "TIDE_DEDUPE_TTL"
METRICS_PORT = "TIDE_METRICS_PORT"
SIDE = "TIDE_SIDE"
LOG_LEVEL = "TIDE_LOG_LEVEL"
WORKER_ID = "TIDE_WORKER_ID"
MAX_INTERRUPTS = "TIDE_MAX_INTERRUPTS"
REAPER_INTERVAL = "TIDE_REAPER_INTERVAL"
CLAIM_IDLE = "TIDE_CLAIM_IDLE"
BLOCK_TIMEOUT = "TIDE_BLOCK_TIMEOUT"
FETCH_COMMAND = "TIDE_FETCH_COMMAND"
# the worker's pod, from the downward API (fieldRef metadata.name / metadata.namespace); sent in heartbeats
POD_NAME = "TIDE_POD_NAME"
POD_NAMESPACE = "TIDE_POD_NAMESPACE"

# --- the worker's defaults ---------------------------------------------------------------------------

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CONCURRENCY = 1
DEFAULT_BATCH_SIZE = "auto"  # adaptive: up to DEFAULT_BATCH_MAX a fetch (docs/worker.md, "Adaptive fetch")
DEFAULT_BATCH_MAX = 100
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_CAP = 300.0
DEFAULT_HANDLER_TIMEOUT = 300.0
DEFAULT_HEARTBEAT_TTL = 10.0
DEFAULT_SHUTDOWN_GRACE = 25.0
DEFAULT_DEDUPE_TTL = 0
DEFAULT_METRICS_PORT = 9100  # /metrics, /healthz and /readyz
DEFAULT_SIDE = "right"
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_MAX_INTERRUPTS = 3
DEFAULT_REAPER_INTERVAL = 2.0
DEFAULT_CLAIM_IDLE = 30.0
DEFAULT_BLOCK_TIMEOUT = 2.0
DEFAULT_PROMOTE_INTERVAL = 0.5
DEFAULT_FETCH_COMMAND = "auto"

# --- the value of TIDE_REDIS_URL for Sentinel ---------------------------------------------------------

SENTINEL_DEFAULT_PORT = 26379


def sentinel_url(
    addresses: Sequence[tuple[str, int]], master_name: str, db: int = 0, tls: bool = False
) -> str:
    """``redis+sentinel://host:port[,host:port...]/<master-name>/<db>`` (``rediss+sentinel`` with TLS), no
    credentials: what the operator writes into a worker's TIDE_REDIS_URL and connects with itself.
    ``tide_worker.connection.parse_sentinel_url`` reads it back (the master name percent-encoded)."""
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
    scheme = "rediss+sentinel" if tls else "redis+sentinel"
    return f"{scheme}://{hosts}/{quote(master_name, safe='')}/{db}"
