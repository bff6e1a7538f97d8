"""The figures of `make bench-vs-keda` from recorded watch events and handler records (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.vs_keda_figures import (
    PodLife,
    cold_starts,
    median_record,
    pod_lives,
    pod_seconds,
    stopped_busy,
    writes_by,
)


def pod(name: str, ready: bool = False, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_pod_lives_stamp_creation_ready_deletion_and_gone() -> None:
    events = [
        (1.0, "ADDED", pod("a")),
        (2.0, "MODIFIED", pod("a", ready=True)),
        (3.0, "MODIFIED", pod("a", ready=True)),
        (5.0, "MODIFIED", pod("a", ready=True, deleting=True)),
        (9.0, "DELETED", pod("a", ready=False, deleting=True)),
        (4.0, "ADDED", pod("b")),
        (6.0, "DELETED", pod("b")),  # gone without a deletionTimestamp seen: deleting = gone
    ]
    lives = pod_lives(events)
    assert lives["a"] == PodLife(created=1.0, ready=2.0, deleting=5.0, gone=9.0)
    assert lives["b"] == PodLife(created=4.0, ready=None, deleting=6.0, gone=6.0)


def test_pod_seconds_count_terminating_pods_until_gone_within_the_run() -> None:
    lives = {
        "a": PodLife(created=1.0, ready=2.0, deleting=5.0, gone=9.0),  # 8 s, 4 of them terminating
        "b": PodLife(created=8.0, ready=9.0),  # still there at the end: cut at 20
        "c": PodLife(created=-5.0, gone=2.0),  # before the run: only [0, 2]
    }
    assert pod_seconds(lives, 0.0, 20.0) == pytest.approx(8 + 12 + 2)


def test_cold_starts_from_each_arrival_with_no_pod_up() -> None:
    lives = {
        "a": PodLife(created=1.0, ready=2.5, deleting=10.0, gone=12.0),
        "b": PodLife(created=20.0, ready=21.0),
    }
    # 0.5 starts one (Ready at 2.5); 1 and 2 are the same one; 3 finds a up; 11 finds a deleting: the next
    # pod Ready is b at 21; 19.5 and 20.5 are that same cold start; 25 finds b up
    assert cold_starts(lives, [0.5, 1.0, 2.0, 3.0, 11.0, 19.5, 20.5, 25.0]) == [2.0, 10.0]
    assert cold_starts({}, [1.0]) == []  # no pod ever Ready: nothing to measure


def test_stopped_busy_counts_runs_their_pod_was_stopped_during() -> None:
    lives = {"p": PodLife(created=0.0, ready=1.0, deleting=50.0, gone=80.0), "q": PodLife(created=0.0)}
    runs = [
        ("1", "p", 10.0),  # ended at 60, after the stop: finished in the grace, still stopped busy
        ("2", "p", 20.0),  # ended at 40, before the stop
        ("3", "p", 45.0),  # never ended: stopped busy (and interrupted)
        ("4", "p", 55.0),  # started after the stop
        ("5", "q", 10.0),  # its pod was never stopped
    ]
    ends = {("1", "p"): 60.0, ("2", "p"): 40.0, ("4", "p"): 70.0}
    assert stopped_busy(runs, ends, lives) == 2


def test_writes_by_counts_completed_requests_of_the_users_in_the_window(tmp_path: Path) -> None:
    def ev(user: str, at: str, stage: str = "ResponseComplete") -> str:
        return json.dumps({"stage": stage, "user": {"username": user}, "requestReceivedTimestamp": at})

    audit = tmp_path / "audit.log"
    audit.write_text(
        "\n".join(
            [
                ev("keda-operator", "2026-01-01T00:00:10.5Z"),
                ev("system:serviceaccount:kube-system:horizontal-pod-autoscaler", "2026-01-01T00:00:11Z"),
                ev("system:serviceaccount:ns:tide", "2026-01-01T00:00:12Z"),  # another user
                ev("keda-operator", "2026-01-01T00:00:30Z"),  # after the window
            ]
        )
        + "\n"
    )
    since = 1767225600.0 + 10  # 2026-01-01T00:00:10Z
    users = ("keda", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
    assert writes_by(audit, since, since + 10, users) == 2
    assert writes_by(tmp_path / "missing.log", since, since + 10, users) == 0


def test_runs_become_one_record_of_medians_with_interruptions_summed() -> None:
    def run(p99: float, pod_s: float, interrupted: int, t: float) -> dict[str, Any]:
        return {"trace": "flash", "system": "tide", "wait_p50_s": p99 / 2, "wait_p99_s": p99,
                "pod_seconds": pod_s, "interrupted": interrupted, "stopped_busy": 0, "first_pod_ready_s": None,
                "phase_s": t, "load_avg": [t], "timeline": {"t": [t]}}  # fmt: skip

    runs = [run(9.0, 200.0, 0, 1.0), run(7.0, 240.0, 1, 2.0), run(8.0, 180.0, 0, 3.0)]
    rec = median_record(runs)
    assert (rec["wait_p99_s"], rec["wait_p50_s"], rec["pod_seconds"]) == (8.0, 4.0, 200.0)
    assert rec["interrupted"] == 1  # any run's interruption shows
    assert rec["first_pod_ready_s"] is None
    assert rec["timeline"] == {"t": [3.0]}  # the run whose p99 is the median
    assert rec["runs"] == 3 and [r["wait_p99_s"] for r in rec["per_run"]] == [9.0, 7.0, 8.0]
    assert median_record(runs[:1]) is runs[0]
    # an even count: the lower middle, a figure one of the runs had
    assert median_record(runs[:2])["wait_p99_s"] == 7.0
