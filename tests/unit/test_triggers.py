"""Unit tests for jobsched._triggers: validation, semantics, specs, jitter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsched._errors import InvalidTrigger, JobschedError
from jobsched._triggers import (
    CronTrigger,
    IntervalTrigger,
    OnceTrigger,
    Trigger,
    preview,
    trigger_from_spec,
    validate_timezone,
)

UTC = timezone.utc
START = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday


def utc(text: str) -> datetime:
    """Parse ISO 8601 ("Z" allowed, no offset meaning UTC); return it in UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def same_schedule(first: str, second: str, count: int = 40, **kwargs: Any) -> bool:
    """Whether two expressions give the same next ``count`` fire times."""
    return preview(CronTrigger(first, **kwargs), START, count) == preview(
        CronTrigger(second, **kwargs), START, count
    )


# --- cron validation -------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        # reversed ranges
        ("5-1 * * * *", r"minute field '5-1': range '5-1' runs backwards \(5 > 1\)"),
        ("0 5-1 * * *", r"hour field '5-1'.*runs backwards"),
        ("0 0 10-2 * *", r"day-of-month field '10-2'.*runs backwards"),
        ("0 0 * dec-jan *", r"month field 'dec-jan'.*runs backwards \(12 > 1\)"),
        ("0 0 * * 6-1", r"day-of-week field '6-1'.*runs backwards"),
        ("0 0 * * fri-sun", r"runs backwards.*7 also means Sunday, e.g. 'fri-7'"),
        # steps
        ("*/0 * * * *", r"minute field '\*/0': a step of zero never advances"),
        ("0-30/0 * * * *", r"step of zero"),
        ("0 */0 * * *", r"hour field '\*/0'.*step of zero"),
        ("*/61 * * * *", r"step 61 is larger than the field \(60 values\)"),
        ("0 */25 * * *", r"step 25 is larger than the field \(24 values\)"),
        ("*/x * * * *", r"step 'x' is not a positive whole number"),
        ("*/ * * * *", r"step '' is not a positive whole number"),
        ("*/-1 * * * *", r"step '-1' is not a positive whole number"),
        ("*/99999999999 * * * *", r"larger than the field"),
        # out of range
        ("60 * * * *", r"minute field '60': value 60 is out of range \(0-59\)"),
        ("1-60 * * * *", r"value 60 is out of range \(0-59\)"),
        ("0 24 * * *", r"hour field '24'.*out of range \(0-23\)"),
        ("0 0 0 * *", r"day-of-month field '0'.*out of range \(1-31\)"),
        ("0 0 32 * *", r"day-of-month field '32'.*out of range \(1-31\)"),
        ("0 0 * 0 *", r"month field '0'.*out of range \(1-12\)"),
        ("0 0 * 13 *", r"month field '13'.*out of range \(1-12\)"),
        ("0 0 * * 8", r"day-of-week field '8'.*out of range \(0-7\)"),
        ("0 0 * * 99999999999999", r"out of range \(0-7\)"),
        ("-1 * * * *", r"a range needs a number on each side"),
        ("5- * * * *", r"a range needs a number on each side"),
        ("1-2-3 * * * *", r"'2-3' is not a number"),
        ("\u0663 * * * *", r"is not a number"),
        # empty items
        ("0 0 1,,2 * *", r"day-of-month field '1,,2': empty item in the list"),
        ("0 0 1, * *", r"empty item"),
        (",5 * * * *", r"minute field ',5': empty item"),
        # names
        ("0 0 * * monday", r"'monday' is not a number or a three-letter name"),
        ("0 0 * foo *", r"month field 'foo': 'foo' is not a number or a three"),
        ("0 0 jan * *", r"day-of-month field 'jan': 'jan' is not a number"),
        ("mon * * * *", r"minute field 'mon'"),
        ("0 0 * * */mon", r"step 'mon' is not a positive whole number"),
        # the field count
        ("", r"it is empty"),
        ("   ", r"it is empty"),
        ("* * * *", r"expected 5 fields \(minute hour day-of-month month day-of-week"),
        ("* * * * * *", r"got 6; to use a seconds field pass seconds=True"),
        ("* * * * * * *", r"got 7; to use a seconds field pass seconds=True"),
        # aliases
        ("@reboot", r"@reboot is not supported"),
        ("@every 5m", r"unknown alias; use one of @annually, @daily"),
        ("@fortnightly", r"unknown alias"),
        ("@daily 5", r"unknown alias"),
    ],
)
def test_malformed_expressions_are_rejected(expression: str, message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message) as caught:
        CronTrigger(expression)
    assert f"invalid cron expression {expression!r}" in str(caught.value)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 LW * *",
        "0 0 * * 5L",
        "0 0 * * L",
        "0 0 * * 1#2",
        "0 0 * * mon#1",
        "0 0 ? * *",
        "0 0 * * ?",
        "H * * * *",
        "H/5 * * * *",
        "H(0-29) * * * *",
        "R * * * *",
    ],
)
def test_quartz_and_jenkins_extensions_are_rejected(expression: str) -> None:
    with pytest.raises(InvalidTrigger, match=r"L, W, #, \? and H .* are not supported"):
        CronTrigger(expression)


def test_wrong_field_count_with_seconds() -> None:
    with pytest.raises(
        InvalidTrigger, match=r"expected 6 fields \(second minute .*got 5"
    ):
        CronTrigger("0 12 * * *", seconds=True)
    with pytest.raises(InvalidTrigger, match=r"got 7; a year field is not supported"):
        CronTrigger("0 0 12 * * * 2025", seconds=True)


def test_seconds_field_is_validated_as_seconds() -> None:
    with pytest.raises(InvalidTrigger, match=r"second field '60'.*out of range"):
        CronTrigger("60 * * * * *", seconds=True)
    with pytest.raises(InvalidTrigger, match=r"second field '5-1'.*backwards"):
        CronTrigger("5-1 * * * * *", seconds=True)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 31 2 *",
        "0 0 30 2 *",
        "0 0 30,31 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 31 2,4 *",
        "0 0 31 feb *",
        "0 0 30-31 2 */2",  # a day-of-week starting with * still needs both
        "0 0 31 2 *",
    ],
)
def test_dates_that_never_occur_are_rejected(expression: str) -> None:
    with pytest.raises(InvalidTrigger, match=r"it never matches, because day-of-month"):
        CronTrigger(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "0 9 29 2 *",
        "0 0 31 1-2 *",
        "0 0 31 2 mon",  # both restricted: every Monday in February
        "0 0 */31 2 *",  # day-of-month starting with *: the 1st
        "0 0 29-31 2 *",
    ],
)
def test_dates_that_can_occur_are_accepted(expression: str) -> None:
    assert CronTrigger(expression).next_after(START) is not None


def test_february_31_or_monday_fires_on_mondays_in_february() -> None:
    fires = preview(CronTrigger("0 0 31 2 mon"), START, 5)
    assert all(fire.month == 2 and fire.weekday() == 0 for fire in fires)


def test_rejection_is_an_invalid_trigger_and_a_value_error() -> None:
    with pytest.raises(ValueError, match="never matches") as caught:
        CronTrigger("0 0 31 2 *")
    error = caught.value
    assert isinstance(error, InvalidTrigger)
    assert isinstance(error, JobschedError)
    named = error.for_job("report")
    assert str(named).startswith("job 'report': invalid cron expression '0 0 31 2 *'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expression": 5}, "the cron expression must be a string, got int"),
        ({"expression": None}, "must be a string, got NoneType"),
        (
            {"expression": "* * * * *", "seconds": "yes"},
            "seconds must be True or False",
        ),
        ({"expression": "* * * * *", "seconds": 1}, "seconds must be True or False"),
        (
            {"expression": "* * * * *", "timezone": None},
            "must be a string, got NoneType",
        ),
    ],
)
def test_wrong_types_are_invalid_triggers(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message):
        CronTrigger(**kwargs)


# --- time zones --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Europe/Berlinn",
        "PST",
        "CEST",
        "+05:30",
        "UTC+1",
        "utc",
        "europe/berlin",
        " Europe/Berlin",
        "Europe/Berlin ",
        "localtime",
        "posixrules",
        "Factory",
        "right/Europe/Berlin",
        "posix/Europe/Berlin",
        "/etc/localtime",
        "Europe/../Europe/Berlin",
        "Mars/Phobos",
        "zone.tab",
    ],
)
def test_unknown_time_zones_are_rejected(name: str) -> None:
    with pytest.raises(InvalidTrigger, match=re.escape(f"unknown time zone {name!r}")):
        validate_timezone(name)
    with pytest.raises(InvalidTrigger, match="unknown time zone"):
        CronTrigger("* * * * *", name)


def test_empty_and_non_string_time_zones_are_rejected() -> None:
    with pytest.raises(InvalidTrigger, match="the time zone name is empty"):
        validate_timezone("")
    with pytest.raises(InvalidTrigger, match="the time zone must be a string, got int"):
        validate_timezone(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "UTC",
        "Etc/UTC",
        "Europe/Berlin",
        "Etc/GMT+5",
        "Asia/Kolkata",
        "US/Eastern",
        "PST8PDT",
    ],
)
def test_iana_names_are_accepted(name: str) -> None:
    zone = validate_timezone(name)
    assert isinstance(zone, ZoneInfo)
    assert zone.key == name
    assert CronTrigger("0 12 * * *", name).timezone == name


def test_etc_gmt_signs_are_posix_style() -> None:
    """Etc/GMT+5 is five hours *behind* UTC."""
    assert CronTrigger("0 12 * * *", "Etc/GMT+5").next_after(START) == utc(
        "2025-01-01T17:00Z"
    )
    assert CronTrigger("0 12 * * *", "Etc/GMT-5").next_after(START) == utc(
        "2025-01-01T07:00Z"
    )


# --- cron semantics --------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "expansion"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("  @hourly ", "0 * * * *"),
    ],
)
def test_aliases(alias: str, expansion: str) -> None:
    assert same_schedule(alias, expansion, count=5)
    assert CronTrigger(alias).fixed_time == CronTrigger(expansion).fixed_time


def test_aliases_work_with_the_seconds_option() -> None:
    trigger = CronTrigger("@hourly", seconds=True)
    assert preview(trigger, START, 2) == [
        utc("2025-01-01T01:00Z"),
        utc("2025-01-01T02:00Z"),
    ]


def test_hourly_alias_is_wildcard_and_daily_is_fixed() -> None:
    assert not CronTrigger("@hourly").fixed_time
    assert CronTrigger("@daily").fixed_time


@pytest.mark.parametrize(
    ("named", "numbered"),
    [
        ("0 0 * jan-mar mon-fri", "0 0 * 1-3 1-5"),
        ("0 0 * JAN,Jul * ", "0 0 * 1,7 *"),
        ("0 0 * * MON", "0 0 * * 1"),
        ("0 0 * * sat,sun", "0 0 * * 6,0"),
        ("0 0 * * sun", "0 0 * * 0"),
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * 5-7", "0 0 * * 5,6,0"),
        ("0 0 * * fri-7", "0 0 * * 0,5,6"),
        ("0 0 * * 0-7", "0 0 * * *"),
        ("0 0 * * */2", "0 0 * * 0,2,4,6"),
        ("0 0 * feb/3 *", "0 0 * 2,5,8,11 *"),
        ("0/15 * * * *", "*/15 * * * *"),
        ("10/15 * * * *", "10,25,40,55 * * * *"),
        ("59/15 * * * *", "59 * * * *"),
        ("5-5 * * * *", "5 * * * *"),
        ("0 0 * * 1-1", "0 0 * * 1"),
        ("00 05 * * *", "0 5 * * *"),
        ("0 0 * * *", "0\t0  *\t* *"),
    ],
)
def test_equivalent_spellings(named: str, numbered: str) -> None:
    assert same_schedule(named, numbered)


def test_zero_and_seven_are_both_sunday() -> None:
    for expression in ("0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN"):
        fires = preview(CronTrigger(expression), START, 3)
        assert [fire.day for fire in fires] == [5, 12, 19]


def test_vixie_or_when_both_day_fields_restricted() -> None:
    """The 13th of the month or any Friday."""
    fires = preview(CronTrigger("0 0 13 * 5"), START, 6)
    assert [fire.day for fire in fires] == [3, 10, 13, 17, 24, 31]


def test_vixie_and_when_day_of_month_starts_with_star() -> None:
    """*/2 in day-of-month starts with *, so odd days that are also Mondays."""
    fires = preview(CronTrigger("0 0 */2 * 1"), START, 4)
    assert fires == [
        utc(day) for day in ("2025-01-13", "2025-01-27", "2025-02-03", "2025-02-17")
    ]


def test_vixie_and_when_day_of_week_starts_with_star() -> None:
    """1-7 with */7 (0 and 7, Sunday) is the classic 'first Sunday of the month'."""
    fires = preview(CronTrigger("0 0 1-7 * */7"), START, 3)
    assert fires == [utc("2025-01-05"), utc("2025-02-02"), utc("2025-03-02")]


def test_day_of_week_alone_or_day_of_month_alone() -> None:
    mondays = preview(CronTrigger("0 0 * * 1"), START, 3)
    assert [fire.day for fire in mondays] == [6, 13, 20]
    firsts = preview(CronTrigger("0 0 1 * *"), START, 3)
    assert [(fire.month, fire.day) for fire in firsts] == [(2, 1), (3, 1), (4, 1)]


@pytest.mark.parametrize(
    ("expression", "seconds", "fixed"),
    [
        ("30 2 * * *", False, True),
        ("0-59 2 * * *", False, True),
        ("0,30 1,2 * * *", False, True),
        ("*/5 2 * * *", False, False),
        ("30 * * * *", False, False),
        ("30 */2 * * *", False, False),
        ("* * * * *", False, False),
        ("*/10 30 2 * * *", True, True),
        ("0 * 2 * * *", True, False),
    ],
)
def test_fixed_time(expression: str, seconds: bool, fixed: bool) -> None:
    assert CronTrigger(expression, seconds=seconds).fixed_time is fixed


def test_seconds_field_comes_first() -> None:
    trigger = CronTrigger("15 30 12 * * *", seconds=True)
    assert preview(trigger, START, 2) == [
        utc("2025-01-01T12:30:15Z"),
        utc("2025-01-02T12:30:15Z"),
    ]


def test_next_after_is_strictly_after() -> None:
    trigger = CronTrigger("*/5 * * * *")
    assert trigger.next_after(utc("2025-01-01T00:05Z")) == utc("2025-01-01T00:10Z")
    just_before = utc("2025-01-01T00:04:59.999999Z")
    assert trigger.next_after(just_before) == utc("2025-01-01T00:05Z")


def test_next_after_accepts_any_zone_and_returns_utc() -> None:
    trigger = CronTrigger("0 9 * * *", "Asia/Kolkata")
    after = datetime(2025, 1, 1, 12, tzinfo=ZoneInfo("America/New_York"))
    fire = trigger.next_after(after)
    assert fire == utc("2025-01-02T03:30Z")
    assert fire is not None and fire.tzinfo is UTC


@pytest.mark.parametrize("after", [datetime(2025, 1, 1), "2025-01-01", None])  # noqa: DTZ001
def test_next_after_needs_an_aware_datetime(after: Any) -> None:
    with pytest.raises(InvalidTrigger, match="after"):
        CronTrigger("* * * * *").next_after(after)


def test_no_fire_time_near_the_end_of_the_calendar() -> None:
    trigger = CronTrigger("0 0 1 1 *")
    assert trigger.next_after(datetime(9998, 6, 1, tzinfo=UTC)) is None
    assert trigger.next_after(datetime.max.replace(tzinfo=UTC)) is None
    assert trigger.next_after(datetime.min.replace(tzinfo=UTC)) == utc(
        "0001-01-01T00:00Z"
    ) + (timedelta(days=365))


def test_next_after_is_fast_for_rare_schedules() -> None:
    """Leap days that must also be weekends: decades apart, still found at once."""
    trigger = CronTrigger("0 0 29 2 */6")
    fires = preview(trigger, START, 3)
    assert fires == [utc("2032-02-29"), utc("2048-02-29"), utc("2060-02-29")]


def test_cron_spec_and_equality() -> None:
    trigger = CronTrigger("*/5 * * * *", "Europe/Berlin", seconds=False)
    assert trigger.to_spec() == {
        "kind": "cron",
        "expression": "*/5 * * * *",
        "timezone": "Europe/Berlin",
        "seconds": False,
    }
    assert trigger == CronTrigger("*/5 * * * *", "Europe/Berlin")
    assert hash(trigger) == hash(CronTrigger("*/5 * * * *", "Europe/Berlin"))
    assert trigger != CronTrigger("*/5 * * * *")
    assert "Europe/Berlin" in repr(trigger)
    assert CronTrigger.kind == "cron"


# --- intervals ------------------------------------------------------------------


def test_interval_anchored_to_start() -> None:
    start = utc("2025-01-01T00:00Z")
    trigger = IntervalTrigger(every=timedelta(minutes=10), start=start)
    assert trigger.next_after(start - timedelta(days=3)) == start
    assert trigger.next_after(start) == start + timedelta(minutes=10)
    assert trigger.next_after(start + timedelta(minutes=25)) == start + timedelta(
        minutes=30
    )
    assert trigger.next_after(start + timedelta(minutes=30)) == start + timedelta(
        minutes=40
    )


def test_interval_far_in_the_future_is_arithmetic() -> None:
    start = utc("2000-01-01T00:00Z")
    trigger = IntervalTrigger(every=timedelta(microseconds=7), start=start)
    after = utc("2999-12-31T23:59:59.999999Z")
    fire = trigger.next_after(after)
    assert fire is not None
    assert after < fire <= after + timedelta(microseconds=7)
    assert (fire - start) % timedelta(microseconds=7) == timedelta(0)


def test_interval_without_start_counts_from_after() -> None:
    trigger = IntervalTrigger.of(minutes=5)
    assert trigger.start is None
    after = datetime(2025, 1, 1, 12, 0, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert trigger.next_after(after) == utc("2025-01-01T11:05:01Z")


def test_interval_end_is_inclusive() -> None:
    start = utc("2025-01-01T00:00Z")
    trigger = IntervalTrigger.of(hours=1, start=start, end=start + timedelta(hours=2))
    assert preview(trigger, start - timedelta(seconds=1), 10) == [
        start,
        start + timedelta(hours=1),
        start + timedelta(hours=2),
    ]
    assert trigger.next_after(start + timedelta(hours=2)) is None
    endless = IntervalTrigger.of(hours=1, end=start)
    assert endless.next_after(start - timedelta(minutes=30)) is None


def test_interval_overflow_means_no_more_fire_times() -> None:
    trigger = IntervalTrigger.of(days=365, start=utc("9999-01-01T00:00Z"))
    assert trigger.next_after(utc("9999-06-01T00:00Z")) is None


def test_interval_normalises_datetimes_to_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    trigger = IntervalTrigger.of(
        hours=1,
        start=datetime(2025, 6, 1, 12, tzinfo=berlin),
        end=datetime(2025, 6, 2, 12, tzinfo=berlin),
    )
    assert trigger.start == utc("2025-06-01T10:00Z")
    assert trigger.start is not None and trigger.start.tzinfo is UTC
    assert trigger.end is not None and trigger.end.tzinfo is UTC


def test_interval_of_builds_timedeltas() -> None:
    trigger = IntervalTrigger.of(
        weeks=1, days=1, hours=1, minutes=1, seconds=1.5, jitter=2.5
    )
    assert trigger.every == timedelta(weeks=1, days=1, hours=1, minutes=1, seconds=1.5)
    assert trigger.jitter == timedelta(seconds=2.5)
    assert IntervalTrigger.of(
        seconds=10, jitter=timedelta(seconds=3)
    ).jitter == timedelta(seconds=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": timedelta(0)}, "the interval must be a positive timedelta"),
        ({"every": timedelta(seconds=-1)}, "must be a positive timedelta"),
        ({"every": 60}, "must be a positive timedelta, got 60"),
        (
            {"every": timedelta(1), "jitter": timedelta(1)},
            "jitter must be .* less than",
        ),
        (
            {"every": timedelta(1), "jitter": timedelta(-1)},
            "jitter must be .* at least 0",
        ),
        ({"every": timedelta(1), "jitter": 5}, "jitter must be a timedelta"),
        (
            {"every": timedelta(1), "start": datetime(2025, 1, 1)},  # noqa: DTZ001
            "the interval start needs an aware datetime",
        ),
        (
            {"every": timedelta(1), "end": datetime(2025, 1, 1)},  # noqa: DTZ001
            "the interval end needs an aware datetime",
        ),
        ({"every": timedelta(1), "start": "2025-01-01"}, "must be a datetime, got str"),
        (
            {
                "every": timedelta(1),
                "start": datetime(2025, 1, 2, tzinfo=UTC),
                "end": datetime(2025, 1, 1, tzinfo=UTC),
            },
            "ends .* before it starts",
        ),
    ],
)
def test_interval_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message):
        IntervalTrigger(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "positive timedelta"),
        ({"seconds": -5}, "positive timedelta"),
        ({"seconds": "5"}, "invalid interval"),
        ({"days": 10**10}, "invalid interval"),
        ({"seconds": 10, "jitter": "1"}, "invalid interval"),
        ({"seconds": 10, "jitter": True}, "invalid interval"),
        ({"seconds": 10, "jitter": float("nan")}, "invalid interval"),
        ({"seconds": 10, "jitter": 10}, "jitter must be"),
    ],
)
def test_interval_of_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message):
        IntervalTrigger.of(**kwargs)


def test_with_start_anchors_and_revalidates() -> None:
    trigger = IntervalTrigger.of(minutes=15, jitter=5)
    anchored = trigger.with_start(
        datetime(2025, 1, 1, 1, tzinfo=ZoneInfo("Asia/Kolkata"))
    )
    assert anchored.start == utc("2024-12-31T19:30Z")
    assert anchored.every == trigger.every
    assert anchored.jitter == trigger.jitter
    assert trigger.start is None  # unchanged
    with pytest.raises(InvalidTrigger, match="aware"):
        trigger.with_start(datetime(2025, 1, 1))  # noqa: DTZ001


# --- jitter -----------------------------------------------------------------------


def test_jitter_is_zero_without_jitter() -> None:
    assert IntervalTrigger.of(minutes=1).jitter_for("job", START) == timedelta(0)


@settings(max_examples=200)
@given(
    key=st.text(),
    fire=st.datetimes(
        min_value=datetime(1900, 1, 1),  # noqa: DTZ001
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    jitter=st.timedeltas(
        min_value=timedelta(microseconds=1), max_value=timedelta(days=1)
    ),
)
def test_jitter_in_range_and_deterministic(
    key: str, fire: datetime, jitter: timedelta
) -> None:
    trigger = IntervalTrigger(every=jitter * 2, jitter=jitter)
    delay = trigger.jitter_for(key, fire)
    assert timedelta(0) <= delay < jitter
    assert trigger.jitter_for(key, fire) == delay
    # The same instant written in another zone gives the same delay.
    assert trigger.jitter_for(key, fire.astimezone(ZoneInfo("Asia/Tokyo"))) == delay


def test_jitter_spreads_keys() -> None:
    trigger = IntervalTrigger.of(minutes=10, jitter=60)
    delays = {trigger.jitter_for(f"job-{n}", START) for n in range(50)}
    assert len(delays) > 40
    assert max(delays) - min(delays) > timedelta(seconds=30)


#: Makes ``jobsched`` an empty package in a child interpreter, so that importing
#: ``jobsched._triggers`` loads only what that module itself needs.
ISOLATED_PACKAGE = (
    "import importlib.util, sys, types\n"
    "spec = importlib.util.find_spec('jobsched')\n"
    "package = types.ModuleType('jobsched')\n"
    "package.__path__ = list(spec.submodule_search_locations)\n"
    "sys.modules['jobsched'] = package\n"
)


def run_isolated(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter without jobsched/__init__.py."""
    done = subprocess.run(
        [sys.executable, "-c", ISOLATED_PACKAGE + code],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_jitter_same_in_every_process() -> None:
    """The delay does not depend on hash randomisation, so processes agree."""
    code = (
        "from datetime import datetime, timezone\n"
        "from jobsched._triggers import IntervalTrigger\n"
        "t = IntervalTrigger.of(minutes=10, jitter=60)\n"
        "d = t.jitter_for('job', datetime(2025, 1, 1, tzinfo=timezone.utc))\n"
        "sys.stdout.write(str(d // d.resolution))\n"
    )
    results = {int(run_isolated(code, PYTHONHASHSEED=seed)) for seed in ("1", "2")}
    here = IntervalTrigger.of(minutes=10, jitter=60).jitter_for("job", START)
    assert results == {here // timedelta.resolution}


def test_jitter_needs_aware_fire_time() -> None:
    with pytest.raises(InvalidTrigger, match="fire needs an aware datetime"):
        IntervalTrigger.of(minutes=1, jitter=1).jitter_for("a", datetime(2025, 1, 1))  # noqa: DTZ001


# --- one-off -------------------------------------------------------------------


def test_once_fires_once() -> None:
    at = utc("2025-06-01T10:00Z")
    trigger = OnceTrigger(at)
    assert trigger.next_after(at - timedelta(microseconds=1)) == at
    assert trigger.next_after(at) is None
    assert trigger.next_after(at + timedelta(days=1)) is None
    assert preview(trigger, START, 5) == [at]


def test_once_normalises_to_utc_and_honours_fold() -> None:
    new_york = ZoneInfo("America/New_York")
    second = OnceTrigger(datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=new_york))
    assert second.at == utc("2026-11-01T06:30Z")
    assert second.at.tzinfo is UTC


@pytest.mark.parametrize("at", [datetime(2025, 1, 1), "2025-01-01T00:00Z", 0])  # noqa: DTZ001
def test_once_rejects_naive_and_non_datetimes(at: Any) -> None:
    with pytest.raises(InvalidTrigger, match="a one-off job's time"):
        OnceTrigger(at)


# --- specs -----------------------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Etc/GMT+5")
aware = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, *(ZoneInfo(zone) for zone in ZONES)]),
)
cron_field = st.sampled_from(["*", "*/5", "0", "1-5", "1,2,3", "0-20/4", "7/9"])
cron_triggers = st.builds(
    lambda minute, hour, dow, zone, seconds: CronTrigger(
        " ".join([*(["*/20"] if seconds else []), minute, hour, "*", "*", dow]),
        zone,
        seconds=seconds,
    ),
    cron_field,
    cron_field,
    st.sampled_from(["*", "mon-fri", "0,6", "7"]),
    st.sampled_from(ZONES),
    st.booleans(),
)


@st.composite
def interval_triggers(draw: st.DrawFn) -> IntervalTrigger:
    every = draw(
        st.timedeltas(
            min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)
        )
    )
    jitter = draw(
        st.timedeltas(min_value=timedelta(0), max_value=every - timedelta.resolution)
    )
    start = draw(st.none() | aware)
    end = draw(st.none() | aware)
    if start is not None and end is not None and end < start:
        start, end = end, start
    return IntervalTrigger(every=every, start=start, end=end, jitter=jitter)


triggers = st.one_of(cron_triggers, interval_triggers(), st.builds(OnceTrigger, aware))


@settings(max_examples=300)
@given(trigger=triggers)
def test_spec_round_trip(trigger: Trigger) -> None:
    spec = trigger.to_spec()
    assert spec["kind"] == trigger.kind
    stored = json.loads(json.dumps(spec))
    assert stored == spec
    assert trigger_from_spec(stored) == trigger


def test_interval_spec_format() -> None:
    trigger = IntervalTrigger.of(
        hours=2,
        start=datetime(2025, 3, 29, 23, 30, tzinfo=UTC),
        jitter=1.5,
    )
    assert trigger.to_spec() == {
        "kind": "interval",
        "every": 7200,
        "start": "2025-03-29T23:30:00+00:00",
        "end": None,
        "jitter": 1.5,
    }
    huge = IntervalTrigger(every=timedelta(days=999_999_999))
    assert trigger_from_spec(json.loads(json.dumps(huge.to_spec()))) == huge


def test_once_spec_format() -> None:
    trigger = OnceTrigger(datetime(2025, 6, 1, 12, tzinfo=ZoneInfo("Europe/Berlin")))
    assert trigger.to_spec() == {"kind": "once", "at": "2025-06-01T10:00:00+00:00"}


def test_spec_optional_keys_have_defaults() -> None:
    assert trigger_from_spec(
        {"kind": "cron", "expression": "0 0 * * *"}
    ) == CronTrigger("0 0 * * *")
    assert trigger_from_spec({"kind": "interval", "every": 60}) == IntervalTrigger.of(
        minutes=1
    )
    assert trigger_from_spec(
        {"kind": "once", "at": "2025-01-01T00:00:00+00:00"}
    ) == OnceTrigger(START)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "a trigger spec must be a mapping"),
        ([("kind", "cron")], "must be a mapping"),
        ("cron", "must be a mapping"),
        ({}, "unknown trigger kind None"),
        ({"kind": "crontab"}, "unknown trigger kind 'crontab'; expected one of cron"),
        ({"kind": 1}, "unknown trigger kind 1"),
        ({"kind": ["cron"]}, "unknown trigger kind"),
        ({"kind": "cron"}, r"missing keys \['expression'\]"),
        (
            {"kind": "cron", "expression": "* * * * *", "tz": "UTC"},
            r"unknown keys \['tz'\]",
        ),
        ({"kind": "cron", "expression": "* * * * *", 5: 1}, r"unknown keys \['5'\]"),
        ({"kind": "cron", "expression": 5}, "must be a string"),
        ({"kind": "cron", "expression": "* * * *"}, "expected 5 fields"),
        (
            {"kind": "cron", "expression": "* * * * *", "timezone": None},
            "must be a string",
        ),
        (
            {"kind": "cron", "expression": "* * * * *", "timezone": "Nowhere"},
            "unknown time zone",
        ),
        (
            {"kind": "cron", "expression": "* * * * *", "seconds": "no"},
            "seconds must be",
        ),
        ({"kind": "interval"}, r"missing keys \['every'\]"),
        ({"kind": "interval", "every": "60"}, "expected a number of seconds"),
        ({"kind": "interval", "every": True}, "expected a number of seconds"),
        ({"kind": "interval", "every": None}, "expected a number of seconds"),
        ({"kind": "interval", "every": 0}, "positive timedelta"),
        ({"kind": "interval", "every": -1.5}, "positive timedelta"),
        ({"kind": "interval", "every": float("nan")}, "finite number"),
        ({"kind": "interval", "every": float("inf")}, "finite number"),
        ({"kind": "interval", "every": 1e300}, "malformed interval trigger spec"),
        ({"kind": "interval", "every": 60, "jitter": 60}, "jitter must be"),
        ({"kind": "interval", "every": 60, "jitter": "1"}, "expected a number"),
        ({"kind": "interval", "every": 60, "start": "yesterday"}, "Invalid isoformat"),
        (
            {"kind": "interval", "every": 60, "start": 1735689600},
            "expected an ISO 8601",
        ),
        (
            {"kind": "interval", "every": 60, "start": "2025-01-01T00:00"},
            "needs an aware",
        ),
        (
            {
                "kind": "interval",
                "every": 60,
                "start": "2025-01-02T00:00+00:00",
                "end": "2025-01-01T00:00+00:00",
            },
            "before it starts",
        ),
        ({"kind": "once"}, r"missing keys \['at'\]"),
        ({"kind": "once", "at": None}, "expected an ISO 8601 string"),
        ({"kind": "once", "at": "2025-01-01"}, "needs an aware datetime"),
        (
            {"kind": "once", "at": "2025-13-01T00:00+00:00"},
            "malformed once trigger spec",
        ),
        (
            {"kind": "once", "at": "2025-01-01T00:00Z", "every": 1},
            r"unknown keys \['every'\]",
        ),
    ],
)
def test_malformed_specs_are_invalid_triggers(spec: Any, message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message):
        trigger_from_spec(spec)


json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
)
json_values = json_scalars | st.lists(json_scalars, max_size=2)


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["cron", "interval", "once", "other"]),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "expression",
                "timezone",
                "seconds",
                "every",
                "start",
                "end",
                "jitter",
                "at",
            ]
        ),
        json_values
        | st.sampled_from(["* * * * *", "UTC", "2025-01-01T00:00+00:00", 60, 0.5]),
    ),
)
def test_arbitrary_specs_give_a_trigger_or_invalid_trigger(
    kind: str, fields: dict[str, Any]
) -> None:
    try:
        trigger = trigger_from_spec({"kind": kind, **fields})
    except InvalidTrigger:
        return
    assert trigger_from_spec(trigger.to_spec()) == trigger


# --- preview, the alias, imports -------------------------------------------------


def test_preview() -> None:
    trigger = CronTrigger("0 */6 * * *")
    fires = preview(trigger, START, 5)
    assert fires == [START + timedelta(hours=6 * n) for n in range(1, 6)]
    assert all(a < b for a, b in pairwise(fires))
    assert preview(trigger, START, 0) == []


@pytest.mark.parametrize("count", [-1, 1.5, True, "3"])
def test_preview_rejects_bad_counts(count: Any) -> None:
    with pytest.raises(InvalidTrigger, match="count must be a whole number >= 0"):
        preview(CronTrigger("* * * * *"), START, count)


def test_preview_needs_aware_after() -> None:
    with pytest.raises(InvalidTrigger, match="after needs an aware datetime"):
        preview(CronTrigger("* * * * *"), datetime(2025, 1, 1), 1)  # noqa: DTZ001


def test_trigger_alias_names_the_three_kinds() -> None:
    assert set(typing.get_args(Trigger)) == {CronTrigger, IntervalTrigger, OnceTrigger}
    assert {kind.kind for kind in typing.get_args(Trigger)} == {
        "cron",
        "interval",
        "once",
    }


def test_triggers_module_does_not_import_sqlalchemy() -> None:
    """Import the module in a fresh interpreter, bypassing jobsched/__init__.py."""
    code = (
        "import jobsched._triggers\n"
        "CronTrigger = jobsched._triggers.CronTrigger\n"
        "CronTrigger('0 0 * * *', 'Europe/Berlin').to_spec()\n"
        "loaded = [m for m in sys.modules if m.partition('.')[0] == 'sqlalchemy']\n"
        "sys.stdout.write(repr(loaded))\n"
    )
    assert run_isolated(code) == "[]"


def test_spec_accepts_a_z_suffix() -> None:
    """Hand-written specs may say "Z" for UTC, on every supported Python."""
    spec = {"kind": "once", "at": "2025-01-01T00:00:00Z"}
    assert trigger_from_spec(spec) == OnceTrigger(START)
