"""The figures of bench/vs_keda.py from what Redis and the API server recorded: pure functions of the
handler's records and of watch events, so they are tested on their own (tests/bench)."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PodLife:
    """One worker pod as the API server saw it: created, first Ready, deletion asked, gone (arrival times)."""

    created: float
    ready: float | None = None
    deleting: float | None = None
    gone: float | None = None


def pod_lives(events: list[tuple[float, str, dict[str, Any]]]) -> dict[str, PodLife]:
    lives: dict[str, PodLife] = {}
    for at, kind, obj in events:
        name = obj["metadata"]["name"]
        life = lives.setdefault(name, PodLife(created=at))
        conditions = obj.get("status", {}).get("conditions") or []
        if life.ready is None and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        ):
            life.ready = at
        if life.deleting is None and obj["metadata"].get("deletionTimestamp"):
            life.deleting = at
        if kind == "DELETED" and life.gone is None:
            life.gone = at
            life.deleting = life.deleting or at
    return lives


def cold_starts(lives: dict[str, PodLife], arrivals: list[float]) -> list[float]:
    """For each message that arrived with no worker pod up (none created and not yet being deleted), the
    seconds until a pod was Ready; later arrivals before that pod was Ready are the same cold start."""
    out: list[float] = []
    open_until = -math.inf
    for at in sorted(arrivals):
        if at < open_until:
            continue
        up = any(p.created <= at and (p.deleting is None or p.deleting > at) for p in lives.values())
        if up:
            continue
        ready = [p.ready for p in lives.values() if p.ready is not None and p.ready >= at]
        if not ready:
            continue
        open_until = min(ready)
        out.append(open_until - at)
    return out


def stopped_busy(
    runs: list[tuple[str, str, float]], ends: dict[tuple[str, str], float], lives: dict[str, PodLife]
) -> int:
    """Runs ``(message, pod, started)`` during which their pod was told to stop (its deletion came after
    the start and before the end, or there was no end): finished within the grace or not."""
    count = 0
    for i, pod, started in runs:
        deleting = lives[pod].deleting if pod in lives else None
        if deleting is not None and started < deleting < ends.get((i, pod), math.inf):
            count += 1
    return count


def pod_seconds(lives: dict[str, PodLife], since: float, until: float) -> float:
    """Every pod from its creation until it is gone (terminating included), clipped to [since, until]."""
    return sum(max(0.0, min(p.gone or until, until) - max(p.created, since)) for p in lives.values())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def writes_by(audit: Path, since: float, until: float, users: tuple[str, ...]) -> int:
    """Write requests the audit log shows from users starting with one of ``users`` in [since, until]."""
    count = 0
    with contextlib.suppress(FileNotFoundError), audit.open() as handle:
        for line in handle:
            ev = json.loads(line)
            if ev.get("stage") != "ResponseComplete":
                continue
            name = ev.get("user", {}).get("username", "")
            if not name.startswith(users):
                continue
            t = datetime.datetime.fromisoformat(
                ev["requestReceivedTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if since <= t <= until:
                count += 1
    return count


PER_RUN = (
    "wait_p50_s",
    "wait_p99_s",
    "first_pod_ready_s",
    "pod_seconds",
    "interrupted",
    "phase_s",
    "load_avg",
)


def median_record(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for the runs of a (trace, system): each numeric figure's median (the lower middle for an even
    count: a figure one of the runs had), but the runs interrupted and stopped busy summed over all runs (one
    is one too many), and the timeline of the run with the median p99 wait."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = sorted(r[key] for r in runs if r.get(key) is not None)
            out[key] = values[(len(values) - 1) // 2] if values else None
    for key in ("interrupted", "stopped_busy"):
        out[key] = sum(r.get(key) or 0 for r in runs)
    by_p99 = sorted(runs, key=lambda r: r.get("wait_p99_s") or 0.0)
    out["timeline"] = by_p99[(len(runs) - 1) // 2]["timeline"]
    out["runs"] = len(runs)
    out["per_run"] = [{k: r.get(k) for k in PER_RUN} for r in runs]
    return out
