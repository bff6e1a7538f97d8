"""Scheduled capacity on the local control plane: the operator (a subprocess, real time) opens a window at
its cron fire time and closes it after its duration; a schedule it cannot use is reported and skipped."""

from __future__ import annotations

import datetime
import math
import time
from zoneinfo import ZoneInfo

import pytest
import redis

from tests.operator.operator_harness import Api, deployment, qc, run_operator, wait_for

pytestmark = [pytest.mark.cluster]

ZONE = "Asia/Kolkata"  # UTC+05:30: a cron read as UTC would fire 5.5 hours off
FLOOR = 3
DURATION = 15


def _next_fire(margin: float) -> float:
    """The next whole minute at least ``margin`` seconds away (fires fall on whole minutes)."""
    return math.ceil((time.time() + margin) / 60) * 60


def _epoch(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def test_a_window_opens_at_its_fire_time_and_its_floor_lifts_when_it_closes(
    crds, namespace, k8s, sa_kubeconfig, redis_url, tmp_path
):
    fire = _next_fire(margin=20)  # the operator is up and idle well before the window opens
    local = datetime.datetime.fromtimestamp(fire, ZoneInfo(ZONE))
    cron = f"{local.minute} {local.hour} {local.day} {local.month} *"
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    scaling = {
        "targetBacklogPerReplica": 10,
        "cooldownSeconds": 0,
        "pollingIntervalSeconds": 1,
        "scaleDown": {"stabilizationSeconds": 0},
        "schedules": [
            {
                "cron": cron,
                "timezone": ZONE,
                "durationSeconds": DURATION,
                "minReplicas": FLOOR,
                "maxReplicas": 8,
            }
        ],
    }
    api.create_qc(qc("sched", redis_url, {"list": {"key": "sq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        wait_for("operator status", lambda: api.condition("sched", "Ready") == "True", timeout=60)
        assert api.condition("sched", "SchedulesValid") == "True"
        while time.time() < fire - 1.5:  # nothing opens early
            assert api.replicas() == 0, op.log()[-3000:]
            time.sleep(0.2)
        wait_for("the window's floor", lambda: api.replicas() == FLOOR, timeout=30, interval=0.05)
        opened_after = time.time() - fire
        print(f"floor applied {opened_after:.2f}s after the fire time (polling every 1 s)")
        assert opened_after > -1.5  # not before the fire time (a poll may land 1 s before it: clocks)
        st = wait_for(
            "the window in status",
            lambda: (s := api.get_qc("sched")["status"]).get("activeSchedules") and s,
            timeout=10,
        )
        (window,) = st["activeSchedules"]
        assert (window["index"], window["timezone"], window["minReplicas"]) == (0, ZONE, FLOOR)
        assert _epoch(window["openedAt"]) == fire and _epoch(window["closesAt"]) == fire + DURATION
        assert st["lastRule"] == "schedule-min"
        assert "spec.scaling.schedules[0]" in st["lastDecision"]
        scaled = [m for m in api.events("Scaled") if f"0 -> {FLOOR}" in m]
        assert scaled and "spec.scaling.schedules[0]" in scaled[0], api.events("Scaled")
        while time.time() < fire + DURATION - 1.5:  # the floor holds while the window is open
            assert api.replicas() == FLOOR, op.log()[-3000:]
            time.sleep(0.2)
        wait_for("the floor lifts", lambda: api.replicas() == 0, timeout=30)
        assert time.time() >= fire + DURATION - 1.5
        wait_for(
            "the closed window leaves status",
            lambda: api.get_qc("sched")["status"].get("activeSchedules") == [],
            timeout=10,
        )


def test_an_unknown_time_zone_is_reported_by_field_and_scaling_goes_on(
    crds, namespace, k8s, sa_kubeconfig, redis_url, tmp_path
):
    r = redis.Redis.from_url(redis_url)
    api = Api(k8s, namespace)
    api.create_deployment(deployment("w", {}))
    scaling = {
        "targetBacklogPerReplica": 10,
        "schedules": [
            {"cron": "* * * * *", "timezone": "UTC", "durationSeconds": 60, "maxReplicas": 5},
            # the schema's pattern takes it (it cannot know the database); the operator cannot use it
            {"cron": "* * * * *", "timezone": "Mars/Olympus_Mons", "durationSeconds": 60, "minReplicas": 2},
        ],
    }
    api.create_qc(qc("badtz", redis_url, {"list": {"key": "tzq"}}, scaling))
    with run_operator(crds, namespace, sa_kubeconfig, tmp_path) as op:
        c = wait_for(
            "SchedulesValid=False",
            lambda: (c := api.conditions("badtz").get("SchedulesValid")) and c["status"] == "False" and c,
            timeout=60,
        )
        assert c["reason"] == "InvalidSchedule"
        assert "spec.scaling.schedules[1].timezone" in c["message"] and "Mars/Olympus_Mons" in c["message"]
        events = wait_for("the event", lambda: api.events("InvalidSchedule", "Warning", "badtz"), timeout=10)
        assert "spec.scaling.schedules[1].timezone" in events[0]
        # scaling goes on, with the usable window's cap (5) and without the unusable one's floor (2)
        assert api.replicas() == 0
        r.lpush("tzq", *range(100))
        wait_for("scaled to the cap of schedule 0", lambda: api.replicas() == 5, timeout=30)
        # /scale is patched before the status is written: wait for the status of that decision
        st = wait_for(
            "the status of the capped decision",
            lambda: (st := api.get_qc("badtz")["status"]).get("lastRule") == "schedule-max" and st,
            timeout=10,
        )
        assert [w["index"] for w in st["activeSchedules"]] == [0]
        assert api.condition("badtz", "Ready") == "True", op.log()[-3000:]
        assert len(api.events("InvalidSchedule", "Warning", "badtz")) == 1  # once, not every poll
    r.delete("tzq")
    r.close()
