"""Worker settings (filled from ``tide worker`` options, each of which also reads a ``TIDE_*`` variable)."""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
from dataclasses import dataclass, field

from tide_worker import environment as E


def default_worker_id() -> str:
    """``<POD_NAME or hostname>-<pid>-<4 hex>``: unique per process, readable in the registry."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "worker"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


# Bounds of the numeric options. Past them an option is refused (``tide worker`` exits 2 with one line).
MAX_BATCH = 100_000  # a processing list this long is reaped and requeued by one Lua call each
MAX_CONCURRENCY = 10_000  # lanes; a sync handler runs 2 threads per lane
MAX_COUNT = 1_000_000_000  # attempts and interrupts
MAX_SECONDS = 365 * 24 * 3600
MIN_TICK = 0.01  # shorter loop periods spin, and Redis reads a timeout under 1 ms as "block forever"

# option -> (low, high, integer?): ints must be ints (bools are not); every number must be finite.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "concurrency": (1, MAX_CONCURRENCY, True),
    "batch_size": (1, MAX_BATCH, True),
    "batch_max": (1, MAX_BATCH, True),
    "max_attempts": (1, MAX_COUNT, True),
    "max_interrupts": (1, MAX_COUNT, True),
    "dedupe_ttl": (0, MAX_SECONDS, True),
    "metrics_port": (-1, 65535, True),
    "backoff_base": (0, MAX_SECONDS, False),
    "backoff_cap": (0, MAX_SECONDS, False),
    "handler_timeout": (0, MAX_SECONDS, False),
    "shutdown_grace": (0, MAX_SECONDS, False),
    "heartbeat_ttl": (MIN_TICK, MAX_SECONDS, False),
    "reaper_interval": (MIN_TICK, MAX_SECONDS, False),
    "claim_idle": (MIN_TICK, MAX_SECONDS, False),
    "block_timeout": (MIN_TICK, MAX_SECONDS, False),
    "promote_interval": (MIN_TICK, MAX_SECONDS, False),
}


def flag(name: str) -> str:
    """The ``tide worker`` option of a WorkerConfig field."""
    if name == "batch_max":
        return "--batch-size auto:N, N"
    return "--" + name.replace("_", "-")


def check_number(name: str, value: object) -> None:
    """Raise ValueError (one line naming the option) unless ``value`` is within the bounds of ``name``."""
    if name == "batch_size" and value is None:
        return  # adaptive (--batch-size auto): batch_max bounds it
    low, high, integer = BOUNDS[name]
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ValueError(f"{flag(name)} must be {kind}, not {value!r}")
    assert isinstance(value, int | float)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{flag(name)} must be {kind} from {_num(low)} to {_num(high)}, not {value!r}")


def parse_batch_size(text: str) -> tuple[int | None, int]:
    """``--batch-size``: ``N`` (a fixed N per fetch), ``auto`` or ``auto:N`` (adaptive, up to N a fetch;
    ``auto`` is up to 100). Returns (batch_size, batch_max): batch_size None means adaptive."""
    value = text.strip().lower()
    if value == "auto" or value.startswith("auto:"):
        tail = value[5:]
        if not tail:
            return None, E.DEFAULT_BATCH_MAX
        if not tail.isdigit():
            raise ValueError(f"--batch-size auto:N needs a whole number N, not {text!r}")
        check_number("batch_max", int(tail))
        return None, int(tail)
    try:
        return int(value), E.DEFAULT_BATCH_MAX
    except ValueError:
        raise ValueError(f"--batch-size must be an integer, auto or auto:N, not {text!r}") from None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def parse_queues(items: list[str]) -> tuple[list[str], list[int]]:
    """``--queue`` values: one is a name as given; several are ``name`` each (strict priority, in order)
    or ``name:N`` each (weight N >= 1). A name that itself ends in ``:<digits>`` then needs its weight."""
    if len(items) <= 1:
        return list(items), []
    names: list[str] = []
    weights: list[int] = []
    for item in items:
        name, sep, tail = item.rpartition(":")
        if sep and name and tail.isdigit():
            names.append(name)
            weights.append(int(tail))
        else:
            names.append(item)
    if weights and len(weights) != len(names):
        raise ValueError(
            "--queue: give every queue a weight (name:N, by weight) or none (strict priority, in order)"
            f", not {items!r}; a queue named like 'x:1' needs an explicit weight ('x:1:1')"
        )
    if any(w < 1 or w > MAX_COUNT for w in weights):
        raise ValueError(f"--queue: a weight must be an integer from 1 to {MAX_COUNT}, not in {items!r}")
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--queue: the queues must be distinct and not empty, not {items!r}")
    return names, weights


@dataclass
class WorkerConfig:
    handler: str
    queue: str | None = None
    # Several list queues (multisource.py): the names, and their weights (empty: strict priority, in order).
    queues: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    stream: str | None = None
    group: str | None = None
    redis_url: str | None = None
    cluster: bool | None = None
    concurrency: int = E.DEFAULT_CONCURRENCY
    # None: adaptive (--batch-size auto[:N]): each fetch takes what the lanes can start soon, up to
    # batch_max, and a share of the queue's depth (runtime.Worker._fetch_room); an int: that many, fixed.
    batch_size: int | None = None
    batch_max: int = E.DEFAULT_BATCH_MAX
    max_attempts: int = E.DEFAULT_MAX_ATTEMPTS
    backoff_base: float = E.DEFAULT_BACKOFF_BASE
    backoff_cap: float = E.DEFAULT_BACKOFF_CAP
    handler_timeout: float = E.DEFAULT_HANDLER_TIMEOUT
    heartbeat_ttl: float = E.DEFAULT_HEARTBEAT_TTL
    shutdown_grace: float = E.DEFAULT_SHUTDOWN_GRACE
    dedupe_ttl: int = E.DEFAULT_DEDUPE_TTL
    metrics_port: int = E.DEFAULT_METRICS_PORT
    side: str = E.DEFAULT_SIDE
    log_level: str = E.DEFAULT_LOG_LEVEL
    worker_id: str = field(default_factory=default_worker_id)
    max_interrupts: int = E.DEFAULT_MAX_INTERRUPTS
    reaper_interval: float = E.DEFAULT_REAPER_INTERVAL
    claim_idle: float = E.DEFAULT_CLAIM_IDLE
    block_timeout: float = E.DEFAULT_BLOCK_TIMEOUT
    promote_interval: float = E.DEFAULT_PROMOTE_INTERVAL
    fetch_command: str = (
        E.DEFAULT_FETCH_COMMAND
    )  # auto | blmove | brpoplpush (forcing the fallback, for old servers)

    def validate(self) -> None:
        if bool(self.queue or self.queues) == bool(self.stream):
            raise ValueError("give exactly one of --queue or --stream")
        if self.queues and (self.queue or len(self.queues) < 2):
            raise ValueError("several queues go in queues alone (two or more), not with queue")
        if self.weights and len(self.weights) != len(self.queues):
            raise ValueError("give one weight per queue, or none")
        if self.stream and not self.group:
            raise ValueError("--stream needs --group")
        if self.side not in ("right", "left"):
            raise ValueError(f"--side must be right or left, not {self.side!r}")
        if self.fetch_command not in ("auto", "blmove", "brpoplpush"):
            raise ValueError(f"unknown fetch command {self.fetch_command!r}")
        for name in BOUNDS:
            check_number(name, getattr(self, name))

    @property
    def adaptive(self) -> bool:
        return self.batch_size is None

    @property
    def fetch_max(self) -> int:
        """The most one fetch takes: the fixed batch size, or the adaptive cap."""
        return self.batch_max if self.batch_size is None else self.batch_size

    @property
    def source_name(self) -> str:
        return self.queue or ",".join(self.queues) or self.stream or ""


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)], ``attempts`` = earlier failed runs."""
    ceiling = min(cap, base * (2.0 ** min(attempts, 64)))
    return (rng or random).uniform(0.0, ceiling)
