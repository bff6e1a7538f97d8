"""The status document, built without a cluster (``tide_operator.status``)."""

from __future__ import annotations

from typing import Any

import pytest
from tide_operator.policy import Decision, PolicyState
from tide_operator.status import MESSAGE_LIMIT, backlog_status, build_status, iso, parse_iso
from tide_worker.backlog import Backlog

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _build(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "queue": "jobs",
        "generation": 3,
        "current": 2,
        "conditions": {},
        "transitions": {},
        "decision": None,
        "state": PolicyState(),
        "backlog": None,
        "now": NOW,
    }
    args.update(overrides)
    return build_status(**args)


def test_iso_round_trips_whole_seconds() -> None:
    assert iso(NOW) == "2027-01-15T08:00:00Z"
    assert parse_iso(iso(NOW)) == NOW
    assert iso(None) is None


@pytest.mark.parametrize("value", [None, "", "yesterday", "2027-01-15 08:00:00", 17])
def test_parse_iso_of_what_is_not_a_time_is_none(value: Any) -> None:
    assert parse_iso(value) is None


def test_before_the_first_decision_only_what_is_known_is_written() -> None:
    assert _build(current=None) == {"queue": "jobs", "observedGeneration": 3, "conditions": []}


def test_conditions_sorted_with_their_transition_times_and_bounded_messages() -> None:
    status = _build(
        conditions={"Ready": ("True", "Serving", "x" * 5000), "Active": ("False", "Idle", "backlog 0")},
        transitions={"Ready": "2027-01-01T00:00:00Z"},
    )
    ready, active = status["conditions"][1], status["conditions"][0]
    assert [c["type"] for c in status["conditions"]] == ["Active", "Ready"]
    assert ready == {
        "type": "Ready",
        "status": "True",
        "reason": "Serving",
        "message": "x" * MESSAGE_LIMIT,
        "lastTransitionTime": "2027-01-01T00:00:00Z",
    }
    # a condition with no recorded transition is stamped now
    assert active["lastTransitionTime"] == iso(NOW)


def test_a_decision_brings_its_replicas_rule_and_times() -> None:
    state = PolicyState(last_scale_time=NOW - 60, last_active_time=None)
    decision = Decision(desired=5, rule="target", reason="backlog 50 / 10 per replica = 5", state=state)
    status = _build(decision=decision, state=state)
    assert status["desiredReplicas"] == 5 and status["currentReplicas"] == 2
    assert status["lastRule"] == "target" and status["lastDecision"] == "backlog 50 / 10 per replica = 5"
    assert status["lastScaleTime"] == iso(NOW - 60)
    assert "lastActiveTime" not in status  # unknown: left out, so a merge patch keeps the stored one


def test_backlog_parts_as_kubectl_and_dashboards_read_them() -> None:
    b = Backlog(ready=5, inflight=2, retries_due=1, retries_waiting=7, stream_lag=0)
    doc = backlog_status(b)
    assert doc == {
        "total": 8,
        "ready": 5,
        "inFlight": 2,
        "retriesDue": 1,
        "retriesWaiting": 7,
        "streamLag": 0,
        "streamPending": 0,
        "lagEstimated": False,
        "oldestAgeSeconds": None,  # nothing known to wait: null, so the merge patch removes an old age
    }
    assert _build(backlog=doc)["backlog"] == doc
    assert backlog_status(Backlog(ready=1, oldest_age=12.345))["oldestAgeSeconds"] == 12.3


def test_open_windows_are_shown_and_a_closed_one_is_cleared() -> None:
    from tide_operator.schedule import Window, parse_schedule

    s = parse_schedule(
        {"cron": "0 8 * * *", "timezone": "Europe/Berlin", "durationSeconds": 7200, "minReplicas": 4}, 1
    )
    state = PolicyState()
    opened = NOW - 3600  # 08:00 UTC is 09:00 in Berlin: the window opened at 08:00 Berlin = 07:00 UTC
    d = Decision(3, "schedule-min", "r", state, windows=(Window(s, opened, opened + 7200),))
    assert _build(decision=d)["activeSchedules"] == [
        {
            "index": 1,
            "cron": "0 8 * * *",
            "timezone": "Europe/Berlin",
            "minReplicas": 4,
            "openedAt": "2027-01-15T07:00:00Z",
            "closesAt": "2027-01-15T09:00:00Z",
        }
    ]
    # an empty list, not a missing key: a merge patch must clear what the last write showed
    assert _build(decision=Decision(0, "target", "r", state))["activeSchedules"] == []


def test_several_lists_show_each_queue_beside_the_sum() -> None:
    from tide_worker.backlog import sum_backlogs

    parts = [
        ("high", Backlog(ready=5, inflight=1)),
        ("low", Backlog(ready=2, retries_due=3, next_retry_at=9.0)),
    ]
    doc = backlog_status(sum_backlogs(b for _, b in parts), parts)
    assert doc["total"] == 11 and doc["ready"] == 7 and doc["retriesDue"] == 3
    assert doc["queues"] == [
        {"key": "high", "total": 6, "ready": 5, "inFlight": 1, "retriesDue": 0, "retriesWaiting": 0},
        {"key": "low", "total": 5, "ready": 2, "inFlight": 0, "retriesDue": 3, "retriesWaiting": 0},
    ]
    assert "queues" not in backlog_status(parts[0][1])  # one list: as before
    # the wait objective holds for every list: the sum carries the oldest waiting message of any
    aged = sum_backlogs([Backlog(ready=1, oldest_age=3.0), Backlog(ready=1, oldest_age=7.5), Backlog()])
    assert aged.oldest_age == 7.5 and sum_backlogs([Backlog(), Backlog()]).oldest_age is None
