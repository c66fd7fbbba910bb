"""The exception tree: one root, the natural builtins, messages built from fields."""

from __future__ import annotations

import pickle

import pytest
from sqlalchemy import exc

from jobsched import (
    ConfigurationError,
    DuplicateJob,
    InvalidArguments,
    InvalidTrigger,
    JobDefinitionError,
    JobNotFound,
    JobschedError,
    SchedulerStateError,
    SchemaVersionError,
    StoreError,
)
from jobsched._store import Store
from jobsched._tables import define_tables
from jobsched.testing import sqlite_memory_engine


@pytest.mark.parametrize(
    ("error", "builtins"),
    [
        (JobDefinitionError, (ValueError,)),
        (ConfigurationError, (ValueError,)),
        (InvalidTrigger, (JobDefinitionError, ValueError)),
        (InvalidArguments, (JobDefinitionError, TypeError, ValueError)),
        (DuplicateJob, (JobDefinitionError, ValueError)),
        (JobNotFound, (LookupError,)),
        (SchemaVersionError, ()),
        (StoreError, ()),
        (SchedulerStateError, (RuntimeError,)),
    ],
)
def test_every_error_descends_from_the_root_and_its_builtin(
    error: type[Exception], builtins: tuple[type[Exception], ...]
) -> None:
    """Callers who only know ``except ValueError`` still catch them (STYLE 20-21)."""
    assert issubclass(error, JobschedError)
    for base in builtins:
        assert issubclass(error, base)


def test_definition_error_names_the_job_and_keeps_its_fields() -> None:
    error = InvalidTrigger("bad minute field", job="nightly")

    assert str(error) == "job 'nightly': bad minute field"
    assert error.job == "nightly"
    assert error.problem == "bad minute field"


def test_definition_error_without_a_job_is_just_the_problem() -> None:
    assert str(JobDefinitionError("no schedule")) == "no schedule"
    assert JobDefinitionError("no schedule").job is None


def test_for_job_keeps_the_type_and_problem() -> None:
    original = InvalidArguments("args[0] is a set")

    named = original.for_job("report")

    assert type(named) is InvalidArguments
    assert named.problem == "args[0] is a set"
    assert str(named) == "job 'report': args[0] is a set"


def test_job_not_found_renders_the_name_with_repr() -> None:
    error = JobNotFound("it's")

    assert error.job == "it's"
    assert str(error) == 'no job named "it\'s"'


def test_schema_version_error_says_what_to_do() -> None:
    error = SchemaVersionError(found=3, supported=1)

    assert (error.found, error.supported) == (3, 1)
    with pytest.raises(
        SchemaVersionError, match=r"version 3.*supports up to 1.*upgrade"
    ):
        raise error


@pytest.mark.parametrize(
    "error",
    [
        InvalidTrigger("bad minute field", job="nightly"),
        JobNotFound("nightly"),
        SchemaVersionError(found=2, supported=1),
    ],
    ids=type,
)
def test_errors_survive_pickling_with_their_fields(error: JobschedError) -> None:
    """Errors cross process boundaries (multiprocessing, process executors)."""
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def _store() -> Store:
    return Store(sqlite_memory_engine(), define_tables("errors_"))


def test_store_wraps_database_errors_and_chains_the_cause() -> None:
    """A SQLAlchemy error leaves the store as a StoreError (STYLE 23)."""
    original = exc.IntegrityError("INSERT ...", {}, Exception("duplicate"))

    def work() -> None:
        raise original

    with pytest.raises(StoreError, match=r"^inserting a row failed: ") as caught:
        _store().run(work, "inserting a row")

    assert caught.value.__cause__ is original


def test_store_retries_transient_errors_then_succeeds() -> None:
    """Lost connections and 'database is locked' are retried (DESIGN 6)."""
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise exc.OperationalError("SELECT 1", {}, Exception("database is locked"))
        return "done"

    assert _store().run(work, "polling") == "done"
    assert len(calls) == 3


def test_store_does_not_retry_errors_that_cannot_go_away() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise exc.ProgrammingError("SELECT nope", {}, Exception("no such table"))

    with pytest.raises(StoreError, match="no such table"):
        _store().run(work, "polling")
    assert len(calls) == 1
