"""Worker settings (filled from ``tide worker`` options, each of which also reads a ``TIDE_*`` variable)."""

from __future__ import annotations

import os
import random
import secrets
import socket
from dataclasses import dataclass, field


def default_worker_id() -> str:
    """``<POD_NAME or hostname>-<pid>-<4 hex>``: unique per process, readable in the registry."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "worker"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass
class WorkerConfig:
    handler: str
    queue: str | None = None
    stream: str | None = None
    group: str | None = None
    redis_url: str | None = None
    cluster: bool | None = None
    concurrency: int = 1
    batch_size: int = 1
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    handler_timeout: float = 300.0
    heartbeat_ttl: float = 10.0
    shutdown_grace: float = 25.0
    dedupe_ttl: int = 0
    metrics_port: int = 9100
    side: str = "right"
    log_level: str = "INFO"
    worker_id: str = field(default_factory=default_worker_id)
    max_interrupts: int = 3
    reaper_interval: float = 2.0
    claim_idle: float = 30.0
    block_timeout: float = 2.0
    promote_interval: float = 0.5
    fetch_command: str = "auto"  # auto | blmove | brpoplpush (forcing the fallback, for old servers)

    def validate(self) -> None:
        if bool(self.queue) == bool(self.stream):
            raise ValueError("give exactly one of --queue or --stream")
        if self.stream and not self.group:
            raise ValueError("--stream needs --group")
        if self.side not in ("right", "left"):
            raise ValueError(f"--side must be right or left, not {self.side!r}")
        if self.fetch_command not in ("auto", "blmove", "brpoplpush"):
            raise ValueError(f"unknown fetch command {self.fetch_command!r}")
        for name in ("concurrency", "batch_size", "max_attempts", "max_interrupts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("backoff_base", "backoff_cap", "handler_timeout", "shutdown_grace", "dedupe_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("heartbeat_ttl", "reaper_interval", "claim_idle", "block_timeout", "promote_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def source_name(self) -> str:
        return self.queue or self.stream or ""


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)], ``attempts`` = earlier failed runs."""
    ceiling = min(cap, base * (2.0 ** min(attempts, 64)))
    return (rng or random).uniform(0.0, ceiling)
