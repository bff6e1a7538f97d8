"""The Redis key contract shared by the worker, the producer, the CLI and the operator.

This module is the only place that spells Tide's key names. Every key derived from a queue or stream
carries the source's hash tag, so on Redis Cluster the source, its processing lists, registry, retry set
and dead letters share one slot (Lua scripts touch several of them atomically).

For a queue ``Q`` without a hash tag the prefix is ``{Q}``: ``{queue:orders}:processing:w1`` hashes like
``queue:orders``. A name that already holds a hash tag (``{orders}:high``) is its own prefix, since
wrapping it again would move the derived keys to a different slot than the list itself.
"""

from __future__ import annotations

from dataclasses import dataclass


def hash_tag(name: str) -> str | None:
    """The part of ``name`` Redis Cluster hashes, or None when the whole name is hashed."""
    start = name.find("{")
    if start < 0:
        return None
    end = name.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or "{}": Redis hashes the whole name
        return None
    return name[start + 1 : end]


def prefix_for(name: str) -> str:
    """The prefix of every key derived from ``name``; see the module docstring."""
    if not name:
        raise ValueError("a queue or stream name must not be empty")
    return name if hash_tag(name) is not None else "{" + name + "}"


@dataclass(frozen=True)
class QueueKeys:
    """Keys of a list queue ``Q``."""

    queue: str

    @property
    def prefix(self) -> str:
        return prefix_for(self.queue)

    @property
    def ready(self) -> str:
        """The list producers push to and workers take from."""
        return self.queue

    def processing(self, worker_id: str) -> str:
        """The short list of messages one worker holds (ack = LREM here)."""
        return f"{self.prefix}:processing:{worker_id}"

    @property
    def processing_pattern(self) -> str:
        """SCAN pattern for every processing list, to find orphans of unregistered workers."""
        return _glob_escape(self.prefix) + ":processing:*"

    def worker_id_from_processing(self, key: str) -> str:
        head = f"{self.prefix}:processing:"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a processing list of {self.queue!r}")
        return key[len(head) :]

    def unstarted(self, worker_id: str) -> str:
        """How many of the leftmost entries of the worker's processing list never started (an integer;
        -1 once a requeue froze it). The reaper counts no interruption for those. Deliberately not under
        ``:processing:``, whose pattern finds processing lists."""
        return f"{self.prefix}:unstarted:{worker_id}"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """Heartbeat key with TTL: JSON with the worker's liveness and recent throughput."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def delayed(self) -> str:
        """Sorted set of retries, score = due time (unix seconds)."""
        return f"{self.prefix}:delayed"

    @property
    def dead(self) -> str:
        """List of dead letters (JSON records with the message and the reason)."""
        return f"{self.prefix}:dead"

    @property
    def reaper_lease(self) -> str:
        """SET NX PX lease held by the one worker currently reaping dead workers."""
        return f"{self.prefix}:reaper"

    @property
    def interrupts(self) -> str:
        """Hash: message id -> times a worker died holding it (poison-pill detection)."""
        return f"{self.prefix}:interrupts"

    @property
    def suspects(self) -> str:
        """Set: the SHA1 of each message a reap counted as interrupted and put back; a fetch marks these
        so the worker runs each alone (exact counting for a suspected poison pill; docs/worker.md)."""
        return f"{self.prefix}:suspects"

    def dedupe(self, message_id: str) -> str:
        """Marker that a message id already succeeded (``--dedupe-ttl``)."""
        return f"{self.prefix}:done:{message_id}"

    @property
    def stats(self) -> str:
        """Hash of cumulative counters (processed, failed, retried, dead, reaped)."""
        return f"{self.prefix}:stats"


@dataclass(frozen=True)
class StreamKeys:
    """Keys of a stream ``S`` consumed by consumer group ``group``."""

    stream: str
    group: str

    @property
    def prefix(self) -> str:
        return prefix_for(self.stream)

    @property
    def dead(self) -> str:
        """Stream of dead letters."""
        return f"{self.prefix}:dead"

    @property
    def workers(self) -> str:
        """Sorted set: consumer name -> last heartbeat, per group."""
        return f"{self.prefix}:workers:{self.group}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{self.group}:{worker_id}"

    @property
    def reaper_lease(self) -> str:
        return f"{self.prefix}:reaper:{self.group}"

    def dedupe(self, message_id: str) -> str:
        return f"{self.prefix}:done:{self.group}:{message_id}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats:{self.group}"


def _glob_escape(text: str) -> str:
    """Escape glob metacharacters so a SCAN MATCH pattern matches ``text`` literally."""
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)
