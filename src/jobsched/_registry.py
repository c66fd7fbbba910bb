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
from typing import Any

from ._errors import DuplicateJob, InvalidArguments, JobDefinitionError
from ._models import JobOptions
from ._triggers import Trigger

# Longest job name, so that names fit the indexed column on every database.
MAX_NAME_LENGTH = 191
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
            f"the name is {len(name)} characters long; at most "
            f"{MAX_NAME_LENGTH} fit",
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
    return f"{path} is a {type(value).__name__} ({value!r:.60}), not a JSON value"


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
    problem = _json_problem(list(args), "args") or _json_problem(
        dict(kwargs), "kwargs"
    )
    if problem:
        raise InvalidArguments(
            f"arguments must be JSON values: {problem}; convert it before "
            "passing it (for example a datetime to an ISO string)",
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
            if existing is not None and existing.func is not spec.func:
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
            if spec.func is func:
                return spec.name
        return None
