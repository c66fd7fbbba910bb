"""The schedule maths of the field cases in CASES.md, as pure functions.

Each test names its case. Expected instants are the ones CASES.md gives.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from jobsched._errors import InvalidTrigger
from jobsched._triggers import (
    CronTrigger,
    IntervalTrigger,
    OnceTrigger,
    Trigger,
    preview,
)

UTC = timezone.utc


def utc(text: str) -> datetime:
    """Parse ISO 8601 ("Z" allowed, no offset meaning UTC); return it in UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def fires_between(trigger: Trigger, start: datetime, end: datetime) -> list[datetime]:
    """Fire times in ``(start, end]``, following next_after from ``start``."""
    fires = []
    moment = trigger.next_after(start)
    while moment is not None and moment <= end:
        fires.append(moment)
        moment = trigger.next_after(moment)
    return fires


# --- B01 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "previous", "expected"),
    [
        ("America/Los_Angeles", "2022-03-13T00:00-08:00", "2022-03-14T07:00Z"),
        ("Europe/Berlin", "2025-03-30T00:00+01:00", "2025-03-30T22:00Z"),
        ("America/New_York", "2025-03-09T00:00-05:00", "2025-03-10T00:00-04:00"),
        ("Australia/Sydney", "2025-10-05T00:00+10:00", "2025-10-06T00:00+11:00"),
    ],
)
def test_b01_spring_forward_day_keeps_next_daily_run(
    zone: str, previous: str, expected: str
) -> None:
    """Spring-forward day must not skip the next daily run (case B01)."""
    trigger = CronTrigger("0 0 * * *", zone)
    now = utc(previous) + timedelta(seconds=7)
    assert trigger.next_after(now) == utc(expected)
    assert trigger.next_after(utc(previous)) == utc(expected)


def test_b01_window_has_one_run_per_local_date() -> None:
    """Berlin daily midnight over the spring-forward weekend: three runs (case B01)."""
    trigger = CronTrigger("0 0 * * *", "Europe/Berlin")
    fires = fires_between(trigger, utc("2025-03-29T22:00Z"), utc("2025-04-01T00:00Z"))
    assert fires == [
        utc("2025-03-29T23:00Z"),
        utc("2025-03-30T22:00Z"),
        utc("2025-03-31T22:00Z"),
    ]


def test_b01_every_result_is_aware_utc() -> None:
    """Fire times come back in UTC whatever zone ``after`` is in (case B01)."""
    trigger = CronTrigger("0 0 * * *", "America/Los_Angeles")
    after = datetime(2022, 3, 13, 0, 0, 7, tzinfo=ZoneInfo("America/Los_Angeles"))
    fire = trigger.next_after(after)
    assert fire is not None
    assert fire.tzinfo is UTC
    assert fire == utc("2022-03-14T07:00Z")


# --- B02 ----------------------------------------------------------------------


def test_b02_fixed_hour_fires_once_at_first_occurrence_new_york() -> None:
    """A fixed-hour job in the repeated hour fires once, at 01:30 EDT (case B02.1)."""
    trigger = CronTrigger("30 1 * * *", "America/New_York")
    assert trigger.fixed_time
    fires = fires_between(trigger, utc("2026-10-31T16:00Z"), utc("2026-11-02T12:00Z"))
    assert fires == [utc("2026-11-01T05:30Z"), utc("2026-11-02T06:30Z")]


def test_b02_fixed_hour_fires_once_in_berlin() -> None:
    """Berlin 02:30 on the fall-back day: one run at 00:30Z, none at 01:30Z (B02.2)."""
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    fires = fires_between(trigger, utc("2025-10-25T12:00Z"), utc("2025-10-27T12:00Z"))
    assert fires == [utc("2025-10-26T00:30Z"), utc("2025-10-27T01:30Z")]


def test_b02_fixed_hour_with_thirty_minute_dst() -> None:
    """Lord Howe's half-hour fall-back: 01:45 fires once, at +11:00 (case B02.3)."""
    trigger = CronTrigger("45 1 * * *", "Australia/Lord_Howe")
    fires = fires_between(trigger, utc("2026-04-04T12:00Z"), utc("2026-04-05T12:00Z"))
    assert fires == [utc("2026-04-04T14:45Z")]
    assert utc("2026-04-04T15:15Z") not in fires


def test_b02_hourly_fires_in_both_occurrences() -> None:
    """Hourly job fires at 01:00 EDT and 01:00 EST: five runs (case B02.4)."""
    trigger = CronTrigger("0 * * * *", "America/New_York")
    assert not trigger.fixed_time
    fires = fires_between(trigger, utc("2022-11-06T04:30Z"), utc("2022-11-06T09:00Z"))
    assert fires == [utc(f"2022-11-06T0{hour}:00Z") for hour in range(5, 10)]


def test_b02_quarter_hourly_keeps_utc_cadence() -> None:
    """*/15 through the repeated hour: 8 runs 05:00Z-06:45Z, 15 min apart (B02.5)."""
    trigger = CronTrigger("*/15 * * * *", "America/New_York")
    fires = fires_between(trigger, utc("2022-11-06T04:59Z"), utc("2022-11-06T06:45Z"))
    assert len(fires) == 8
    assert fires[0] == utc("2022-11-06T05:00Z")
    assert all(b - a == timedelta(minutes=15) for a, b in pairwise(fires))


def test_b02_next_is_strictly_later_from_second_occurrence() -> None:
    """From 03:45 fold=1 in Helsinki the next :30 is 02:30Z (case B02.6)."""
    helsinki = ZoneInfo("Europe/Helsinki")
    now = datetime(2017, 10, 29, 3, 45, fold=1, tzinfo=helsinki)
    assert now.astimezone(UTC) == utc("2017-10-29T01:45Z")
    trigger = CronTrigger("30 * * * *", "Europe/Helsinki")
    assert trigger.next_after(now) == utc("2017-10-29T02:30Z")


def test_b02_fifty_successive_values_strictly_increase_in_utc() -> None:
    """Iterating next_after 50 times never repeats or goes back (case B02.6)."""
    trigger = CronTrigger("30 * * * *", "Europe/Helsinki")
    fires = preview(trigger, utc("2017-10-28T20:00Z"), 50)
    assert len(fires) == 50
    assert all(a < b for a, b in pairwise(fires))
    assert all(fire.utcoffset() == timedelta(0) for fire in fires)
    # The repeated hour appears twice in UTC: 00:30Z (03:30 EEST), 01:30Z (03:30 EET).
    assert utc("2017-10-29T00:30Z") in fires
    assert utc("2017-10-29T01:30Z") in fires


def test_b02_python_compares_same_zone_datetimes_by_wall_time() -> None:
    """The trap itself: same-tzinfo datetimes ignore fold; we compare in UTC (B02)."""
    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)
    second = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=new_york)
    assert first == second  # Python's rule, not ours
    assert second - first == timedelta(0)
    assert first.astimezone(UTC) == utc("2026-11-01T05:30Z")
    assert second.astimezone(UTC) == utc("2026-11-01T06:30Z")
    # next_after honours fold: from the second 01:30 the next half hour is 02:00 EST.
    trigger = CronTrigger("*/30 * * * *", "America/New_York")
    assert trigger.next_after(first) == utc("2026-11-01T06:00Z")
    assert trigger.next_after(second) == utc("2026-11-01T07:00Z")
    # And a fixed-time job does not fire again at the second 01:30.
    daily = CronTrigger("30 1 * * *", "America/New_York")
    assert daily.next_after(first) == utc("2026-11-02T06:30Z")


def test_b02_fixed_time_in_gap_fires_at_end_of_gap() -> None:
    """Spring-forward: 02:30 fires once at 03:00 EDT; wildcards skip the gap (B02)."""
    fixed = CronTrigger("30 2 * * *", "America/New_York")
    assert preview(fixed, utc("2025-03-08T12:00Z"), 2) == [
        utc("2025-03-09T07:00Z"),
        utc("2025-03-10T06:30Z"),
    ]
    wildcard = CronTrigger("30 * * * *", "America/New_York")
    assert preview(wildcard, utc("2025-03-09T06:00Z"), 2) == [
        utc("2025-03-09T06:30Z"),  # 01:30 EST
        utc("2025-03-09T07:30Z"),  # 03:30 EDT; 02:30 does not exist
    ]


# --- B04 ----------------------------------------------------------------------


def test_b04_weekly_interval_is_elapsed_time() -> None:
    """Seven days after 2019-03-26T15:00Z is 2019-04-02T15:00Z, across DST (B04.1)."""
    start = datetime(2019, 3, 26, 16, tzinfo=ZoneInfo("Europe/Brussels"))
    trigger = IntervalTrigger.of(days=7, start=start)
    assert trigger.next_after(start) == utc("2019-04-02T15:00Z")
    shown = utc("2019-04-02T15:00Z").astimezone(ZoneInfo("Europe/Brussels"))
    assert shown.hour == 17  # 17:00 CEST; the wall-clock cadence needs cron
    assert CronTrigger("0 16 * * 2", "Europe/Brussels").next_after(start) == utc(
        "2019-04-02T14:00Z"
    )


@pytest.mark.parametrize("start", ["2025-03-29T23:30Z", "2025-10-25T23:30Z"])
def test_b04_two_hour_interval_is_exactly_7200_seconds(start: str) -> None:
    """Every 2 h across Berlin's DST changes: each pair exactly 7200 s (B04.2)."""
    anchor = utc(start)
    trigger = IntervalTrigger.of(hours=2, start=anchor)
    fires = [anchor, *preview(trigger, anchor, 12)]
    assert [(b - a).total_seconds() for a, b in pairwise(fires)] == [7200.0] * 12
    assert fires[1] == anchor + timedelta(hours=2)
    assert {fire.minute for fire in fires} == {30}


# --- B05 ----------------------------------------------------------------------


def test_b05_naive_one_off_time_is_rejected() -> None:
    """A naive datetime for a one-off job asks for an aware one (case B05.3)."""
    with pytest.raises(InvalidTrigger, match="needs an aware datetime"):
        OnceTrigger(datetime(2025, 6, 1, 12))  # noqa: DTZ001


def test_b05_aware_one_off_time_is_stored_in_utc() -> None:
    """An aware Berlin time becomes the same instant in UTC (case B05.1)."""
    trigger = OnceTrigger(datetime(2025, 6, 1, 12, tzinfo=ZoneInfo("Europe/Berlin")))
    assert trigger.at == utc("2025-06-01T10:00Z")
    assert trigger.at.tzinfo is UTC


def test_b05_cron_in_new_york_fires_at_13z() -> None:
    """Cron 0 9 in New York fires at 13:00Z on both days (case B05.2)."""
    trigger = CronTrigger("0 9 * * *", "America/New_York")
    fires = fires_between(trigger, utc("2025-06-01T00:00Z"), utc("2025-06-03T00:00Z"))
    assert fires == [utc("2025-06-01T13:00Z"), utc("2025-06-02T13:00Z")]


# --- B07 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2,4 *"]
)
def test_b07_impossible_dates_are_rejected_quickly(expression: str) -> None:
    """A date that never occurs fails at once, naming the expression (case B07.1)."""
    started = time.perf_counter()
    with pytest.raises(InvalidTrigger, match="never matches") as caught:
        CronTrigger(expression)
    assert time.perf_counter() - started < 0.1
    assert repr(expression) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("after", ["2024-02-29T09:00Z", "2025-01-01T00:00Z"])
def test_b07_leap_day_is_accepted(after: str) -> None:
    """29 February is possible; the next one after 2024 is 2028 (case B07.2)."""
    trigger = CronTrigger("0 9 29 2 *")
    assert trigger.next_after(utc(after)) == utc("2028-02-29T09:00Z")


# --- B08 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "count"),
    [
        ("0 0 12 * * *", 6),
        ("*/30 * * * * *", 6),
        ("0 0 12 * * ?", 6),
        ("0 0 12 1/1 * ? *", 7),
        ("* * * * * * *", 7),
        ("0 0 * * * 2025", 6),
    ],
)
def test_b08_six_and_seven_fields_rejected_by_default(
    expression: str, count: int
) -> None:
    """Quartz/Spring layouts are refused, pointing at seconds=True (case B08)."""
    with pytest.raises(
        InvalidTrigger, match=f"expected 5 fields .*got {count};"
    ) as caught:
        CronTrigger(expression)
    assert "seconds=True" in str(caught.value)
    assert repr(expression) in str(caught.value)


def test_b08_seconds_opt_in_noon_daily_fires_once_a_day() -> None:
    """With seconds=True, 0 0 12 * * * fires at 12:00:00 daily, once (case B08)."""
    trigger = CronTrigger("0 0 12 * * *", seconds=True)
    day = fires_between(trigger, utc("2025-01-01T00:00Z"), utc("2025-01-02T00:00Z"))
    assert day == [utc("2025-01-01T12:00:00Z")]
    assert preview(trigger, utc("2025-01-01T12:00Z"), 2) == [
        utc("2025-01-02T12:00Z"),
        utc("2025-01-03T12:00Z"),
    ]


def test_b08_seconds_opt_in_every_thirty_seconds() -> None:
    """With seconds=True, */30 * * * * * fires every 30 s (case B08)."""
    trigger = CronTrigger("*/30 * * * * *", seconds=True)
    fires = preview(trigger, utc("2025-01-01T00:00:05Z"), 4)
    assert fires == [
        utc("2025-01-01T00:00:30Z"),
        utc("2025-01-01T00:01:00Z"),
        utc("2025-01-01T00:01:30Z"),
        utc("2025-01-01T00:02:00Z"),
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 12 * * ?", "not supported"),
        ("0 0 12 1/1 * ? *", "expected 6 fields"),
        ("* * * * * * *", "expected 6 fields"),
        ("0 0 * * * 2025", "day-of-week field '2025'.*out of range"),
    ],
)
def test_b08_quartz_only_syntax_rejected_even_with_seconds(
    expression: str, message: str
) -> None:
    """Opting in to seconds does not let Quartz syntax through (case B08)."""
    with pytest.raises(InvalidTrigger, match=message):
        CronTrigger(expression, seconds=True)


# --- B09 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("5-1 * * * *", r"minute field '5-1'.*runs backwards"),
        ("0 0 * * 6-1", r"day-of-week field '6-1'.*runs backwards"),
        ("1-60 * * * *", r"minute field '1-60'.*60 is out of range"),
        ("*/0 * * * *", r"minute field '\*/0'.*step of zero"),
        ("60 * * * *", r"minute field '60'.*out of range \(0-59\)"),
        ("0 0 * * 8", r"day-of-week field '8'.*out of range \(0-7\)"),
        ("", r"it is empty"),
        ("* * * *", r"expected 5 fields .*got 4"),
        ("@reboot", r"@reboot is not supported"),
        ("0 0 1,,2 * *", r"day-of-month field '1,,2'.*empty item"),
    ],
)
def test_b09_malformed_expressions_name_expression_and_field(
    expression: str, message: str
) -> None:
    """Each malformed expression fails with the expression and field (case B09.1)."""
    with pytest.raises(InvalidTrigger, match=message) as caught:
        CronTrigger(expression)
    assert f"invalid cron expression {expression!r}" in str(caught.value)


def test_b09_zero_slash_five_means_every_five_minutes() -> None:
    """0/5 is documented as */5 starting at minute 0 (case B09.1)."""
    assert preview(CronTrigger("0/5 * * * *"), utc("2025-01-01T00:00Z"), 3) == [
        utc("2025-01-01T00:05Z"),
        utc("2025-01-01T00:10Z"),
        utc("2025-01-01T00:15Z"),
    ]
    every_five = CronTrigger("*/5 * * * *")
    start = utc("2025-01-01T00:00Z")
    assert preview(CronTrigger("0/5 * * * *"), start, 30) == preview(
        every_five, start, 30
    )


def test_b09_daily_alias_accepted() -> None:
    """@daily is 0 0 * * * (case B09.1)."""
    start = utc("2025-05-05T13:00Z")
    assert preview(CronTrigger("@daily"), start, 3) == preview(
        CronTrigger("0 0 * * *"), start, 3
    )


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ("Europe/Berlinn", "unknown time zone 'Europe/Berlinn'"),
        ("PST", "unknown time zone 'PST'"),
        ("+05:30", "unknown time zone '\\+05:30'"),
        ("", "time zone name is empty"),
    ],
)
def test_b09_bad_time_zones_rejected(zone: str, message: str) -> None:
    """Misspelt zones, abbreviations, offsets and '' fail at once (case B09.2)."""
    with pytest.raises(InvalidTrigger, match=message):
        CronTrigger("0 12 * * *", zone)


def test_b09_etc_gmt_plus_five_is_utc_minus_five() -> None:
    """Etc/GMT+5 is accepted and means UTC-5: noon is 17:00Z (case B09.2)."""
    trigger = CronTrigger("0 12 * * *", "Etc/GMT+5")
    assert trigger.next_after(utc("2025-01-01T00:00Z")) == utc("2025-01-01T17:00Z")
