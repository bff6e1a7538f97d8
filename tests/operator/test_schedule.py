"""Scheduled capacity: cron parsing, windows across daylight-saving changes, and the policy's use of them.

Table-driven and pure: every row gives ``now`` as a wall-clock time in a named zone, so the rows read as
the calendar does (Europe/Berlin springs forward on 2026-03-29 at 02:00 CET, America/New_York falls back
on 2026-11-01 at 02:00 EDT).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from tide_operator import schedule
from tide_operator.policy import PolicyState, decide
from tide_operator.schedule import ScheduleError, parse_cron, parse_schedule
from tide_operator.spec import Behavior, Scaling, SpecError, parse_scaling
from tide_worker.backlog import Backlog

UNLIMITED = Behavior(0, None, None, 1)
CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "queueconsumer.yaml"


def at(zone: str, *args: int, fold: int = 0) -> float:
    return datetime.datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).timestamp()  # type: ignore[misc]


def sched(cron: str, tz: str, duration: int, lo: int | None = None, hi: int | None = None, i: int = 0):
    obj: dict[str, Any] = {"cron": cron, "timezone": tz, "durationSeconds": duration}
    if lo is not None:
        obj["minReplicas"] = lo
    if hi is not None:
        obj["maxReplicas"] = hi
    return parse_schedule(obj, i)


BERLIN, NY = "Europe/Berlin", "America/New_York"

# id, cron, zone, duration, now, open?, opened at
WINDOWS = [
    ("daily-before", "0 9 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 27, 8, 59), False, None),
    (
        "daily-open",
        "0 9 * * *",
        BERLIN,
        3600,
        at(BERLIN, 2026, 3, 27, 9, 0),
        True,
        at(BERLIN, 2026, 3, 27, 9),
    ),
    ("daily-last-second", "0 9 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 27, 9, 59, 59), True, None),
    ("daily-closed", "0 9 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 27, 10, 0), False, None),
    # the day after spring-forward: 09:00 is CEST, one hour earlier in UTC than the day before
    (
        "daily-after-spring-forward",
        "0 9 * * *",
        BERLIN,
        3600,
        at(BERLIN, 2026, 3, 30, 9, 30),
        True,
        at(BERLIN, 2026, 3, 30, 9),
    ),
    # 02:30 does not exist on 2026-03-29: it fires at 03:30 CEST (= 02:30 CET) and lasts its hour
    ("gap-not-before", "30 2 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 29, 3, 29), False, None),
    (
        "gap-fires-after",
        "30 2 * * *",
        BERLIN,
        3600,
        at(BERLIN, 2026, 3, 29, 3, 30),
        True,
        at(BERLIN, 2026, 3, 29, 3, 30),
    ),
    ("gap-full-duration", "30 2 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 29, 4, 29), True, None),
    ("gap-closes", "30 2 * * *", BERLIN, 3600, at(BERLIN, 2026, 3, 29, 4, 30), False, None),
    # 01:30 happens twice on 2026-11-01 in New York: the window opens at the first (EDT) only
    (
        "fold-first",
        "30 1 * * *",
        NY,
        1800,
        at(NY, 2026, 11, 1, 1, 45, fold=0),
        True,
        at(NY, 2026, 11, 1, 1, 30, fold=0),
    ),
    ("fold-second-not-again", "30 1 * * *", NY, 1800, at(NY, 2026, 11, 1, 1, 45, fold=1), False, None),
    # a window spanning the fall-back hour lasts real seconds: 01:00 EDT + 2 h = 01:00 EST
    ("span-fold", "0 1 * * *", NY, 7200, at(NY, 2026, 11, 1, 1, 59, fold=1), True, at(NY, 2026, 11, 1, 1)),
    ("span-fold-closed", "0 1 * * *", NY, 7200, at(NY, 2026, 11, 1, 2, 0), False, None),
    # weekdays (Mon-Fri): Sunday 2026-03-29 has no window, Monday has
    ("weekday-sunday", "0 9 * * 1-5", BERLIN, 3600, at(BERLIN, 2026, 3, 29, 9, 30), False, None),
    ("weekday-monday", "0 9 * * 1-5", BERLIN, 3600, at(BERLIN, 2026, 3, 30, 9, 30), True, None),
    # day of month OR day of week, as cron: the 1st (a Wednesday) matches, Sunday 2026-04-05 too
    ("dom-or-dow-dom", "0 0 1 * 0", "UTC", 60, at("UTC", 2026, 4, 1, 0, 0, 30), True, None),
    ("dom-or-dow-dow", "0 0 1 * 0", "UTC", 60, at("UTC", 2026, 4, 5, 0, 0, 30), True, None),
    ("dom-or-dow-neither", "0 0 1 * 0", "UTC", 60, at("UTC", 2026, 4, 2, 0, 0, 30), False, None),
    # a window longer than a day, and one that crosses midnight
    (
        "weekly-long",
        "0 18 * * 5",
        "UTC",
        3 * 86400,
        at("UTC", 2026, 4, 5, 12),
        True,
        at("UTC", 2026, 4, 3, 18),
    ),
    ("overnight", "0 22 * * *", BERLIN, 6 * 3600, at(BERLIN, 2026, 4, 2, 3, 0), True, None),
    ("every-minute", "* * * * *", "UTC", 30, at("UTC", 2026, 4, 2, 3, 0, 29), True, at("UTC", 2026, 4, 2, 3)),
    ("every-minute-gap", "* * * * *", "UTC", 30, at("UTC", 2026, 4, 2, 3, 0, 30), False, None),
    ("step", "*/15 * * * *", "UTC", 60, at("UTC", 2026, 4, 2, 3, 45, 10), True, None),
    ("step-off", "*/15 * * * *", "UTC", 60, at("UTC", 2026, 4, 2, 3, 46, 10), False, None),
]


@pytest.mark.parametrize(
    ("cron", "tz", "duration", "now", "is_open", "opened"),
    [r[1:] for r in WINDOWS],
    ids=[r[0] for r in WINDOWS],
)
def test_window(cron, tz, duration, now, is_open, opened):
    s = sched(cron, tz, duration, lo=3)
    windows = schedule.active([s], now)
    assert bool(windows) is is_open
    if opened is not None:
        assert windows[0].opened == opened
        assert windows[0].closes == opened + duration


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 * * * *", "outside 0-59"),
        ("* 24 * * *", "outside 0-23"),
        ("* * 0 * *", "outside 1-31"),
        ("* * * 13 *", "outside 1-12"),
        ("* * * * 8", "outside 0-7"),
        ("5-1 * * * *", "ends before it starts"),
        ("*/0 * * * *", "step below 1"),
        ("* * * *", "five cron fields"),
        ("* * * * * *", "five cron fields"),
        ("*  * * * *", "five cron fields"),
        ("1,,2 * * * *", "is not N"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 31 2,4,6 *", "never fires"),
    ],
)
def test_cron_refused(text, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse_cron(text)


def test_cron_fields():
    c = parse_cron("0,30 9-17/4 29 2 7")
    assert c.minutes == (0, 30) and c.hours == (9, 13, 17)
    assert c.days == {29} and c.months == {2} and c.weekdays == {0}  # 7 is Sunday
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (
            {"cron": "0 9 * * *", "timezone": "Mars/Olympus", "durationSeconds": 60, "minReplicas": 1},
            "timezone",
        ),
        (
            {"cron": "0 9 * * *", "timezone": "../etc/passwd", "durationSeconds": 60, "minReplicas": 1},
            "timezone",
        ),
        ({"cron": "0 99 * * *", "timezone": "UTC", "durationSeconds": 60, "minReplicas": 1}, "cron"),
        ({"cron": "0 9 * * *", "timezone": "UTC", "durationSeconds": 0, "minReplicas": 1}, "durationSeconds"),
        (
            {
                "cron": "0 9 * * *",
                "timezone": "UTC",
                "durationSeconds": 60,
                "minReplicas": 3,
                "maxReplicas": 2,
            },
            "minReplicas",
        ),
        ({"cron": "0 9 * * *", "timezone": "UTC", "durationSeconds": 60}, "needs minReplicas"),
    ],
)
def test_schedule_refused_names_field(obj, field):
    with pytest.raises(ScheduleError, match=re.escape("spec.scaling.schedules[2]") + r"\.?.*" + field):
        parse_schedule(obj, 2)


def test_parse_scaling_keeps_good_schedules_and_names_bad_ones():
    s = parse_scaling(
        {
            "schedules": [
                {"cron": "0 9 * * *", "timezone": BERLIN, "durationSeconds": 60, "minReplicas": 1},
                {"cron": "0 9 * * *", "timezone": "Nowhere/Land", "durationSeconds": 60, "minReplicas": 1},
            ]
        }
    )
    assert [x.index for x in s.schedules] == [0]
    assert len(s.schedule_errors) == 1 and s.schedule_errors[0].startswith(
        "spec.scaling.schedules[1].timezone"
    )
    with pytest.raises(SpecError):
        parse_scaling({"schedules": "0 9 * * *"})


@pytest.mark.parametrize(
    "obj",
    [
        "0 9 * * *",
        {"cron": "0 9 * * *", "durationSeconds": float("inf"), "minReplicas": 1},
        {"cron": "0 9 * * *", "durationSeconds": 60, "minReplicas": {"a": 1}},
        {"cron": "0 9 * * *", "durationSeconds": 60, "maxReplicas": "many"},
        {"cron": ["0", "9"], "durationSeconds": 60, "minReplicas": 1},
        {"cron": "0 9 * * *", "timezone": "America", "durationSeconds": 60, "minReplicas": 1},
        {"cron": "0 9 * * *", "timezone": "A" * 300, "durationSeconds": 60, "minReplicas": 1},
    ],
)
def test_a_value_past_the_schema_is_a_named_error_not_a_crash(obj):
    good, errors = schedule.parse_schedules([obj])
    assert good == () and len(errors) == 1 and errors[0].startswith("spec.scaling.schedules[0]")


def test_crd_patterns_agree():
    crd = yaml.safe_load(CRD_PATH.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    item = props["scaling"]["properties"]["schedules"]["items"]
    assert item["properties"]["cron"]["pattern"] == schedule.CRON_PATTERN
    assert item["properties"]["timezone"]["pattern"] == schedule.TIMEZONE_PATTERN
    assert item["properties"]["durationSeconds"]["maximum"] == schedule.MAX_DURATION


# --- the policy ---------------------------------------------------------------------------------------


def sc(*schedules, **kw: Any) -> Scaling:
    base = Scaling(target_backlog_per_replica=10, max_replicas=20, scale_down=UNLIMITED, cooldown_seconds=0)
    return replace(base, schedules=tuple(schedules), **kw)


SALE = sched("0 9 * * *", BERLIN, 3600, lo=8, i=0)  # a floor from 09:00 to 10:00
QUIET = sched("30 9 * * *", BERLIN, 600, hi=4, i=1)  # a cap from 09:30 to 09:40
PEAK = sched("45 9 * * *", BERLIN, 300, lo=12, i=2)  # a higher floor from 09:45 to 09:50
GAP = sched("30 2 * * *", BERLIN, 1800, lo=5, i=3)  # the spring-forward day: 03:30-04:00 CEST
FOLD = sched("30 1 * * *", NY, 1800, lo=6, i=4)  # the fall-back day: the first 01:30-02:00 only

# id, scaling, backlog total, current, now, desired, rule
POLICY = [
    ("no-window-idle", sc(SALE), 0, 0, at(BERLIN, 2026, 3, 27, 8, 59), 0, "below-activation"),
    ("floor-wakes-from-zero", sc(SALE), 0, 0, at(BERLIN, 2026, 3, 27, 9, 0), 8, "schedule-min"),
    ("floor-under-backlog", sc(SALE), 150, 8, at(BERLIN, 2026, 3, 27, 9, 10), 15, "target"),
    ("floor-lifts", sc(SALE), 0, 8, at(BERLIN, 2026, 3, 27, 10, 0), 0, "to-zero"),
    # overlapping: the cap opens inside the floor's window; the floor (8) exceeds the cap (4): the cap wins
    ("overlap-cap-wins", sc(SALE, QUIET), 0, 8, at(BERLIN, 2026, 3, 27, 9, 35), 4, "schedule-max"),
    ("overlap-cap-backlog", sc(SALE, QUIET), 500, 4, at(BERLIN, 2026, 3, 27, 9, 35), 4, "schedule-max"),
    ("overlap-highest-floor", sc(SALE, PEAK), 0, 8, at(BERLIN, 2026, 3, 27, 9, 46), 12, "schedule-min"),
    ("overlap-after-peak", sc(SALE, PEAK), 0, 12, at(BERLIN, 2026, 3, 27, 9, 51), 8, "schedule-min"),
    # a window never loosens the spec: a floor above maxReplicas is cut to it
    (
        "floor-above-spec-max",
        sc(PEAK, max_replicas=10),
        0,
        0,
        at(BERLIN, 2026, 3, 27, 9, 46),
        10,
        "schedule-min",
    ),
    # a window's cap below spec.minReplicas: the cap wins here too
    (
        "cap-below-spec-min",
        sc(QUIET, min_replicas=6),
        0,
        6,
        at(BERLIN, 2026, 3, 27, 9, 35),
        4,
        "schedule-max",
    ),
    ("cap-below-spec-min-closed", sc(QUIET, min_replicas=6), 0, 4, at(BERLIN, 2026, 3, 27, 9, 40), 6, "min"),
    ("spec-min-above-window-floor", sc(SALE, min_replicas=9), 0, 9, at(BERLIN, 2026, 3, 27, 9, 5), 9, "min"),
    # across daylight-saving changes
    ("gap-before", sc(GAP), 0, 0, at(BERLIN, 2026, 3, 29, 3, 29), 0, "below-activation"),
    ("gap-opens-0330-cest", sc(GAP), 0, 0, at(BERLIN, 2026, 3, 29, 3, 30), 5, "schedule-min"),
    ("gap-next-day-0230-cest", sc(GAP), 0, 0, at(BERLIN, 2026, 3, 30, 2, 30), 5, "schedule-min"),
    ("fold-first-0145-edt", sc(FOLD), 0, 0, at(NY, 2026, 11, 1, 1, 45, fold=0), 6, "schedule-min"),
    ("fold-second-0145-est", sc(FOLD), 0, 0, at(NY, 2026, 11, 1, 1, 45, fold=1), 0, "below-activation"),
]


@pytest.mark.parametrize(
    ("scaling", "total", "current", "now", "desired", "rule"),
    [r[1:] for r in POLICY],
    ids=[r[0] for r in POLICY],
)
def test_policy_with_schedules(scaling, total, current, now, desired, rule):
    state = PolicyState(last_active_time=now - 100)
    d = decide(scaling, Backlog(ready=total), [], current, state, now)
    assert (d.desired, d.rule) == (desired, rule), d.reason
    names = [w.schedule.field for w in d.windows]
    for name in names:
        assert name in d.reason
    if not names:
        assert "scheduled window" not in d.reason


def test_reason_says_the_cap_wins():
    now = at(BERLIN, 2026, 3, 27, 9, 35)
    d = decide(sc(SALE, QUIET), Backlog(), [], 8, PolicyState(last_active_time=now), now)
    assert "floor 8 exceeds cap 4: the cap wins" in d.reason
    assert "spec.scaling.schedules[0]" in d.reason and "spec.scaling.schedules[1]" in d.reason
    d = decide(sc(QUIET, min_replicas=6), Backlog(), [], 6, PolicyState(last_active_time=now), now)
    assert "floor 6 exceeds cap 4: the cap wins" in d.reason


def test_read_failure_holds_even_in_a_window():
    now = at(BERLIN, 2026, 3, 27, 9, 5)
    d = decide(sc(SALE), None, [], 2, PolicyState(), now)
    assert (d.desired, d.rule) == (2, "read-failed")


def test_reason_is_stable_while_a_window_stays_open():
    """A reason that counted down would rewrite a quiet resource's status every few seconds."""
    a, b = at(BERLIN, 2026, 3, 27, 9, 10), at(BERLIN, 2026, 3, 27, 9, 20)
    reasons = {decide(sc(SALE), Backlog(), [], 8, PolicyState(last_active_time=t), t).reason for t in (a, b)}
    assert len(reasons) == 1 and "open until 2026-03-27T09:00:00Z" in reasons.pop()
