"""Cron expressions: parsing, validation and fire times in a time zone.

This is the arithmetic behind :class:`jobsched.CronTrigger`; nothing here is
public. It follows Vixie cron (cronie), the behaviour of the crontabs users
already have:

* Five fields, ``minute hour day-of-month month day-of-week``, or six when a
  seconds field is asked for, which then comes first.
* Each field is a comma-separated list of items. An item is ``*``, a value
  ``N``, or a range ``N-M``, optionally followed by ``/STEP``. ``N/STEP`` is
  read as ``N-MAX/STEP`` (so ``0/5`` in the minute field equals ``*/5`` and
  ``10/15`` is minutes 10, 25, 40 and 55).
* Months and weekdays may be given as three-letter English names
  (``jan``..``dec``, ``sun``..``sat``), in any case. Weekdays 0 and 7 are both
  Sunday.
* Rejected, each with a message naming the expression and the field: ranges
  that run backwards (``5-1``), steps of zero or steps larger than the field,
  values out of range, empty items (``1,,2``), and the Quartz and Jenkins
  extensions ``L``, ``W``, ``#``, ``?`` and ``H``.
* Day-of-month and day-of-week: when either field starts with ``*`` a day must
  match both; when both are restricted, a day matching either fires.
* An expression that can never fire, such as ``0 0 31 2 *``, is rejected by
  checking the sets of months and days (29 February counts as possible).

Fire times are computed by walking candidate local dates, then the expanded
hours, minutes and seconds of each date, and mapping each wall time to UTC with
:mod:`zoneinfo` under the daylight-saving rules described in
:meth:`CronSchedule.next_after`.
"""

from __future__ import annotations

import calendar
import functools
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, date, datetime, time, timedelta, timezone
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo

from ._errors import InvalidTrigger

_SECONDS_PER_MINUTE: Final = 60
_SECONDS_PER_HOUR: Final = 3600
_SECONDS_PER_DAY: Final = 86_400
#: Local dates whose UTC offsets are remembered, per process.
_DAY_CACHE_SIZE: Final = 4096
_ONE_DAY: Final = timedelta(days=1)
_ONE_SECOND: Final = timedelta(seconds=1)
_ZERO: Final = timedelta(0)
_UTC: Final = timezone.utc
#: The Gregorian calendar repeats every 400 years, so a schedule that does not
#: fire within that many years of a date never fires again.
_SEARCH_YEARS: Final = 400
#: Fire times are searched no further than this year, so that date arithmetic
#: near ``datetime.max`` cannot overflow.
_LAST_YEAR: Final = MAXYEAR - 1
#: Longest digit string accepted as a value; anything longer is out of range.
_MAX_DIGITS: Final = 4
_SUNDAY_ALIAS: Final = 7
_FEBRUARY: Final = 2
_LONGEST_FEBRUARY: Final = 29

_MONTH_ABBREVIATIONS: Final = (
    ("jan", "feb", "mar", "apr", "may", "jun"),
    ("jul", "aug", "sep", "oct", "nov", "dec"),
)
_WEEKDAY_ABBREVIATIONS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES: Final[Mapping[str, int]] = {
    name: number
    for number, name in enumerate(
        (name for half in _MONTH_ABBREVIATIONS for name in half), start=1
    )
}
_WEEKDAY_NAMES: Final[Mapping[str, int]] = {
    name: number for number, name in enumerate(_WEEKDAY_ABBREVIATIONS)
}

#: Vixie cron's aliases, as five-field expressions.
ALIASES: Final[Mapping[str, str]] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELD_LAYOUT: Final = "minute hour day-of-month month day-of-week"
#: Tokens that look like a Quartz or Jenkins extension (L, W, #, ?, H).
_EXTENSION_RE: Final = re.compile(r"[?#]|\d[LW]|^[LWHR]", re.IGNORECASE)
_EXTENSION_HINT: Final = (
    "; the cron extensions L, W, #, ? and H (Quartz, Jenkins) are not supported"
)


class _Field(NamedTuple):
    """One field of a cron expression: its name, bounds and value names."""

    name: str
    low: int
    high: int
    names: Mapping[str, int]


_SECOND_FIELD: Final = _Field("second", 0, 59, {})
_MINUTE_FIELD: Final = _Field("minute", 0, 59, {})
_HOUR_FIELD: Final = _Field("hour", 0, 23, {})
_DAY_FIELD: Final = _Field("day-of-month", 1, 31, {})
_MONTH_FIELD: Final = _Field("month", 1, 12, _MONTH_NAMES)
_WEEKDAY_FIELD: Final = _Field("day-of-week", 0, _SUNDAY_ALIAS, _WEEKDAY_NAMES)
_FIELDS: Final = (
    _SECOND_FIELD,
    _MINUTE_FIELD,
    _HOUR_FIELD,
    _DAY_FIELD,
    _MONTH_FIELD,
    _WEEKDAY_FIELD,
)


class _FieldError(Exception):
    """A problem inside one field; turned into :class:`InvalidTrigger`."""


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression: the sorted values allowed in each field.

    Attributes:
        seconds: Allowed seconds (``(0,)`` without a seconds field).
        minutes: Allowed minutes.
        hours: Allowed hours.
        days: Allowed days of the month.
        months: Allowed months.
        weekdays: Allowed weekdays, 0 = Sunday .. 6 = Saturday.
        dom_star: Whether the day-of-month field starts with ``*``.
        dow_star: Whether the day-of-week field starts with ``*``.
        fixed_time: Whether neither the minute nor the hour field starts with
            ``*`` (Vixie cron's test for its daylight-saving rules).
    """

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool
    fixed_time: bool

    def matches_day(self, day: date) -> bool:
        """Return whether ``day`` satisfies the day-of-month and weekday fields.

        Args:
            day: A local calendar date whose month is already known to match.

        Returns:
            ``True`` if the schedule fires on that date.
        """
        dom_ok = day.day in self.days
        dow_ok = day.isoweekday() % _SUNDAY_ALIAS in self.weekdays
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime | None:
        """Return the first fire time strictly after ``after``.

        Wall times are evaluated in ``zone``. On a spring-forward day, a wall
        time inside the gap fires once at the first instant after the gap for a
        fixed-time schedule and not at all otherwise. On a fall-back day, a
        repeated wall time fires at its first occurrence only for a fixed-time
        schedule and at both occurrences otherwise.

        Args:
            after: A naive datetime holding a UTC instant.
            zone: The time zone that the fields are evaluated in.

        Returns:
            A naive datetime holding the UTC fire time, or ``None`` if there is
            none before the year 9999.
        """
        local = after.replace(tzinfo=_UTC).astimezone(zone)
        # A fall-back can move the wall clock back past midnight, so a fire time
        # later than ``after`` may belong to the previous local date.
        first_day = max(local.date(), date.min + _ONE_DAY) - _ONE_DAY
        best: datetime | None = None
        for day in self._days_from(first_day):
            clock = _day_clock(zone, day)
            if best is not None and clock.earliest >= best:
                break
            found = self._first_on_day(clock, after)
            if found is not None and (best is None or found < best):
                best = found
        return best

    def _days_from(self, first: date) -> Iterator[date]:
        """Yield the local dates on or after ``first`` that the schedule fires on."""
        last_year = min(first.year + _SEARCH_YEARS, _LAST_YEAR)
        for year in range(first.year, last_year + 1):
            for month in self.months:
                if (year, month) < (first.year, first.month):
                    continue
                from_day = (
                    first.day if (year, month) == (first.year, first.month) else 1
                )
                month_length = calendar.monthrange(year, month)[1]
                for number in self._candidate_days(from_day, month_length):
                    day = date(year, month, number)
                    if self.matches_day(day):
                        yield day

    def _candidate_days(self, first: int, month_length: int) -> Iterable[int]:
        """Return the day numbers from ``first`` worth testing in a month."""
        if self.dom_star or self.dow_star:
            # Both fields must match, so only the listed days can.
            listed = self.days[bisect_left(self.days, first) :]
            return [day for day in listed if day <= month_length]
        return range(first, month_length + 1)

    def _first_on_day(self, clock: _DayClock, after: datetime) -> datetime | None:
        """Return the earliest fire time after ``after`` among one date's times.

        Args:
            clock: The UTC offsets in force on the date.
            after: The naive UTC instant that fire times must follow.

        Returns:
            The naive UTC fire time, or ``None`` if the date has none after
            ``after``.
        """
        if after >= clock.latest:
            return None
        best: datetime | None = None
        for low, high, offset in clock.pieces(fixed_time=self.fixed_time):
            # Wall time W fires at W - offset, which must be later than ``after``.
            wall = self._first_wall(clock.start, low, high, after + offset)
            if wall is not None and (best is None or wall - offset < best):
                best = wall - offset
        gap = clock.gap()
        if (
            self.fixed_time
            and gap is not None
            and clock.transition is not None
            and clock.transition > after
            and (best is None or clock.transition < best)
            and self._first_wall(clock.start, *gap) is not None
        ):
            best = clock.transition
        return best

    def _first_wall(
        self,
        start: datetime,
        low: datetime,
        high: datetime,
        floor: datetime | None = None,
    ) -> datetime | None:
        """Return the first allowed wall time in ``[low, high)`` after ``floor``.

        Args:
            start: Local midnight of the date searched; only its times count.
            low: The earliest wall time wanted.
            high: The wall time that results must precede.
            floor: If given, results must be strictly later than it.

        Returns:
            The naive wall time, or ``None`` if there is none.
        """
        first = max(0, (low - start) // _ONE_SECOND)
        if floor is not None:
            first = max(first, (floor - start) // _ONE_SECOND + 1)
        end = min(_SECONDS_PER_DAY, (high - start) // _ONE_SECOND)
        if first >= end:
            return None
        found = next(self._times_from(first), end)
        return start + timedelta(seconds=found) if found < end else None

    def _times_from(self, first: int) -> Iterator[int]:
        """Yield allowed times of day, in seconds after midnight, from ``first``."""
        first_hour, rest = divmod(first, _SECONDS_PER_HOUR)
        first_minute, first_second = divmod(rest, _SECONDS_PER_MINUTE)
        for hour in self.hours[bisect_left(self.hours, first_hour) :]:
            same_hour = hour == first_hour
            minute_index = bisect_left(self.minutes, first_minute) if same_hour else 0
            for minute in self.minutes[minute_index:]:
                same_minute = same_hour and minute == first_minute
                second_index = (
                    bisect_left(self.seconds, first_second) if same_minute else 0
                )
                base = hour * _SECONDS_PER_HOUR + minute * _SECONDS_PER_MINUTE
                for second in self.seconds[second_index:]:
                    yield base + second


@dataclass(frozen=True, slots=True)
class _DayClock:
    """How one local date's wall times map to UTC.

    It assumes at most one change of UTC offset touches a date's wall times,
    which holds for every zone in the tz database since 1970.

    Attributes:
        start: Local midnight, as a naive wall time.
        offset_before: UTC offset when the date begins.
        offset_after: UTC offset when it ends.
        transition: The naive UTC instant at which the offset changes, or
            ``None`` when it does not.
    """

    start: datetime
    offset_before: timedelta
    offset_after: timedelta
    transition: datetime | None

    @property
    def earliest(self) -> datetime:
        """A UTC instant no later than any fire time on or after this date."""
        return self.start - max(self.offset_before, self.offset_after)

    @property
    def latest(self) -> datetime:
        """A UTC instant later than every fire time of this date's wall times."""
        return self.start + _ONE_DAY - min(self.offset_before, self.offset_after)

    def pieces(self, *, fixed_time: bool) -> list[tuple[datetime, datetime, timedelta]]:
        """Return ``(low, high, offset)`` for each run of wall times that fire.

        Wall times in ``[low, high)`` exist once with ``offset``. A repeated
        wall time appears in both pieces of a fall-back day, except for
        fixed-time schedules, which keep only its first occurrence. Wall times
        in a spring-forward gap appear in no piece.
        """
        end = self.start + _ONE_DAY
        if self.transition is None:
            return [(self.start, end, self.offset_before)]
        before, after = self.offset_before, self.offset_after
        resume = self.transition + (before if fixed_time else after)
        if after > before:  # spring-forward: the wall clock jumps ahead
            resume = self.transition + after
        return [
            (self.start, self.transition + before, before),
            (resume, end, after),
        ]

    def gap(self) -> tuple[datetime, datetime] | None:
        """Return the wall times skipped by a spring-forward change, if any."""
        if self.transition is None or self.offset_after <= self.offset_before:
            return None
        return (
            self.transition + self.offset_before,
            self.transition + self.offset_after,
        )


@functools.lru_cache(maxsize=_DAY_CACHE_SIZE)
def _day_clock(zone: ZoneInfo, day: date) -> _DayClock:
    """Return the UTC offsets of one local date in ``zone`` (cached)."""
    start = datetime.combine(day, time())
    before = _offset(start, zone, fold=0)
    after = _offset(start + _ONE_DAY, zone, fold=1)
    if before == after:
        return _DayClock(start, before, after, None)
    # Any change that touches this date's wall times lies strictly inside:
    low = start - max(before, after) - _ONE_SECOND
    high = start + _ONE_DAY - min(before, after) + _ONE_SECOND
    return _DayClock(start, before, after, _transition(low, high, zone))


def _offset(wall: datetime, zone: ZoneInfo, fold: int) -> timedelta:
    """Return the UTC offset of a naive wall time in ``zone`` for ``fold``."""
    offset = wall.replace(tzinfo=zone, fold=fold).utcoffset()
    return _ZERO if offset is None else offset


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """Return the first instant in ``(before, after]`` whose offset differs.

    Args:
        before: A naive UTC instant before a change of UTC offset.
        after: A naive UTC instant at or after that change.
        zone: The time zone whose offset changes.

    Returns:
        The naive UTC instant of the change, found by bisection to the second
        (time zone transitions fall on whole seconds).
    """
    old_offset = _utc_offset(before, zone)
    low, high = before, after
    span = int((high - low) / _ONE_SECOND)
    while span > 1:
        middle = low + timedelta(seconds=span // 2)
        if _utc_offset(middle, zone) == old_offset:
            low = middle
        else:
            high = middle
        span = int((high - low) / _ONE_SECOND)
    return high


def _utc_offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    """Return the offset of ``zone`` at a naive UTC instant."""
    offset = instant.replace(tzinfo=_UTC).astimezone(zone).utcoffset()
    return _ZERO if offset is None else offset


def parse_cron(expression: str, *, seconds: bool) -> CronSchedule:
    """Parse and validate a cron expression.

    Args:
        expression: Five fields, or six with ``seconds``, or an ``@`` alias.
        seconds: Whether the expression starts with a seconds field.

    Returns:
        The expanded schedule.

    Raises:
        InvalidTrigger: The expression is malformed or can never fire; the
            message names the expression and, where there is one, the field.
    """
    texts = _split_fields(expression, seconds=seconds)
    values = [
        _expand_field(text, spec, expression)
        for text, spec in zip(texts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(value % _SUNDAY_ALIAS for value in values[5])
    schedule = CronSchedule(
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        days=values[3],
        months=values[4],
        weekdays=weekdays,
        dom_star=texts[3].startswith("*"),
        dow_star=texts[5].startswith("*"),
        fixed_time=not (texts[1].startswith("*") or texts[2].startswith("*")),
    )
    _check_possible(schedule, expression)
    return schedule


def _split_fields(expression: str, *, seconds: bool) -> list[str]:
    """Return the six field texts, seconds first (``"0"`` when not given)."""
    text = expression.strip()
    if not text:
        raise InvalidTrigger(f"invalid cron expression {expression!r}: it is empty")
    if text.startswith("@"):
        text = _expand_alias(text, expression)
        seconds = False
    fields = text.split()
    expected = len(_FIELDS) if seconds else len(_FIELDS) - 1
    if len(fields) != expected:
        raise InvalidTrigger(_count_problem(expression, len(fields), seconds=seconds))
    return fields if seconds else ["0", *fields]


def _expand_alias(text: str, expression: str) -> str:
    """Return the five-field expression behind an ``@`` alias."""
    alias = text.lower()
    if alias in ALIASES:
        return ALIASES[alias]
    if alias == "@reboot":
        raise InvalidTrigger(
            f"invalid cron expression {expression!r}: @reboot is not supported, "
            "because a scheduler shared by many processes has no single boot"
        )
    known = ", ".join(sorted(ALIASES))
    raise InvalidTrigger(
        f"invalid cron expression {expression!r}: unknown alias; use one of {known}"
    )


def _count_problem(expression: str, count: int, *, seconds: bool) -> str:
    """Return the message for an expression with the wrong number of fields."""
    prefix = f"invalid cron expression {expression!r}: "
    if seconds:
        return (
            f"{prefix}expected 6 fields (second {_FIELD_LAYOUT}) because "
            f"seconds=True, got {count}; a year field is not supported"
        )
    problem = f"{prefix}expected 5 fields ({_FIELD_LAYOUT}), got {count}"
    if count > len(_FIELDS) - 1:
        problem += (
            "; to use a seconds field pass seconds=True (it comes first); "
            "a year field is not supported"
        )
    return problem


def _expand_field(text: str, spec: _Field, expression: str) -> tuple[int, ...]:
    """Return the sorted values that one field allows."""
    try:
        values: set[int] = set()
        for item in text.split(","):
            values.update(_expand_item(item, spec))
    except _FieldError as error:
        raise InvalidTrigger(
            f"invalid cron expression {expression!r}: {spec.name} field "
            f"{text!r}: {error}"
        ) from None
    return tuple(sorted(values))


def _expand_item(item: str, spec: _Field) -> range:
    """Return the values of one comma-separated item of a field."""
    if not item:
        raise _FieldError("empty item in the list")
    base, has_step, step_text = item.partition("/")
    step = _parse_step(step_text, spec) if has_step else 1
    if base == "*":
        return range(spec.low, spec.high + 1, step)
    if "-" in base:
        start_text, _, end_text = base.partition("-")
        start, end = _parse_value(start_text, spec), _parse_value(end_text, spec)
        if start > end:
            raise _FieldError(_backwards_problem(item, start, end, spec))
        return range(start, end + 1, step)
    start = _parse_value(base, spec)
    # ``N/STEP`` runs from N to the end of the field, as in cronie and Quartz.
    return range(start, (spec.high if has_step else start) + 1, step)


def _parse_step(text: str, spec: _Field) -> int:
    """Return the step after a ``/``, which must be 1 .. the field's size."""
    if not (text.isascii() and text.isdigit()):
        raise _FieldError(f"step {text!r} is not a positive whole number")
    size = spec.high - spec.low + 1
    step = int(text) if len(text) <= _MAX_DIGITS else size + 1
    if step == 0:
        raise _FieldError("a step of zero never advances")
    if step > size:
        raise _FieldError(f"step {text} is larger than the field ({size} values)")
    return step


def _parse_value(text: str, spec: _Field) -> int:
    """Return a number or name in a field, checked against the field's bounds."""
    if text.isascii() and text.isdigit():
        value = int(text) if len(text) <= _MAX_DIGITS else spec.high + 1
        if not spec.low <= value <= spec.high:
            raise _FieldError(f"value {text} is out of range ({spec.low}-{spec.high})")
        return value
    if text.lower() in spec.names:
        return spec.names[text.lower()]
    if not text:
        raise _FieldError("a range needs a number on each side of '-'")
    expected = "a number"
    if spec.names:
        expected += f" or a three-letter name ({', '.join(spec.names)})"
    hint = _EXTENSION_HINT if _EXTENSION_RE.search(text) else ""
    raise _FieldError(f"{text!r} is not {expected}{hint}")


def _backwards_problem(item: str, start: int, end: int, spec: _Field) -> str:
    """Return the message for a range whose start exceeds its end."""
    problem = (
        f"range {item!r} runs backwards ({start} > {end}); wrap-around ranges "
        "are not supported, split it into two ranges"
    )
    if spec is _WEEKDAY_FIELD:
        problem += " (7 also means Sunday, e.g. 'fri-7')"
    return problem


def _check_possible(schedule: CronSchedule, expression: str) -> None:
    """Reject a schedule whose days of the month never occur in its months.

    Only the case where both day fields must match can be impossible: when both
    are restricted the weekday alone can fire, and a day-of-month field that
    starts with ``*`` always includes the 1st. A weekday restriction never makes
    a valid date impossible, since every date falls on every weekday in some
    year.
    """
    if schedule.dom_star or not schedule.dow_star:
        return
    for month in schedule.months:
        longest = (
            _LONGEST_FEBRUARY
            if month == _FEBRUARY
            else calendar.monthrange(1, month)[1]
        )
        if schedule.days[0] <= longest:
            return
    days = ",".join(map(str, schedule.days))
    months = ",".join(map(str, schedule.months))
    raise InvalidTrigger(
        f"invalid cron expression {expression!r}: it never matches, because "
        f"day-of-month {days} never occurs in month {months}"
    )
