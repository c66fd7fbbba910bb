"""Job bodies for the fault-injection tests, importable by helper processes.

They live in a module of their own (not in a test file) so that a helper
process and a ``spawn`` child of the process executor can import them by name.
Every body appends one JSON line when it starts and one when it ends to a
results file opened with ``O_APPEND``: such small appends from many processes
never interleave, and a body killed mid-run leaves a start without an end.
Results live outside the database on purpose, so that a database fault cannot
hide or fake an execution.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any


def append(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` in a single ``write``."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def first_time(marker: str) -> bool:
    """Return ``True`` for exactly one caller across all processes."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def body(
    results: str,
    job: str,
    seconds: float = 0.0,
    first_seconds: float | None = None,
    marker: str | None = None,
    hold_file: str | None = None,
    hold_seconds: float = 60.0,
) -> None:
    """Record an execution of ``job`` that lasts ``seconds``.

    Args:
        results: The results file.
        job: The job's name, recorded with the execution.
        seconds: How long every execution lasts.
        first_seconds: How long the very first execution lasts (across all
            processes, decided through ``marker``), if it differs.
        marker: A path that the first execution creates.
        hold_file: While this file exists, executions last ``hold_seconds``.
        hold_seconds: See ``hold_file``.
    """
    run = uuid.uuid4().hex
    duration = seconds
    if first_seconds is not None and marker is not None and first_time(marker):
        duration = first_seconds
    if hold_file is not None and os.path.exists(hold_file):
        duration = hold_seconds
    append(
        results,
        {
            "event": "start",
            "job": job,
            "run": run,
            "pid": os.getpid(),
            "t": time.time(),
        },
    )
    time.sleep(duration)
    append(
        results,
        {"event": "end", "job": job, "run": run, "pid": os.getpid(), "t": time.time()},
    )


def hang_first(results: str, job: str, marker: str) -> None:
    """Hang (practically) forever on the first execution; return at once later.

    The first execution writes its process id to ``marker + ".pid"`` before it
    hangs, so a test can check that a killed process executor child is gone.
    """
    run = uuid.uuid4().hex
    hang = first_time(marker)
    append(
        results,
        {
            "event": "start",
            "job": job,
            "run": run,
            "pid": os.getpid(),
            "t": time.time(),
        },
    )
    if hang:
        with open(marker + ".pid", "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        time.sleep(1_000_000)
    append(
        results,
        {"event": "end", "job": job, "run": run, "pid": os.getpid(), "t": time.time()},
    )


def read_results(path: str) -> list[dict[str, Any]]:
    """Return the executions recorded in ``path``, in start order.

    Each execution is a dict with ``job``, ``pid``, ``start`` and ``end``
    (``None`` when it never ended: its process was killed or is still in it).
    """
    if not os.path.exists(path):
        return []
    runs: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            run = runs.setdefault(
                record["run"],
                {
                    "job": record["job"],
                    "pid": record["pid"],
                    "start": None,
                    "end": None,
                },
            )
            run[record["event"]] = record["t"]
    return sorted(runs.values(), key=lambda r: r["start"] or 0.0)
