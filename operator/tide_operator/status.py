"""The QueueConsumer's ``.status`` document, built from plain values: pure, tested without a cluster.

``consumer.py`` keeps the loop's state and decides when to write; this module says what is written.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from tide_worker.backlog import Backlog

from tide_operator.policy import Decision, PolicyState
from tide_operator.schedule import Window

MESSAGE_LIMIT = 1000  # the API server stores messages whole; bound what one poll can write
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

ConditionValue = tuple[str, str, str]  # (status "True"/"False", reason, message)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(_FORMAT)


def parse_iso(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(str(value), _FORMAT).replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def backlog_status(b: Backlog, queues: Sequence[tuple[str, Backlog]] = ()) -> dict[str, Any]:
    """``.status.backlog``: the parts, as ``kubectl get qc`` and dashboards read them; with several
    lists, ``queues`` holds each one's (and the rest is their sum)."""
    out = _backlog_fields(b)
    if queues:
        out["queues"] = [
            {
                "key": key,
                "total": q.total,
                "ready": q.ready,
                "inFlight": q.inflight,
                "retriesDue": q.retries_due,
                "retriesWaiting": q.retries_waiting,
            }
            for key, q in queues
        ]
    return out


def _backlog_fields(b: Backlog) -> dict[str, Any]:
    return {
        "total": b.total,
        "ready": b.ready,
        "inFlight": b.inflight,
        "retriesDue": b.retries_due,
        "retriesWaiting": b.retries_waiting,
        "streamLag": b.stream_lag,
        "streamPending": b.stream_pending,
        "lagEstimated": b.lag_estimated,
        # null when nothing waits: the merge patch then removes the last age instead of keeping it
        "oldestAgeSeconds": None if b.oldest_age is None else round(b.oldest_age, 1),
    }


def window_status(w: Window) -> dict[str, Any]:
    """One entry of ``.status.activeSchedules``: which schedule, its bounds, since when and until when."""
    s = w.schedule
    doc: dict[str, Any] = {
        "index": s.index,
        "cron": s.cron_text,
        "timezone": s.timezone,
        "minReplicas": s.min_replicas,
        "maxReplicas": s.max_replicas,
        "openedAt": iso(w.opened),
        "closesAt": iso(w.closes),
    }
    return {k: v for k, v in doc.items() if v is not None}


def build_status(
    *,
    queue: str | None,
    generation: int | None,
    current: int | None,
    conditions: Mapping[str, ConditionValue],
    transitions: Mapping[str, str],
    decision: Decision | None,
    state: PolicyState,
    backlog: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The whole status; unset fields are left out (a merge patch leaves what it does not name). Messages
    arrive redacted (``tide_worker.connection.redact``): this module does no I/O and imports none."""
    status: dict[str, Any] = {
        "queue": queue,
        "observedGeneration": generation,
        "currentReplicas": current,
        "conditions": [
            {
                "type": ctype,
                "status": cstatus,
                "reason": reason,
                "message": message[:MESSAGE_LIMIT],
                "lastTransitionTime": transitions.get(ctype) or iso(now),
            }
            for ctype, (cstatus, reason, message) in sorted(conditions.items())
        ],
    }
    if decision is not None:
        status["desiredReplicas"] = decision.desired
        status["lastRule"] = decision.rule
        status["lastScaleTime"] = iso(state.last_scale_time)
        status["lastActiveTime"] = iso(state.last_active_time)
        status["lastDecision"] = decision.reason[:MESSAGE_LIMIT]
        # always written (empty when none is open): a merge patch would keep a window that closed
        status["activeSchedules"] = [window_status(w) for w in decision.windows]
    if backlog is not None:
        status["backlog"] = dict(backlog)
    return {k: v for k, v in status.items() if v is not None}
