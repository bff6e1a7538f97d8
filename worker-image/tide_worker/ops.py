"""Operations on a queue or stream: stats, and listing, requeueing and purging dead letters.

Everything here reads and writes only the key contract of :mod:`tide_worker.keys`, so it works on what
any Tide worker wrote. Long dead-letter lists are handled in batches: no single command holds Redis for
long, and a ``progress(done, total)`` callback reports how far a requeue or purge got.

Dead letters of a list queue are a list, newest at the head (workers ``LPUSH`` them); requeue and purge
work from the tail (oldest first) and stop at the length they saw when they started, so letters that die
meanwhile (or die again after a requeue) are left for the next run instead of looping forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from tide_worker.backlog import GroupInfo, age, entry_time, list_backlog, stream_backlog
from tide_worker.envelope import MalformedMessage, decode, encode_envelope, enqueued_time
from tide_worker.keys import QueueKeys, StreamKeys
from tide_worker.producer import STREAM_FIELD, push_command
from tide_worker.records import DeadLetter, Heartbeat
from tide_worker.scripts import source

Client = redis.Redis | RedisCluster
Progress = Callable[[int, int], None]

DEFAULT_BATCH = 500
SCAN_COUNT = 1000
MAX_INDEX = 2**63 - 1  # Redis list indexes are signed 64-bit


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _noop_progress(done: int, total: int) -> None:
    return None


# --- stats -------------------------------------------------------------------------------------------


def _workers(client: Client, registry: str, heartbeat_key: Callable[[str], str]) -> list[dict[str, Any]]:
    """Registered workers with their last heartbeat; ``alive`` = the heartbeat key has not expired."""
    entries: list[Any] = list(client.zrange(registry, 0, -1, withscores=True))
    ids = [_text(member) for member, _ in entries]
    beats = client.mget([heartbeat_key(i) for i in ids]) if ids else []  # one slot: the hash tag
    out = []
    for wid, (_, score), raw in zip(ids, entries, beats, strict=True):
        hb: Heartbeat | None = None
        if raw is not None:
            try:
                hb = Heartbeat.decode(raw)
            except (ValueError, TypeError):
                hb = None  # a foreign or corrupt value: shown as not alive rather than crashing stats
        out.append(
            {
                "id": wid,
                "alive": hb is not None,
                "registered": True,
                "last_seen": hb.ts if hb else float(score),
                "rate": hb.rate if hb else 0.0,
                "inflight": hb.inflight if hb else 0,
                "processed": hb.processed if hb else 0,
                "failed": hb.failed if hb else 0,
                "concurrency": hb.concurrency if hb else 0,
                "host": hb.host if hb else "",
                "pid": hb.pid if hb else 0,
            }
        )
    return out


def _counters(client: Client, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in client.hgetall(key).items():
        try:
            out[_text(k)] = int(v)
        except ValueError:
            continue
    return out


def queue_stats(client: Client, queue: str, now: float | None = None, side: str = "right") -> dict[str, Any]:
    """Ready, in-flight, delayed (and due), dead, and the workers of list queue ``queue``.

    In-flight counts every processing list: of registered workers, and orphans found with SCAN (a
    worker that died before registering or after its registry entry was removed still holds messages
    until a reaper moves them back). ``backlog`` is what the operator scales on: ready + in-flight +
    retries already due (:func:`tide_worker.backlog.list_backlog`, which the operator applies too).
    ``oldest_age`` is how long the message at the consuming end (``side``, as the worker's ``--side``) has
    waited, from its envelope (:func:`tide_worker.envelope.enqueued_time`); None for a plain string, whose
    enqueue time nobody wrote down (the operator counts from when it first saw it there).
    """
    now = time.time() if now is None else now
    k = QueueKeys(queue)
    workers = _workers(client, k.workers, k.worker)
    known = {w["id"] for w in workers}
    for key in client.scan_iter(match=k.processing_pattern, count=SCAN_COUNT):
        wid = k.worker_id_from_processing(_text(key))
        if wid not in known:
            known.add(wid)
            workers.append(
                {"id": wid, "alive": False, "registered": False, "last_seen": None, "rate": 0.0}
                | {"inflight": 0, "processed": 0, "failed": 0, "concurrency": 0, "host": "", "pid": 0}
            )
    pipe = client.pipeline(transaction=False)
    pipe.llen(k.ready)
    pipe.zcard(k.delayed)
    pipe.zcount(k.delayed, "-inf", now)
    pipe.llen(k.dead)
    pipe.lindex(k.ready, 0 if side == "left" else -1)
    for w in workers:
        pipe.llen(k.processing(w["id"]))
    ready, delayed, due, dead, head, *held = pipe.execute()
    for w, n in zip(workers, held, strict=True):
        w["processing"] = int(n)
    oldest = None if head is None else age(enqueued_time(head), now)
    b = list_backlog(ready, held, retries_total=delayed, retries_due=due, oldest_age=oldest)
    alive = [w for w in workers if w["alive"]]
    return {
        "kind": "queue",
        "queue": queue,
        "time": now,
        "ready": b.ready,
        "in_flight": b.inflight,
        "delayed": int(delayed),
        "delayed_due": b.retries_due,
        "dead": int(dead),
        "backlog": b.total,
        "oldest_age": b.oldest_age,
        "workers_alive": len(alive),
        "rate": round(sum(float(w["rate"]) for w in alive), 3),
        "workers": sorted(workers, key=lambda w: (not w["alive"], w["id"])),
        "counters": _counters(client, k.stats),
    }


def _first_after(client: Client, stream: str, last_id: str | None, now: float) -> float | None:
    """The age of the first entry after ``last_id`` (the stream's first without one): an id's first part
    is the time it was added, in milliseconds."""
    got = client.xrange(stream, "-" if last_id is None else "(" + last_id, "+", count=1)
    return age(entry_time(_text(got[0][0])), now) if got else None


def _group_info(client: Client, stream: str, group: str) -> dict[str, Any] | None:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    for g in groups:
        if _text(g.get("name")) == group:
            return dict(g)
    return None


def stream_stats(client: Client, stream: str, group: str, now: float | None = None) -> dict[str, Any]:
    """Length, lag, pending, consumers, dead letters and workers of ``stream`` for consumer ``group``.

    The lag and backlog follow :func:`tide_worker.backlog.stream_backlog`, as the operator's do: a nil lag
    (entries deleted or trimmed past the group's position) is estimated from ``entries-added`` and
    ``entries-read`` (capped by the length), never zero while entries exist past the group's last
    delivered id; a missing group counts the whole stream (an estimate), since workers create it at id 0
    and will consume all of it.
    """
    now = time.time() if now is None else now
    k = StreamKeys(stream, group)
    length = int(client.xlen(stream))
    info = _group_info(client, stream, group)
    consumers: list[dict[str, Any]] = []
    if info is None:
        b = stream_backlog(length, None, oldest_age=_first_after(client, stream, None, now))
        last_id, entries_read = None, None
    else:
        last_id = _text(info.get("last-delivered-id"))
        entries_read = info.get("entries-read")
        raw_lag = info.get("lag")
        g = GroupInfo(
            pending=int(info.get("pending") or 0),
            lag=None if raw_lag is None else int(raw_lag),
            entries_read=None if entries_read is None else int(entries_read),
            last_delivered_id=last_id,
        )
        added, last_generated = None, None
        if raw_lag is None:  # only an estimate needs the stream's counters
            sinfo = client.xinfo_stream(stream)
            added, last_generated = sinfo.get("entries-added"), sinfo.get("last-generated-id")
        b = stream_backlog(
            length,
            g,
            entries_added=None if added is None else int(added),
            last_generated_id=None if last_generated is None else _text(last_generated),
            oldest_age=_first_after(client, stream, last_id or "0-0", now),
        )
        for c in client.xinfo_consumers(stream, group):
            consumers.append(
                {
                    "name": _text(c.get("name")),
                    "pending": int(c.get("pending") or 0),
                    "idle_ms": int(c.get("idle") or 0),
                }
            )
    workers = _workers(client, k.workers, k.worker)
    for w in workers:
        w["processing"] = w["inflight"]
    alive = [w for w in workers if w["alive"]]
    return {
        "kind": "stream",
        "stream": stream,
        "group": group,
        "time": now,
        "group_exists": info is not None,
        "length": length,
        "lag": b.stream_lag,
        "lag_estimated": b.lag_estimated,
        "pending": b.stream_pending,
        "last_delivered_id": last_id,
        "entries_read": entries_read,
        "backlog": b.total,
        "oldest_age": b.oldest_age,
        "dead": int(client.xlen(k.dead)),
        "consumers": consumers,
        "workers_alive": len(alive),
        "rate": round(sum(float(w["rate"]) for w in alive), 3),
        "workers": sorted(workers, key=lambda w: (not w["alive"], w["id"])),
        "counters": _counters(client, k.stats),
    }


# --- dead letters of a list queue ------------------------------------------------------------------


def _parse_record(raw: bytes | str, queue: str) -> DeadLetter | None:
    try:
        return DeadLetter.decode(raw)
    except (ValueError, TypeError):
        return None


def _unreadable(raw: bytes | str, queue: str) -> DeadLetter:
    # Shown by `dlq list` so an operator sees it, never requeued (we do not know what the message was).
    return DeadLetter.for_raw(
        raw if isinstance(raw, bytes) else raw.encode(),
        reason="unreadable",
        error="not a Tide dead-letter record",
        queue=queue,
    )


def requeue_payload(dl: DeadLetter) -> bytes:
    """The message to put back: its envelope with attempts reset; foreign messages as they were."""
    raw = dl.raw
    try:
        msg = decode(raw)
    except MalformedMessage:
        return raw  # the operator asked for it back (perhaps after fixing the handler): as it was
    if not msg.enveloped:
        return raw
    return encode_envelope(msg.body, message_id=msg.id, attempts=0, ts=msg.enqueued_at, headers=msg.headers)


def dlq_list(client: Client, queue: str, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
    """Dead letters of ``queue``, newest first, ``limit`` of them from ``offset``."""
    if limit <= 0 or offset < 0 or offset > MAX_INDEX:
        return []
    raws = client.lrange(QueueKeys(queue).dead, offset, min(offset + limit - 1, MAX_INDEX))
    return [_parse_record(r, queue) or _unreadable(r, queue) for r in raws]


def dlq_requeue(
    client: Client,
    queue: str,
    count: int | None = None,
    ids: Collection[str] | None = None,
    *,
    side: str = "right",
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> int:
    """Move dead letters back to the producer end of ``queue``, oldest first; return how many moved.

    ``count`` caps how many move; ``ids`` keeps only those message ids. ``side`` is the end workers
    take from (as the worker's ``--side``). Each message moves atomically (``dlq_requeue.lua``: LREM
    from the dead list, push to the queue), ``batch`` per script call, so Redis is never held long.
    ``progress(done, total)`` counts dead letters examined out of those present at the start.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    report = progress or _noop_progress
    k = QueueKeys(queue)
    push = push_command(side)
    script = client.register_script(source("dlq_requeue"))
    wanted = set(ids) if ids is not None else None
    total = int(client.llen(k.dead))
    limit = count if count is not None else total
    if wanted is None:
        total = min(total, limit)
    examined = moved = 0
    skip = 0  # records at the tail we examined and left in place (not wanted, unreadable)
    report(0, total)
    while examined < total and moved < limit:
        size = min(batch, total - examined)
        window = client.lrange(k.dead, -(skip + size), -(skip + 1))
        if not window:
            break
        args: list[bytes | str] = [push]
        left = 0
        for record in reversed(window):  # the tail end first: oldest first
            dl = _parse_record(record, queue)
            if (
                dl is None
                or (wanted is not None and dl.message_id not in wanted)
                or moved + (len(args) - 1) // 2 >= limit
            ):
                left += 1
                continue
            args += [record, requeue_payload(dl)]
        if len(args) > 1:
            flags = script(keys=[k.dead, k.ready], args=args)
            moved += sum(int(f) for f in flags)
        skip += left
        examined += len(window)
        report(min(examined, total), total)
    return moved


def dlq_purge(client: Client, queue: str, *, chunk: int = 1000, progress: Progress | None = None) -> int:
    """Delete the dead letters of ``queue`` present at the start, ``chunk`` at a time from the tail.

    LTRIM of a chunk is O(chunk): no single giant DEL that blocks Redis on a long list. Returns how
    many were deleted.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, not {chunk}")
    report = progress or _noop_progress
    dead = QueueKeys(queue).dead
    total = int(client.llen(dead))
    removed = 0
    report(0, total)
    while removed < total:
        n = min(chunk, total - removed)
        pipe = client.pipeline(transaction=False)
        pipe.llen(dead)
        pipe.ltrim(dead, 0, -(n + 1))
        before, _ = pipe.execute()
        removed += min(n, int(before))
        report(removed, total)
        if int(before) <= n:
            break
    return removed


# --- dead letters of a stream ----------------------------------------------------------------------


@dataclass
class StreamDeadLetter:
    """One entry of ``{S}:dead``: its entry id and the dead letter it holds."""

    entry_id: str
    letter: DeadLetter


def _stream_record(fields: Mapping[Any, Any] | None, stream: str) -> DeadLetter | None:
    try:
        return DeadLetter.from_stream_fields(fields or {}, stream)
    except ValueError:
        return None


def _stream_letter(entry_id: Any, fields: Mapping[Any, Any] | None, stream: str) -> StreamDeadLetter:
    dl = _stream_record(fields, stream)
    if dl is None:
        raw = json.dumps({_text(f): _text(v) for f, v in (fields or {}).items()}).encode()
        dl = _unreadable(raw, stream)
    return StreamDeadLetter(_text(entry_id), dl)


def stream_dlq_list(client: Client, stream: str, limit: int = 50, offset: int = 0) -> list[StreamDeadLetter]:
    """Dead letters of ``stream``, newest first (XREVRANGE), ``limit`` of them from ``offset``."""
    if limit <= 0 or offset < 0:
        return []
    dead = StreamKeys(stream, "").dead
    out: list[StreamDeadLetter] = []
    start = "+"
    skipped = 0
    while len(out) < limit:
        page = client.xrevrange(
            dead, max=start, min="-", count=min(1000, offset - skipped + limit - len(out))
        )
        if not page:
            break
        for entry_id, fields in page:
            if skipped < offset:
                skipped += 1
            elif len(out) < limit:
                out.append(_stream_letter(entry_id, fields, stream))
        start = "(" + _text(page[-1][0])
    return out


def stream_dlq_requeue(
    client: Client,
    stream: str,
    count: int | None = None,
    ids: Collection[str] | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> int:
    """Append dead letters of ``stream`` back to it (attempts reset), oldest first; return how many.

    Each moves atomically (``dlq_requeue_stream.lua``: XDEL from ``{S}:dead``, XADD to the stream).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    report = progress or _noop_progress
    dead = StreamKeys(stream, "").dead
    script = client.register_script(source("dlq_requeue_stream"))
    wanted = set(ids) if ids is not None else None
    total = int(client.xlen(dead))
    limit = count if count is not None else total
    if wanted is None:
        total = min(total, limit)
    examined = moved = 0
    start = "-"
    # Stop at the newest entry present now: later ones (or letters that die again) wait for the next run.
    last = client.xrevrange(dead, count=1)
    end = _text(last[0][0]) if last else "-"
    report(0, total)
    while examined < total and moved < limit:
        page = client.xrange(dead, min=start, max=end, count=min(batch, total - examined))
        if not page:
            break
        args: list[bytes | str] = [STREAM_FIELD]
        for entry_id, fields in page:
            dl = _stream_record(fields, stream)
            if dl is None or (wanted is not None and dl.message_id not in wanted):
                continue
            if moved + (len(args) - 1) // 2 >= limit:
                break
            args += [_text(entry_id), requeue_payload(dl)]
        if len(args) > 1:
            flags = script(keys=[dead, stream], args=args)
            moved += sum(int(f) for f in flags)
        examined += len(page)
        start = "(" + _text(page[-1][0])
        report(min(examined, total), total)
    return moved


def stream_dlq_purge(
    client: Client, stream: str, *, chunk: int = 1000, progress: Progress | None = None
) -> int:
    """Delete the dead letters of ``stream`` present at the start, ``chunk`` entries per XDEL."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, not {chunk}")
    report = progress or _noop_progress
    dead = StreamKeys(stream, "").dead
    total = int(client.xlen(dead))
    last = client.xrevrange(dead, count=1)
    end = _text(last[0][0]) if last else "-"
    removed = 0
    report(0, total)
    while removed < total:
        page = client.xrange(dead, min="-", max=end, count=min(chunk, total - removed))
        if not page:
            break
        removed += int(client.xdel(dead, *[_text(entry_id) for entry_id, _ in page]))
        report(min(removed, total), total)
    return removed
