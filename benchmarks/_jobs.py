"""The job functions the benchmark runs, and what they count.

APScheduler 3 stores a job's function as an import reference, so the functions
live in a module that both the seeding code and the worker processes import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_lock = threading.Lock()
#: How many times a no-op job ran in this process.
executions = 0
#: Set once ``executions`` reaches ``target``.
reached = threading.Event()
target = 0
#: Set to stop a ``run_pending()`` loop mid-backlog: the next no-op raises
#: SystemExit, which jobsched records and re-raises after giving back the rest
#: of its batch (the documented way to interrupt ``run_pending()``).
interrupt = threading.Event()
#: (job name, wall-clock time of the call) for each run of a ticking job.
ticks: list[tuple[str, float]] = []


def noop() -> None:
    """A job that does nothing but count that it ran."""
    global executions
    if interrupt.is_set():
        raise SystemExit("benchmark stop")
    with _lock:
        executions += 1
        if target and executions >= target:
            reached.set()


def ticker(name: str) -> Callable[[], None]:
    """Return a job function that records when it was called, under ``name``."""

    def tick() -> None:
        called = time.time()
        with _lock:
            ticks.append((name, called))

    tick.__name__ = tick.__qualname__ = name.replace("-", "_")
    return tick
