"""Running one claimed job: calling it, timing it and capturing what it raised.

The runner knows nothing of SQL; the scheduler hands it a function and its
arguments, and hands what comes back to the store.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._models import RunOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    """How one call of a job's function went.

    Attributes:
        outcome: ``succeeded`` or ``failed``.
        error: What it raised, if anything (the job's own exception).
        duration: Seconds spent in the call.
    """

    outcome: RunOutcome
    error: BaseException | None
    duration: float

    @property
    def error_type(self) -> str | None:
        """The qualified name of the exception's type."""
        if self.error is None:
            return None
        cls = type(self.error)
        if cls.__module__ == "builtins":
            return cls.__qualname__
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def error_message(self) -> str | None:
        """``str()`` of the exception."""
        return None if self.error is None else str(self.error)

    @property
    def traceback(self) -> str | None:
        """The exception's formatted traceback."""
        if self.error is None:
            return None
        return "".join(traceback.format_exception(self.error))

    @property
    def must_propagate(self) -> bool:
        """Whether the error is one that stops the process, not a job failure."""
        return isinstance(self.error, (KeyboardInterrupt, SystemExit))


def execute(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Execution:
    """Call ``func(*args, **kwargs)`` and report how it went.

    Every exception is captured, including ``KeyboardInterrupt`` and
    ``SystemExit``: the caller records the run first and then re-raises those
    (see :attr:`Execution.must_propagate`), so a run is never left ``running``.

    Args:
        func: The job's function.
        args: Its positional arguments.
        kwargs: Its keyword arguments.

    Returns:
        The outcome, the exception if any, and the time taken.
    """
    started = time.perf_counter()
    try:
        func(*args, **kwargs)
    except BaseException as error:
        return Execution(RunOutcome.FAILED, error, time.perf_counter() - started)

    return Execution(RunOutcome.SUCCEEDED, None, time.perf_counter() - started)
