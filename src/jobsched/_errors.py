"""Exceptions raised by jobsched.

Every exception that jobsched raises descends from :class:`JobschedError`, and
where a builtin describes the problem too, from that builtin as well, so that
``except ValueError`` keeps working for callers who do not know jobsched::

    JobschedError
    ├── JobDefinitionError (ValueError)      a job cannot be registered as given
    │   ├── InvalidTrigger                   bad cron, time zone, interval or date
    │   ├── InvalidArguments (TypeError)     arguments that are not JSON
    │   └── DuplicateJob                     a name registered twice
    ├── ConfigurationError (ValueError)      a scheduler option or argument out of range
    ├── JobNotFound (LookupError)            no job of that name
    ├── SchemaVersionError                   the tables are newer than this code
    ├── StoreError                           the database failed after retries
    └── SchedulerStateError (RuntimeError)   e.g. start() on a running scheduler
"""

from __future__ import annotations

from typing import Any


class JobschedError(Exception):
    """Root of every exception raised by jobsched."""


def _rebuild(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Recreate an exception from its structured arguments (for pickling)."""
    return cls(*args, **kwargs)


class JobDefinitionError(JobschedError, ValueError):
    """A job cannot be registered as given.

    Attributes:
        job: The job's name, when known.
        problem: What is wrong, without the job's name.
    """

    def __init__(self, problem: str, *, job: str | None = None) -> None:
        self.job = job
        self.problem = problem
        prefix = f"job {job!r}: " if job is not None else ""
        super().__init__(prefix + problem)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.problem,), {"job": self.job}))

    def for_job(self, job: str) -> JobDefinitionError:
        """Return the same error, naming ``job``."""
        return type(self)(self.problem, job=job)


class InvalidTrigger(JobDefinitionError):
    """A cron expression, time zone, interval or date cannot be used."""


class InvalidArguments(JobDefinitionError, TypeError):
    """Job arguments that cannot be stored as JSON."""


class DuplicateJob(JobDefinitionError):
    """One job name is registered for two different functions in one scheduler."""


class ConfigurationError(JobschedError, ValueError):
    """A scheduler option or a call's argument is out of range."""


class JobNotFound(JobschedError, LookupError):
    """No job of the given name exists.

    Attributes:
        job: The name that was looked up.
    """

    def __init__(self, job: str, message: str | None = None) -> None:
        self.job = job
        super().__init__(message or f"no job named {job!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.job, str(self)), {}))


class SchemaVersionError(JobschedError):
    """The stored schema is newer than this version of jobsched understands.

    Attributes:
        found: The schema version stored in the database.
        supported: The newest schema version this code knows.
    """

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"the jobsched tables have schema version {found}, but this version "
            f"of jobsched supports up to {supported}; upgrade jobsched"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.found, self.supported), {}))


class StoreError(JobschedError):
    """The database failed, and retrying did not help.

    The original SQLAlchemy exception is chained as ``__cause__``.
    """


class SchedulerStateError(JobschedError, RuntimeError):
    """An operation that the scheduler's current state does not allow."""
