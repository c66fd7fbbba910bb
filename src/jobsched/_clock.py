"""Where jobsched reads the time.

Every decision that compares times ("is this job due", "has this lease
expired") uses one :class:`Clock`. By default that is the database's clock, so
that hosts whose own clocks disagree still agree on what is due; tests inject a
fake clock instead (see :mod:`jobsched.testing`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol

logger = logging.getLogger(__name__)

# How often the database clock is read again; between reads, elapsed time is
# measured with the local monotonic clock, which never jumps.
CLOCK_SYNC_INTERVAL = 60.0


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...


class SystemClock:
    """The local system clock, in UTC."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(timezone.utc)


class DatabaseClock:
    """The database server's clock, read once a minute and advanced locally.

    Reading the server's time on every decision would cost a round trip each.
    Instead the server time is read at most every ``sync_interval`` seconds and
    the local monotonic clock measures the time elapsed since, so every process
    sharing one database agrees on "now" to within a round trip, whatever the
    hosts' own wall clocks say.

    Args:
        read_server_time: Returns the database's current time (aware, UTC).
        sync_interval: Seconds between reads of the server's clock.
    """

    def __init__(
        self,
        read_server_time: Callable[[], datetime],
        sync_interval: float = CLOCK_SYNC_INTERVAL,
    ) -> None:
        self._read = read_server_time
        self._sync_interval = sync_interval
        self._lock = threading.Lock()
        self._base: datetime | None = None
        self._base_monotonic = 0.0
        self._next_sync = 0.0

    def now(self) -> datetime:
        """Return the database's current time as an aware UTC datetime.

        Raises:
            StoreError: The very first reading failed (later failures keep
                counting from the last good reading and retry at the next sync).
        """
        with self._lock:
            current = time.monotonic()
            if self._base is None:
                self._base, self._base_monotonic = self._read_server()
                self._next_sync = self._base_monotonic + self._sync_interval
            elif current >= self._next_sync:
                self._next_sync = current + self._sync_interval
                try:
                    self._base, self._base_monotonic = self._read_server()
                except Exception as error:  # the last reading holds
                    logger.debug("database clock not read, keeping the last: %s", error)

            elapsed = time.monotonic() - self._base_monotonic
            return self._base + timedelta(seconds=elapsed)

    def _read_server(self) -> tuple[datetime, float]:
        before = time.monotonic()
        server_now = self._read()
        after = time.monotonic()

        # The server read its clock somewhere within the round trip: take the
        # middle, so the error is at most half of it.
        return server_now, (before + after) / 2
