"""Registering jobs: validation at registration time, before any database work.

Nothing here touches a database: a bad job must fail where it is declared, with
an error that names the job and the problem (DESIGN guarantee 7).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine

from jobsched import (
    ConfigurationError,
    CronTrigger,
    DuplicateJob,
    IntervalTrigger,
    InvalidArguments,
    InvalidTrigger,
    JobDefinitionError,
    JobNotFound,
    Misfire,
    OnceTrigger,
    Overlap,
    Scheduler,
)


@pytest.fixture
def scheduler() -> Scheduler:
    # Registration never connects: an engine on a database that is never opened.
    return Scheduler(create_engine("sqlite://"))


def noop(*args: Any, **kwargs: Any) -> None:
    """A module-level job."""


class Reports:
    def send(self) -> None:
        """A method, to check qualified names."""


# -- names -----------------------------------------------------------------------------


def test_default_name_is_module_and_qualname(scheduler: Scheduler) -> None:
    def nested() -> None: ...

    assert scheduler.register(noop).name == f"{__name__}.noop"
    assert scheduler.register(Reports.send).name == f"{__name__}.Reports.send"
    assert (
        scheduler.register(nested).name
        == f"{__name__}.test_default_name_is_module_and_qualname.<locals>.nested"
    )


def test_decorator_returns_the_function_unchanged(scheduler: Scheduler) -> None:
    def bare() -> None: ...

    def scheduled() -> None: ...

    assert scheduler.job(bare) is bare
    assert scheduler.job(cron="* * * * *")(scheduled) is scheduled


def test_register_returns_the_validated_spec(scheduler: Scheduler) -> None:
    spec = scheduler.register(
        noop,
        name="nightly",
        cron="0 2 * * *",
        timezone="Europe/Berlin",
        args=[1, "two"],
        kwargs={"three": [3.0, None, True]},
        misfire="catch_up",
        grace=30,
        overlap="queue",
        max_attempts=3,
    )

    assert spec.name == "nightly"
    assert spec.trigger == CronTrigger("0 2 * * *", "Europe/Berlin")
    assert spec.args == (1, "two")
    assert spec.kwargs == {"three": [3.0, None, True]}
    assert spec.options.misfire is Misfire.CATCH_UP
    assert spec.options.grace == timedelta(seconds=30)
    assert spec.options.overlap is Overlap.QUEUE
    assert spec.options.max_attempts == 3


@pytest.mark.parametrize(
    ("options", "trigger"),
    [
        ({"every": 90}, IntervalTrigger(timedelta(seconds=90))),
        ({"every": timedelta(minutes=5)}, IntervalTrigger(timedelta(minutes=5))),
        (
            {"at": datetime(2030, 1, 1, tzinfo=timezone.utc)},
            OnceTrigger(datetime(2030, 1, 1, tzinfo=timezone.utc)),
        ),
        ({"trigger": CronTrigger("@daily")}, CronTrigger("@daily")),
        ({}, None),
    ],
    ids=["every-seconds", "every-timedelta", "at", "trigger", "none"],
)
def test_each_schedule_kind_builds_its_trigger(
    scheduler: Scheduler, options: dict[str, Any], trigger: Any
) -> None:
    assert scheduler.register(noop, name="j", **options).trigger == trigger


def test_two_functions_under_one_name_are_rejected(scheduler: Scheduler) -> None:
    def first() -> None: ...

    def second() -> None: ...

    scheduler.register(first, name="cleanup", every=60)

    with pytest.raises(DuplicateJob, match=r"^job 'cleanup': the name is already"):
        scheduler.register(second, name="cleanup", every=60)


def test_functions_with_the_same_qualified_name_collide(scheduler: Scheduler) -> None:
    """Two different functions with one default name: the second is refused."""

    def make() -> Any:
        def job() -> None: ...

        return job

    scheduler.job(make())

    with pytest.raises(DuplicateJob, match=r"make\.<locals>\.job'.*pass name="):
        scheduler.job(make())


def test_a_rejected_duplicate_leaves_the_first_registration(
    scheduler: Scheduler,
) -> None:
    def first() -> None: ...

    def second() -> None: ...

    scheduler.register(first, name="cleanup", every=60)
    with pytest.raises(DuplicateJob):
        scheduler.register(second, name="cleanup", cron="* * * * *")

    assert scheduler._registry.get("cleanup").func is first  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_names_are_rejected(scheduler: Scheduler, name: str) -> None:
    with pytest.raises(JobDefinitionError, match="must be a non-empty string"):
        scheduler.register(noop, name=name, every=1)


def test_names_too_long_for_the_index_are_rejected(scheduler: Scheduler) -> None:
    with pytest.raises(JobDefinitionError, match=r"192 characters long; at most 191"):
        scheduler.register(noop, name="x" * 192, every=1)

    assert scheduler.register(noop, name="x" * 191, every=1).name == "x" * 191


# -- arguments -------------------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([Opaque()], {}, r"args\[0\] is a Opaque \(<Opaque>\)"),
        ([{1, 2}], {}, r"args\[0\] is a set \(\{1, 2\}\)"),
        ([b"raw"], {}, r"args\[0\] is a bytes \(b'raw'\)"),
        (
            [],
            {"when": datetime(2025, 1, 1, tzinfo=timezone.utc)},
            r"kwargs\['when'\] is a datetime \(datetime\.datetime\(2025",
        ),
        ([math.nan], {}, r"args\[0\] is nan, not JSON"),
        ([1, [2, math.inf]], {}, r"args\[1\]\[1\] is inf, not JSON"),
        ([{1: "one"}], {}, r"args\[0\] has the key 1; JSON keys must be strings"),
        ([], {"cfg": {"ok": [Decimal("1.5")]}}, r"kwargs\['cfg'\]\['ok'\]\[0\] is a "),
    ],
    ids=["object", "set", "bytes", "datetime", "nan", "inf", "int-key", "nested"],
)
def test_non_json_arguments_are_rejected_naming_job_and_value(
    scheduler: Scheduler, args: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    """Arguments are stored as JSON, never pickle (DESIGN guarantee 5)."""
    with pytest.raises(InvalidArguments, match=r"^job 'report': .*" + message):
        scheduler.register(noop, name="report", every=60, args=args, kwargs=kwargs)

    assert scheduler._registry.get("report") is None


def test_non_json_arguments_are_also_type_errors(scheduler: Scheduler) -> None:
    with pytest.raises(TypeError, match="job 'report'"):
        scheduler.register(noop, name="report", every=60, args=[object()])


def test_json_values_of_every_kind_are_accepted(scheduler: Scheduler) -> None:
    args = [None, True, 0, -1.5, "é", [1, [2]], {"k": {"n": None}}]

    spec = scheduler.register(noop, name="j", every=60, args=args, kwargs={"x": 1})

    assert spec.args == tuple(args)


def test_bad_arguments_to_enqueue_are_rejected_before_any_database_work(
    scheduler: Scheduler,
) -> None:
    scheduler.register(noop, name="send")

    with pytest.raises(InvalidArguments, match=r"^job 'send-7': .*args\[0\] is a set"):
        scheduler.enqueue(noop, args=[{1}], name="send-7")


# -- schedules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"cron": "0 0 31 2 *"}, InvalidTrigger, r"0 0 31 2 \*"),
        ({"cron": "61 * * * *"}, InvalidTrigger, "61"),
        ({"cron": "@reboot"}, InvalidTrigger, "@reboot"),
        ({"cron": "0 * * * * *"}, InvalidTrigger, "seconds"),
        (
            {"cron": "0 0 * * *", "timezone": "Mars/Phobos"},
            InvalidTrigger,
            "Mars/Phobos",
        ),
        ({"cron": "0 0 * * *", "timezone": "PST"}, InvalidTrigger, "'PST'"),
        ({"every": 0}, InvalidTrigger, "positive"),
        ({"every": -5}, JobDefinitionError, "every must not be negative"),
        ({"at": datetime(2030, 1, 1)}, InvalidTrigger, "aware datetime"),  # noqa: DTZ001
        ({"cron": "* * * * *", "every": 60}, JobDefinitionError, "not cron and every"),
        (
            {"every": 60, "at": datetime(2030, 1, 1, tzinfo=timezone.utc)},
            JobDefinitionError,
            "not every and at",
        ),
        ({"every": 60, "misfire": "always"}, JobDefinitionError, "'always'"),
        ({"every": 60, "overlap": "parallel"}, JobDefinitionError, "'parallel'"),
        ({"every": 60, "max_attempts": 0}, JobDefinitionError, "max_attempts"),
        ({"every": 60, "grace": -1}, JobDefinitionError, "grace must not be negative"),
        ({"every": 60, "retry_on": (42,)}, JobDefinitionError, "exception types"),
    ],
    ids=[
        "31-february",
        "minute-61",
        "reboot",
        "six-fields",
        "unknown-zone",
        "abbreviation",
        "zero-interval",
        "negative-interval",
        "naive-at",
        "cron-and-every",
        "every-and-at",
        "bad-misfire",
        "bad-overlap",
        "zero-attempts",
        "negative-grace",
        "bad-retry-on",
    ],
)
def test_bad_definitions_fail_at_registration_naming_the_job(
    scheduler: Scheduler,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """Bad input gets a clear error, early (DESIGN guarantee 7, CASES B07, B09)."""
    with pytest.raises(error, match=r"^job 'nightly': .*" + message):
        scheduler.register(noop, name="nightly", **options)

    assert scheduler._registry.get("nightly") is None


def test_unknown_options_are_rejected_naming_the_job(scheduler: Scheduler) -> None:
    with pytest.raises(JobDefinitionError, match=r"^job 'nightly': .*'crontab'"):
        scheduler.register(noop, name="nightly", crontab="* * * * *")


def test_non_callables_are_rejected(scheduler: Scheduler) -> None:
    with pytest.raises(JobDefinitionError, match=r"job 'thing': 42 is not callable"):
        scheduler.register(42, name="thing", every=60)  # type: ignore[arg-type]


# -- enqueue without a database --------------------------------------------------------


def test_enqueue_of_an_unregistered_function_is_job_not_found(
    scheduler: Scheduler,
) -> None:
    def stranger() -> None: ...

    with pytest.raises(
        JobNotFound, match=r"^no function '.*<locals>\.stranger' is registered"
    ):
        scheduler.enqueue(stranger)
    with pytest.raises(
        JobNotFound, match=r"^no function 'missing' is registered in this"
    ):
        scheduler.enqueue("missing")


# -- scheduler options -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_workers": 0}, r"^max_workers must be a positive whole number, got 0$"),
        ({"batch_size": 0}, r"^batch_size must be a positive whole number, got 0$"),
        ({"poll_interval": 0}, r"^poll_interval must be a positive number, got 0$"),
        (
            {"poll_interval": -1.0},
            r"^poll_interval must be a positive number, got -1\.0$",
        ),
        (
            {"max_workers": True},
            r"^max_workers must be a positive whole number, got True$",
        ),
    ],
)
def test_scheduler_rejects_impossible_settings(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Scheduler(create_engine("sqlite://"), **options)
