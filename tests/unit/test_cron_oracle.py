"""Cron fire times checked against a brute-force oracle.

The oracle knows nothing of jobsched's algorithm. It walks every UTC minute (or
second) of a window, converts it to local wall time with zoneinfo, and applies
the rules of DESIGN.md directly:

* a wall time fires when its fields match, with Vixie cron's day rule (both day
  fields must match when either starts with ``*``, otherwise either may);
* a *wildcard* schedule (minute or hour field starting with ``*``) fires at every
  matching minute that exists, in both occurrences of a repeated hour;
* a *fixed-time* schedule fires only at the first occurrence of a repeated wall
  time, and at the first instant after a spring-forward gap when a wall time in
  the gap matches.

Windows surround every daylight-saving change of 2024-2026 in zones with
ordinary, half-hour and midnight transitions, plus Newfoundland's 2010 changes
at 00:01 (its fall-back crosses midnight) and Samoa's skipped day in 2011.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jobsched._errors import InvalidTrigger
from jobsched._triggers import CronTrigger

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
#: Zones with daylight saving: ordinary (Berlin, New York), half-hour (Lord
#: Howe), and changes at midnight that move the date back (Santiago, Havana).
DST_ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
)
SCAN_START = datetime(2024, 1, 1, tzinfo=UTC)
SCAN_END = datetime(2027, 1, 1, tzinfo=UTC)
#: Half-width of a window around a transition, at minute resolution.
WINDOW_HALF_WIDTH = timedelta(hours=8)

MONTH_ABBREVIATIONS = (
    *("jan", "feb", "mar", "apr", "may", "jun"),
    *("jul", "aug", "sep", "oct", "nov", "dec"),
)
MONTHS = {name: number for number, name in enumerate(MONTH_ABBREVIATIONS, start=1)}
WEEKDAYS = {
    name: number
    for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (low, high, names) per field, seconds first.
BOUNDS = (
    (0, 59, {}),
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, MONTHS),
    (0, 7, WEEKDAYS),
)
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def oracle_values(text: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    """Expand one field the plain way: a union of stepped ranges."""

    def number(token: str) -> int:
        return names[token.lower()] if token.lower() in names else int(token)

    values: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\*|\w+)(?:-(\w+))?(?:/(\d+))?", part)
        assert match, part
        first, last, step = match.groups()
        if first == "*":
            start, stop = low, high
        else:
            start = number(first)
            stop = number(last) if last else (high if step else start)
        values.update(range(start, stop + 1, int(step or 1)))
    return values


@dataclass(frozen=True)
class Oracle:
    """Decides, for one wall time at a time, whether a cron schedule fires."""

    fields: tuple[frozenset[int], ...]
    dom_star: bool
    dow_star: bool
    fixed: bool

    @classmethod
    def parse(cls, expression: str, *, seconds: bool = False) -> Oracle:
        expression = ALIASES.get(expression.lower(), expression)
        texts = expression.split()
        if len(texts) == 5:
            texts = ["0", *texts]
        expanded = [
            frozenset(oracle_values(text, *bounds))
            for text, bounds in zip(texts, BOUNDS, strict=True)
        ]
        expanded[5] = frozenset(day % 7 for day in expanded[5])
        return cls(
            fields=tuple(expanded),
            dom_star=texts[3][0] == "*",
            dow_star=texts[5][0] == "*",
            fixed=texts[1][0] != "*" and texts[2][0] != "*",
        )

    def day_matches(self, day: date) -> bool:
        dom = day.day in self.fields[3]
        dow = (day.weekday() + 1) % 7 in self.fields[5]
        return (dom and dow) if (self.dom_star or self.dow_star) else (dom or dow)

    def matches(self, wall: datetime) -> bool:
        second, minute, hour, _, month, _ = self.fields
        return (
            wall.second in second
            and wall.minute in minute
            and wall.hour in hour
            and wall.month in month
            and self.day_matches(wall.date())
        )

    def fires(self, moment: Moment) -> bool:
        if self.matches(moment.wall) and (not self.fixed or moment.fold == 0):
            return True
        return self.fixed and any(self.matches(wall) for wall in moment.skipped)

    def never_fires(self) -> bool:
        """Whether no month/day pair can ever satisfy an AND day rule."""
        _, _, _, days, months, _ = self.fields
        if self.dom_star or not self.dow_star:
            return False
        return all(day > DAYS_IN_MONTH[month - 1] for month in months for day in days)


@dataclass(frozen=True)
class Moment:
    """One UTC tick of a window, seen on the local wall clock."""

    utc: datetime
    wall: datetime
    fold: int
    #: Wall times skipped by a spring-forward change that ends at this tick.
    skipped: tuple[datetime, ...]


@dataclass(frozen=True)
class Window:
    zone: str
    start: datetime
    end: datetime
    step: timedelta = MINUTE

    def __str__(self) -> str:
        return f"{self.zone}@{self.start:%Y-%m-%dT%H:%M}"


@functools.cache
def moments(window: Window) -> tuple[Moment, ...]:
    """Every tick in ``(start, end]`` of a window, with its local wall time."""
    zone = ZoneInfo(window.zone)
    result = []
    tick = window.start + window.step
    while tick <= window.end:
        local = tick.astimezone(zone)
        previous = (tick - window.step).astimezone(zone)
        skipped: list[datetime] = []
        wall = local.replace(tzinfo=None)
        gap_start = (previous + window.step).replace(tzinfo=None)
        while gap_start < wall:  # the wall clock jumped forward
            skipped.append(gap_start)
            gap_start += window.step
        result.append(Moment(tick, wall, local.fold, tuple(skipped)))
        tick += window.step
    return tuple(result)


def utc_offset(moment: datetime, zone: ZoneInfo) -> timedelta | None:
    return moment.astimezone(zone).utcoffset()


@functools.cache
def transitions(
    zone_name: str, start: datetime = SCAN_START, end: datetime = SCAN_END
) -> tuple[datetime, ...]:
    """UTC instants (to the minute) at which a zone's offset changes."""
    zone = ZoneInfo(zone_name)
    found = []
    hour = start
    while hour < end:
        if utc_offset(hour, zone) != utc_offset(hour + HOUR, zone):
            low, high = hour, hour + HOUR
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                middle -= timedelta(
                    seconds=middle.second, microseconds=middle.microsecond
                )
                if utc_offset(middle, zone) == utc_offset(low, zone):
                    low = middle
                else:
                    high = middle
            found.append(high)
        hour += HOUR
    return tuple(found)


def dst_windows() -> list[Window]:
    windows = [
        Window(zone, change - WINDOW_HALF_WIDTH, change + WINDOW_HALF_WIDTH)
        for zone in DST_ZONES
        for change in transitions(zone)
    ]
    # Newfoundland changed at 00:01 until 2011, so its fall-back moved the wall
    # clock back across midnight, to 23:01 of the previous date.
    newfoundland = transitions(
        "America/St_Johns",
        datetime(2010, 1, 1, tzinfo=UTC),
        datetime(2011, 1, 1, tzinfo=UTC),
    )
    windows.extend(
        Window(
            "America/St_Johns", change - WINDOW_HALF_WIDTH, change + WINDOW_HALF_WIDTH
        )
        for change in newfoundland
    )
    # Samoa skipped 30 December 2011 altogether.
    windows.append(
        Window(
            "Pacific/Apia",
            datetime(2011, 12, 29, 12, tzinfo=UTC),
            datetime(2011, 12, 31, 12, tzinfo=UTC),
        )
    )
    return windows


#: Month ends and leap days where the zone has no daylight saving.
CALENDAR_WINDOWS = (
    Window(
        "UTC",
        datetime(2024, 2, 28, 12, tzinfo=UTC),
        datetime(2024, 3, 2, 12, tzinfo=UTC),
    ),
    Window(
        "Asia/Kolkata",
        datetime(2025, 2, 27, tzinfo=UTC),
        datetime(2025, 3, 2, tzinfo=UTC),
    ),
    Window("UTC", datetime(2025, 12, 30, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
)


def library_fires(trigger: CronTrigger, window: Window) -> list[datetime]:
    fires = []
    moment = trigger.next_after(window.start)
    while moment is not None and moment <= window.end:
        fires.append(moment)
        moment = trigger.next_after(moment)
    return fires


def oracle_fires(oracle: Oracle, window: Window) -> list[datetime]:
    return [moment.utc for moment in moments(window) if oracle.fires(moment)]


def check(expression: str, windows: Sequence[Window], *, seconds: bool = False) -> None:
    oracle = Oracle.parse(expression, seconds=seconds)
    for window in windows:
        trigger = CronTrigger(expression, window.zone, seconds=seconds)
        expected = oracle_fires(oracle, window)
        assert library_fires(trigger, window) == expected, f"{expression!r} in {window}"


TRICKY = (
    "* * * * *",
    "*/7 * * * *",
    "30 * * * *",
    "0 * * * *",
    "15,45 1,2 * * *",
    "30 2 * * *",
    "0 0 * * *",
    "30 0 * * *",
    "45 1 * * *",
    "59 23 * * *",
    "0-59/20 0-3 * * *",
    "0 */2 * * *",
    "10 0-2 * * sun,sat",
    "30 23 * * 6",
    "0 0 29 2 *",
    "@hourly",
    "@daily",
)


@pytest.mark.parametrize("expression", TRICKY)
def test_tricky_expressions_around_dst_changes(expression: str) -> None:
    """Fire times around every DST change in 2024-2026 match the oracle (B01, B02)."""
    check(expression, dst_windows())


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 * * *",
        "0 12 28-31 * *",
        "0 0 */2 * 1",
        "0 0 1,15 * mon",
        "30 6 29 feb *",
        "0 0 * 3 *",
        "0 0 31 * *",
        "0 18 * * 7",
        "*/30 23 31 12 *",
    ],
)
def test_calendar_edges_match_oracle(expression: str) -> None:
    """Month ends, leap days and the Vixie day-of-month/day-of-week rule."""
    check(expression, CALENDAR_WINDOWS)


def test_dst_windows_cover_the_interesting_zones() -> None:
    """The scan really finds the changes, so the windows are not vacuous."""
    assert len(transitions("Europe/Berlin")) == 6
    assert len(transitions("Australia/Lord_Howe")) == 6
    assert len(transitions("America/Santiago")) == 6
    assert len(transitions("Asia/Kolkata")) == 0
    halves = {
        utc_offset(change, ZoneInfo("Australia/Lord_Howe"))
        for change in transitions("Australia/Lord_Howe")
    }
    assert halves == {timedelta(hours=10, minutes=30), timedelta(hours=11)}


SECOND_WINDOWS = tuple(
    Window(zone, change - HOUR, change + HOUR, SECOND)
    for zone in ("Europe/Berlin", "Australia/Lord_Howe")
    for change in transitions(zone)[:2]
)


@pytest.mark.parametrize(
    "expression",
    [
        "*/20 30 2 * * *",
        "0 * * * * *",
        "15 */30 * * * *",
        "59 59 1 * * *",
        "0 0 2 * * *",
    ],
)
def test_seconds_field_around_dst_changes(expression: str) -> None:
    """Six-field schedules obey the same DST rules at one-second resolution."""
    check(expression, SECOND_WINDOWS, seconds=True)


# --- generated expressions ---------------------------------------------------


def item(low: int, high: int, favourites: Sequence[int]) -> st.SearchStrategy[str]:
    value = st.one_of(st.sampled_from(favourites), st.integers(low, high))
    step = st.integers(1, high - low + 1)
    return st.one_of(
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        value.map(str),
        st.builds(lambda a, b: f"{min(a, b)}-{max(a, b)}", value, value),
        st.builds(lambda a, b, s: f"{min(a, b)}-{max(a, b)}/{s}", value, value, step),
        st.builds(lambda a, s: f"{a}/{s}", value, step),
    )


def field(
    low: int, high: int, favourites: Sequence[int], star: float
) -> st.SearchStrategy[str]:
    listed = st.lists(item(low, high, favourites), min_size=1, max_size=3).map(",".join)
    return st.one_of(st.just("*"), listed) if star else listed


expressions = st.builds(
    lambda *parts: " ".join(parts),
    field(0, 59, (0, 15, 30, 45, 59), star=0),
    field(0, 23, (0, 1, 2, 3, 23), star=0),
    st.one_of(st.just("*"), st.just("*"), field(1, 31, (1, 5, 28, 29, 30, 31), star=1)),
    st.one_of(st.just("*"), st.just("*"), field(1, 12, (1, 3, 4, 9, 10, 11), star=1)),
    st.one_of(st.just("*"), st.just("*"), field(0, 7, (0, 5, 6, 7), star=1)),
)


@functools.cache
def all_windows() -> tuple[Window, ...]:
    return (*dst_windows(), *CALENDAR_WINDOWS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=expressions, data=st.data())
def test_generated_expressions_match_oracle(
    expression: str, data: st.DataObject
) -> None:
    """Random expressions in random DST windows agree with the oracle."""
    oracle = Oracle.parse(expression)
    window = data.draw(st.sampled_from(all_windows()), label="window")
    try:
        trigger = CronTrigger(expression, window.zone)
    except InvalidTrigger as error:
        assert "never matches" in str(error)
        assert oracle.never_fires()
        return
    assert not oracle.never_fires()
    expected = oracle_fires(oracle, window)
    assert library_fires(trigger, window) == expected
    # From any instant, not only from fire times, and from local datetimes
    # whose fold matters.
    ticks = moments(window)
    index = data.draw(st.integers(0, len(ticks) - 1), label="index")
    micro = data.draw(st.integers(0, 59_999_999), label="microseconds")
    after = ticks[index].utc - MINUTE + timedelta(microseconds=micro)
    assume(after > window.start)
    later = [fire for fire in expected if fire > after]
    got = trigger.next_after(after.astimezone(ZoneInfo(window.zone)))
    if later:
        assert got == later[0]
    else:
        assert got is None or got > window.end


@settings(max_examples=60, deadline=None)
@given(
    dom=field(1, 31, (1, 15, 28, 29, 30, 31), star=1),
    month=field(1, 12, (1, 2, 4, 12), star=1),
    dow=field(0, 7, (0, 1, 6, 7), star=1),
)
def test_day_rules_over_years_match_oracle(dom: str, month: str, dow: str) -> None:
    """Day-of-month, month and weekday combinations over 2023-2025, day by day."""
    expression = f"0 0 {dom} {month} {dow}"
    oracle = Oracle.parse(expression)
    try:
        trigger = CronTrigger(expression)
    except InvalidTrigger as error:
        assert "never matches" in str(error)
        assert oracle.never_fires()
        return
    assert not oracle.never_fires()
    first, last = date(2023, 7, 1), date(2025, 7, 1)
    expected = [
        datetime(day.year, day.month, day.day, tzinfo=UTC)
        for day in (first + timedelta(days=n) for n in range((last - first).days))
        if day.month in oracle.fields[4] and oracle.day_matches(day)
    ]
    got = []
    moment = trigger.next_after(datetime(2023, 6, 30, 23, 59, tzinfo=UTC))
    while moment is not None and moment < datetime(2025, 7, 1, tzinfo=UTC):
        got.append(moment)
        moment = trigger.next_after(moment)
    assert got == expected
