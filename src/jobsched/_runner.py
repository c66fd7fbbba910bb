"""Running one claimed job: calling it, timing it and capturing what it raised.

The runner knows nothing of SQL; the scheduler hands it a function and its
arguments, and hands what comes back to the store.

Three ways to run a function:

* inline, in the calling thread (no timeout);
* in a thread of its own, waited for up to a timeout. A Python thread cannot be
  killed: after the timeout the run is recorded as timed out and the scheduler
  moves on, but the function keeps running until it returns by itself;
* in a child process (``executor="process"``), which is killed at the timeout.
  The function and its arguments must then be importable and picklable (a
  module-level function).
"""

from __future__ import annotations

import contextvars
import logging
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._models import RunOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What a job's function can learn about the run it is part of.

    Attributes:
        job: The job's name.
        scheduled_for: The fire time being run (UTC).
        attempt: 1 for the first try of that fire time, 2 for the first retry...
        run_id: The key of the run's row in the history.
    """

    job: str
    scheduled_for: datetime
    attempt: int
    run_id: int


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "jobsched_current_run", default=None
)


def current_run() -> RunContext | None:
    """Return the run that the calling code is part of, or ``None`` outside one.

    Works in a job's function run inline or in a thread (with or without a
    timeout); a function run with ``executor="process"`` gets ``None``.
    """
    return _current.get()


@contextmanager
def running_as(context: RunContext) -> Iterator[None]:
    """Make :func:`current_run` return ``context`` inside the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


# How long a killed child process is given to go away before it is abandoned.
KILL_GRACE = 5.0
# The start method of process runs: a fresh interpreter, safe in a process that
# has threads (a fork of one is not).
PROCESS_START_METHOD = "spawn"


@dataclass(frozen=True)
class Execution:
    """How one call of a job's function went.

    Attributes:
        outcome: ``succeeded``, ``failed`` or ``timed_out``.
        duration: Seconds spent in the call.
        error: What it raised (the job's own exception), when it is at hand.
        error_type: The qualified name of the exception's type.
        error_message: ``str()`` of the exception, or why the run was cut short.
        traceback: The exception's formatted traceback.
    """

    outcome: RunOutcome
    duration: float
    error: BaseException | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None

    @classmethod
    def failure(cls, error: BaseException, duration: float) -> Execution:
        """Describe a call that raised ``error``."""
        return cls(
            outcome=RunOutcome.FAILED,
            duration=duration,
            error=error,
            error_type=qualified_name(type(error)),
            error_message=str(error),
            traceback="".join(traceback.format_exception(error)),
        )

    @property
    def must_propagate(self) -> bool:
        """Whether the error is one that stops the process, not a job failure."""
        return isinstance(self.error, (KeyboardInterrupt, SystemExit))


def qualified_name(cls: type) -> str:
    """Return ``module.QualName`` of a type, or just the name for builtins."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def execute(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Execution:
    """Call ``func(*args, **kwargs)`` in this thread and report how it went.

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
    except BaseException as error:  # recorded, then re-raised if fatal
        return Execution.failure(error, time.perf_counter() - started)

    return Execution(RunOutcome.SUCCEEDED, time.perf_counter() - started)


def execute_with_timeout(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    timeout: float,
) -> Execution:
    """Call the function in a thread of its own and wait up to ``timeout``.

    Returns:
        The call's outcome, or ``timed_out`` when it did not return in time (the
        thread then keeps running in the background: threads cannot be killed).
    """
    box: list[Execution] = []
    started = time.perf_counter()
    context = contextvars.copy_context()  # current_run() inside the thread
    worker = threading.Thread(
        target=lambda: box.append(context.run(execute, func, args, kwargs)),
        name=f"jobsched-run-{getattr(func, '__name__', 'job')}",
        daemon=True,
    )
    worker.start()
    worker.join(timeout)
    if box:
        return box[0]

    return Execution(
        RunOutcome.TIMED_OUT,
        time.perf_counter() - started,
        error_message=(
            f"still running after the {timeout:g} s timeout; the thread could not "
            "be stopped and may still be running"
        ),
    )


def _child(
    conn: Any, func: Callable[..., Any], args: Sequence[Any], kwargs: Any
) -> None:
    """Body of a process run: call the function, send back how it went."""
    try:
        func(*args, **kwargs)
    except BaseException as error:  # reported to the parent
        conn.send(
            (
                qualified_name(type(error)),
                str(error),
                "".join(traceback.format_exception(error)),
            )
        )
    else:
        conn.send(None)
    finally:
        conn.close()


def execute_in_process(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    timeout: float | None,
) -> Execution:
    """Call the function in a child process, killing it at ``timeout``.

    Returns:
        The outcome; a failure carries the child's exception type, message and
        traceback as text (the exception object stays in the child).
    """
    context: Any = multiprocessing.get_context(PROCESS_START_METHOD)
    receiver, sender = context.Pipe(duplex=False)
    started = time.perf_counter()
    child = context.Process(
        target=_child, args=(sender, func, tuple(args), dict(kwargs)), daemon=True
    )
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            child.kill()
            child.join(KILL_GRACE)
            return Execution(
                RunOutcome.TIMED_OUT,
                time.perf_counter() - started,
                error_message=f"killed after the {timeout:g} s timeout",
            )
        reply = receiver.recv()
    except EOFError:
        child.join(KILL_GRACE)
        return Execution(
            RunOutcome.FAILED,
            time.perf_counter() - started,
            error_type="ChildProcessError",
            error_message=f"the job's process died (exit code {child.exitcode})",
        )
    finally:
        receiver.close()

    duration = time.perf_counter() - started
    child.join(KILL_GRACE)
    if reply is None:
        return Execution(RunOutcome.SUCCEEDED, duration)
    error_type, message, text = reply
    return Execution(
        RunOutcome.FAILED,
        duration,
        error_type=error_type,
        error_message=message,
        traceback=text,
    )
