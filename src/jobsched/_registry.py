"""The table of jobs this process knows: name -> function, schedule and options.

Registering validates everything that can be validated without a database, so a
bad job fails at import time with an error that names it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ._errors import (
    DuplicateJob,
    InvalidArguments,
    InvalidTrigger,
    JobDefinitionError,
)
from ._models import JobOptions, Misfire, Overlap
from ._triggers import CronTrigger, IntervalTrigger, OnceTrigger, Trigger

# Longest job name, so that names fit the indexed column on every database.
MAX_NAME_LENGTH = 191
# How much of a rejected argument's repr an error message shows.
MAX_SHOWN_VALUE = 60
# The exception types that are never treated as a job's failure.
NEVER_CAUGHT = (KeyboardInterrupt, SystemExit)


@dataclass(frozen=True)
class JobSpec:
    """A job as registered in code.

    Attributes:
        name: Its unique name (also the name of its function in the table).
        func: The function to call.
        trigger: Its schedule, or ``None`` for a function that only runs when
            enqueued.
        args: Positional arguments (JSON values).
        kwargs: Keyword arguments (JSON values).
        options: The policies stored with its row.
        retry_wait: A tenacity wait strategy giving the delay before each retry.
        retry_on: Exception types that are retried; others fail at once.
        paused: Whether a newly created row starts paused.
        executor: ``"thread"`` (in the scheduler's own threads) or
            ``"process"`` (a child process, killed at the timeout).
    """

    name: str
    func: Callable[..., Any]
    trigger: Trigger | None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: JobOptions = field(default_factory=JobOptions)
    retry_wait: Any = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    paused: bool = False
    executor: str = "thread"


#: The ways a job's function can be run.
EXECUTORS = ("thread", "process")


def default_name(func: Callable[..., Any]) -> str:
    """Return the stable default name of a function: ``module.qualname``."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{qualname}"


def check_name(name: str) -> None:
    """Reject job names that cannot be stored.

    Raises:
        JobDefinitionError: The name is empty or too long.
    """
    if not isinstance(name, str) or not name.strip():
        raise JobDefinitionError(f"a job name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise JobDefinitionError(
            f"the name is {len(name)} characters long; at most {MAX_NAME_LENGTH} fit",
            job=name,
        )


def _json_problem(value: Any, path: str) -> str | None:
    """Return why ``value`` is not plain JSON, or ``None`` when it is."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, not JSON"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the key {key!r}; JSON keys must be strings"
            problem = _json_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    shown = repr(value)
    if len(shown) > MAX_SHOWN_VALUE:
        shown = shown[: MAX_SHOWN_VALUE - 1] + "…"
    return f"{path} is a {type(value).__name__} ({shown}), not a JSON value"


def encode_args(job: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Encode a job's arguments as JSON text.

    Args:
        job: The job's name, for the error message.
        args: Positional arguments.
        kwargs: Keyword arguments.

    Returns:
        The canonical JSON text stored in the job's row.

    Raises:
        InvalidArguments: A value is not plain JSON (objects, sets, bytes,
            datetimes, NaN, non-string keys...).
    """
    problem = _json_problem(list(args), "args") or _json_problem(dict(kwargs), "kwargs")
    if problem:
        raise InvalidArguments(
            f"arguments must be JSON values: {problem}; convert it before "
            "passing it (a datetime to an ISO string, a set to a list...)",
            job=job,
        )
    return json.dumps(
        {"args": list(args), "kwargs": dict(kwargs)},
        sort_keys=True,
        separators=(",", ":"),
    )


def decode_args(text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode arguments stored by :func:`encode_args`.

    Raises:
        ValueError: The text is not arguments in that form.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("stored arguments are not a JSON object")
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("stored arguments need a list 'args' and an object 'kwargs'")
    return tuple(args), kwargs


def as_delta(value: float | timedelta | None, what: str) -> timedelta | None:
    if value is None:
        return None
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if delta < timedelta(0):
        raise JobDefinitionError(f"{what} must not be negative, got {value!r}")
    return delta


def _positive(value: float | timedelta, what: str) -> timedelta:
    delta = as_delta(value, what)
    if delta is None or delta <= timedelta(0):
        raise JobDefinitionError(f"{what} must be positive, got {value!r}")
    return delta


def build_spec(
    name: str,
    func: Callable[..., Any],
    *,
    cron: str | None = None,
    timezone: str = "UTC",
    seconds: bool = False,
    every: float | timedelta | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    jitter: float | timedelta | None = None,
    at: datetime | None = None,
    trigger: Trigger | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    misfire: Misfire | str = Misfire.COALESCE,
    grace: float | timedelta | None = None,
    catch_up_window: float | timedelta | None = None,
    overlap: Overlap | str = Overlap.SKIP,
    max_attempts: int = 1,
    retry_wait: Any = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    paused: bool = False,
    timeout: float | timedelta | None = None,
    executor: str = "thread",
) -> JobSpec:
    """Validate a registration and build its :class:`JobSpec`.

    Raises:
        JobDefinitionError: Anything invalid (without the job's name; the caller
            adds it).
    """
    if not callable(func):
        raise JobDefinitionError(f"{func!r} is not callable")

    given = [
        k
        for k, v in (("cron", cron), ("every", every), ("at", at), ("trigger", trigger))
        if v is not None
    ]
    if len(given) > 1:
        raise JobDefinitionError(f"give one schedule, not {' and '.join(given)}")
    if cron is not None:
        trigger = CronTrigger(cron, timezone, seconds=seconds)
    elif every is not None:
        try:  # a negative interval or jitter is a bad schedule like any other
            interval = as_delta(every, "every") or timedelta(0)
            spread = as_delta(jitter, "jitter") or timedelta(0)
        except JobDefinitionError as error:
            raise InvalidTrigger(error.problem) from error
        trigger = IntervalTrigger(interval, start, end, spread)
    elif at is not None:
        trigger = OnceTrigger(at)

    kwargs = dict(kwargs or {})
    encode_args(name, args, kwargs)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise JobDefinitionError(
            f"max_attempts must be at least 1, got {max_attempts!r}"
        )
    try:
        job_options = JobOptions(
            misfire=Misfire(misfire),
            grace=as_delta(grace, "grace"),
            catch_up_window=(
                JobOptions().catch_up_window
                if catch_up_window is None
                else _positive(catch_up_window, "catch_up_window")
            ),
            overlap=Overlap(overlap),
            max_attempts=max_attempts,
            timeout=None if timeout is None else _positive(timeout, "timeout"),
        )
    except ValueError as error:
        raise JobDefinitionError(str(error)) from error

    if executor not in EXECUTORS:
        raise JobDefinitionError(
            f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}"
        )

    retry_on = tuple(retry_on)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise JobDefinitionError(
            f"retry_on must hold exception types, got {retry_on!r}"
        )

    return JobSpec(
        name=name,
        func=func,
        trigger=trigger,
        args=tuple(args),
        kwargs=kwargs,
        options=job_options,
        retry_wait=retry_wait,
        retry_on=retry_on,
        paused=paused,
        executor=executor,
    )


class Registry:
    """The jobs registered in this process, by name."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpec] = {}
        self._lock = threading.Lock()

    def add(self, spec: JobSpec) -> None:
        """Register a job.

        Raises:
            DuplicateJob: Another function is registered under that name.
        """
        with self._lock:
            existing = self._jobs.get(spec.name)
            if existing is not None and existing.func != spec.func:
                raise DuplicateJob(
                    f"the name is already registered for {existing.func!r}; "
                    "pass name=... to tell them apart",
                    job=spec.name,
                )
            self._jobs[spec.name] = spec

    def get(self, name: str) -> JobSpec | None:
        """Return the job registered as ``name``, if any."""
        return self._jobs.get(name)

    def names(self) -> frozenset[str]:
        """Return the names of every registered job."""
        return frozenset(self._jobs)

    def scheduled(self) -> list[JobSpec]:
        """Return the registered jobs that have a schedule."""
        return [spec for spec in self._jobs.values() if spec.trigger is not None]

    def name_of(self, func: Callable[..., Any]) -> str | None:
        """Return the name under which ``func`` is registered, if it is."""
        for spec in self._jobs.values():
            # == rather than "is": a bound method is a new object on every access.
            if spec.func == func:
                return spec.name
        return None
