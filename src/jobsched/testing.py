"""Helpers for testing code that uses jobsched.

They run the real SQL on a real database (an in-memory SQLite one by default),
so a test exercises the same claim protocol as production; only the clock is
replaced.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

from ._models import RunResult
from ._scheduler import Scheduler

__all__ = ["FakeClock", "run_until_idle", "sqlite_memory_engine"]


class FakeClock:
    """A clock that only moves when told to.

    Args:
        start: The initial time (aware); 2025-01-01T00:00Z when omitted.
    """

    def __init__(self, start: datetime | None = None) -> None:
        moment = start or datetime(2025, 1, 1, tzinfo=timezone.utc)
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = moment.astimezone(timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the current fake time (aware UTC)."""
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (aware), forwards or backwards."""
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        with self._lock:
            self._now = moment.astimezone(timezone.utc)

    def advance(self, delta: float | timedelta) -> datetime:
        """Move forward by ``delta`` (seconds or a timedelta); return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now


def sqlite_memory_engine() -> Engine:
    """Return an engine on a private in-memory SQLite database.

    Every connection of the engine shares the one database, also across
    threads, so a scheduler's background thread sees what the test wrote.
    """
    engine = create_engine(
        "sqlite://",
        connect_args={"check_same_thread": False},
        poolclass=StaticPool,
    )

    # One connection is shared: serialise its use across threads.
    lock = threading.RLock()

    @event.listens_for(engine, "checkout")
    def _acquire(*_: object) -> None:
        lock.acquire()

    @event.listens_for(engine, "checkin")
    def _release(*_: object) -> None:
        lock.release()

    return engine


def run_until_idle(scheduler: Scheduler, max_rounds: int = 100) -> list[RunResult]:
    """Call ``run_pending()`` until a call runs nothing; return every result.

    Args:
        scheduler: The scheduler to drive.
        max_rounds: Stop after this many calls, in case a job keeps itself due.

    Returns:
        Everything that ran, in order.
    """
    results: list[RunResult] = []
    for _ in range(max_rounds):
        ran = scheduler.run_pending()
        if not ran:
            break
        results.extend(ran)
    return results
