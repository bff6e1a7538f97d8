"""Scheduled capacity: a floor and a cap on replicas for windows that open at cron fire times.

Pure: ``active(schedules, now)`` takes the time as an argument and reads no clock. The only outside data is
the IANA time-zone database, read through ``zoneinfo`` when a schedule is parsed (the operator image
has Debian's ``tzdata``).

Cron expressions are the five numeric fields of Vixie cron (minute, hour, day of month, month, day of
week; ``*``, ``N``, ``N-M``, ``*/S``, ``N-M/S`` and comma lists; day of week 0-7, 0 and 7 both Sunday).
When both day fields are restricted a day matches either one, as in cron. Names (``MON``, ``JAN``),
macros (``@daily``) and seconds are not accepted. A small strict parser instead of a library: the schema
can mirror exactly this grammar, and the daylight-saving rules below are ours to state and test.

Fire times are wall-clock times in the schedule's zone; a window lasts ``durationSeconds`` of real time.
Daylight-saving changes:

- A local time that does not exist (02:30 on a spring-forward day in Europe/Berlin) fires at the same
  instant as the time before the change would: 02:30 CET = 03:30 CEST. The window still opens that day,
  one hour later by the wall clock, and lasts its full duration.
- A local time that happens twice (01:30 on a fall-back day in America/New_York) fires once, at its first
  occurrence (01:30 EDT).
"""

from __future__ import annotations

import calendar
import datetime
import functools
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# What the CRD's schema refuses as well (a test checks the two agree).
CRON_PATTERN = r"^[0-9*/,-]+( [0-9*/,-]+){4}$"
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
MAX_DURATION = 31 * 86400

_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, d: datetime.date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: last_fire's cache looks it up every poll
class Schedule:
    index: int
    cron_text: str
    cron: Cron
    timezone: str
    zone: zoneinfo.ZoneInfo
    duration_seconds: int
    min_replicas: int | None
    max_replicas: int | None

    @property
    def field(self) -> str:
        return f"spec.scaling.schedules[{self.index}]"


@dataclass(frozen=True)
class Window:
    """A schedule whose window is open at ``now``: since ``opened``, until ``closes`` (Unix seconds)."""

    schedule: Schedule
    opened: float
    closes: float


def _field(text: str, name: str, lo: int, hi: int) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if not m:
            raise ScheduleError(f"{name} {part!r} is not N, N-M, * or one of them /step")
        if m.group(1) == "*":
            start, end = lo, hi
        else:
            start = int(m.group(2))
            end = int(m.group(3)) if m.group(3) is not None else start
            if m.group(4) is not None and m.group(3) is None:
                end = hi  # N/S: from N to the end, as cron reads it
        step = int(m.group(4)) if m.group(4) is not None else 1
        if not (lo <= start <= hi and lo <= end <= hi):
            raise ScheduleError(f"{name} {part!r} is outside {lo}-{hi}")
        if start > end:
            raise ScheduleError(f"{name} {part!r} is a range that ends before it starts")
        if step < 1:
            raise ScheduleError(f"{name} {part!r} has a step below 1")
        values.update(range(start, end + 1, step))
    return frozenset(values), text != "*"


def parse_cron(text: str) -> Cron:
    parts = text.split(" ")
    if len(parts) != 5 or not re.fullmatch(CRON_PATTERN, text):
        raise ScheduleError(f"{text!r} is not five cron fields (minute hour day-of-month month day-of-week)")
    parsed = [_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, days_r), (months, _), (weekdays, weekdays_r) = parsed
    weekdays = frozenset(w % 7 for w in weekdays)
    cron = Cron(tuple(sorted(minutes)), tuple(sorted(hours)), days, months, weekdays, days_r, weekdays_r)
    if not (days_r and weekdays_r) and not any(
        d <= calendar.monthrange(2024, m)[1]
        for m in months
        for d in days  # 2024: February has 29
    ):
        raise ScheduleError(f"{text!r} never fires: no month in it has such a day")
    return cron


def parse_schedule(obj: Mapping[str, Any], index: int) -> Schedule:
    """One entry of ``spec.scaling.schedules``; ScheduleError names the field that is wrong."""
    where = f"spec.scaling.schedules[{index}]"
    if not isinstance(obj, Mapping):
        raise ScheduleError(f"{where} must be an object")
    cron_text = str(obj.get("cron", ""))
    try:
        cron = parse_cron(cron_text)
    except ScheduleError as exc:
        raise ScheduleError(f"{where}.cron: {exc}") from None
    tz = str(obj.get("timezone", "UTC"))
    try:
        if not re.fullmatch(TIMEZONE_PATTERN, tz):
            raise ValueError(tz)
        zone = zoneinfo.ZoneInfo(tz)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError):
        raise ScheduleError(
            f"{where}.timezone: {tz!r} is not a time zone of the IANA database (e.g. Europe/Berlin, UTC)"
        ) from None
    try:
        duration = int(obj.get("durationSeconds", 0))
    except (TypeError, ValueError, OverflowError):
        duration = 0
    if not 1 <= duration <= MAX_DURATION:
        raise ScheduleError(f"{where}.durationSeconds must be from 1 to {MAX_DURATION}")
    lo, hi = obj.get("minReplicas"), obj.get("maxReplicas")
    lo = None if lo is None else int(lo)
    hi = None if hi is None else int(hi)
    if lo is None and hi is None:
        raise ScheduleError(f"{where} needs minReplicas, maxReplicas or both")
    if (lo is not None and lo < 0) or (hi is not None and hi < 1):
        raise ScheduleError(f"{where}: minReplicas must be at least 0 and maxReplicas at least 1")
    if lo is not None and hi is not None and lo > hi:
        raise ScheduleError(f"{where}.minReplicas must not exceed {where}.maxReplicas")
    return Schedule(index, cron_text, cron, tz, zone, duration, lo, hi)


def parse_schedules(items: Iterable[Any]) -> tuple[tuple[Schedule, ...], tuple[str, ...]]:
    """The usable schedules, and a message for each one left out."""
    good: list[Schedule] = []
    errors: list[str] = []
    for i, obj in enumerate(items):
        try:
            good.append(parse_schedule(obj, i))
        except ScheduleError as exc:
            errors.append(str(exc))
        except (TypeError, ValueError, OverflowError) as exc:  # a value of another type, past the schema
            errors.append(f"spec.scaling.schedules[{i}]: {type(exc).__name__}: {exc}")
    return tuple(good), tuple(errors)


def _fires_on(s: Schedule, day: datetime.date) -> list[float]:
    """Fire instants of ``day`` (local), by the rules of the module's docstring: fold=0 maps a skipped
    time forward across the gap and a repeated time to its first occurrence."""
    if not s.cron.matches_day(day):
        return []
    out = []
    for h in s.cron.hours:
        for m in s.cron.minutes:
            local = datetime.datetime(day.year, day.month, day.day, h, m, tzinfo=s.zone, fold=0)
            out.append(local.timestamp())
    return out


@functools.lru_cache(maxsize=4096)
def last_fire(s: Schedule, minute: int) -> float | None:
    """The latest fire instant at or before ``minute * 60`` that can still hold a window open, or None.
    Cached per minute (fires fall on whole minutes): resources that share a schedule share the work."""
    now = minute * 60.0
    today = datetime.datetime.fromtimestamp(now, s.zone).date()
    days = s.duration_seconds // 86400 + 2  # a gap or a repeated hour moves a fire by at most a day
    for back in range(-1, days + 1):
        fires = [t for t in _fires_on(s, today - datetime.timedelta(days=back)) if t <= now]
        if fires:
            return max(fires)
    return None


def active(schedules: Iterable[Schedule], now: float) -> tuple[Window, ...]:
    """The windows open at ``now``: a window opened at fire time ``t`` is open for ``t <= now < t + d``."""
    out = []
    for s in schedules:
        t = last_fire(s, int(now // 60))
        if t is not None and t <= now < t + s.duration_seconds:
            out.append(Window(s, t, t + s.duration_seconds))
    return tuple(out)


def bounds(windows: Iterable[Window]) -> tuple[int | None, int | None]:
    """The tightest bounds of the open windows: the highest floor and the lowest cap (None: no bound)."""
    floors = [w.schedule.min_replicas for w in windows if w.schedule.min_replicas is not None]
    caps = [w.schedule.max_replicas for w in windows if w.schedule.max_replicas is not None]
    return (max(floors) if floors else None), (min(caps) if caps else None)
