"""Waking idle pollers at once on PostgreSQL, through LISTEN/NOTIFY.

A poller sleeps until the next due time it knows of, at most ``poll_interval``.
When a process adds, edits, resumes or triggers a job, it also sends a
notification on the table prefix's channel (in the same transaction, so it is
delivered only if the change commits), and every listening process polls at
once instead of at the end of its sleep. Notifications are only a hint: a lost
one costs at most one poll interval, never a run.

The listener holds one connection of its own, outside the engine's pool, and
needs the psycopg (3.2 or newer) driver; with other drivers and databases the
pollers simply poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

logger = logging.getLogger(__name__)

# How long one wait for notifications lasts before the stop flag is checked.
LISTEN_TIMEOUT = 1.0
# Pause before reconnecting after the listening connection failed (seconds).
RECONNECT_DELAY = 2.0


def channel_name(prefix: str) -> str:
    """Return the notification channel of a table prefix."""
    return f"{prefix}wake"


def can_listen(engine: Engine) -> bool:
    """Tell whether the engine's database and driver support the listener."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return False
    try:
        import psycopg
    except ImportError:
        return False
    return hasattr(psycopg.Connection, "notifies")


class Listener:
    """A thread that calls ``on_notify`` whenever the channel is notified.

    Args:
        engine: A PostgreSQL engine using psycopg.
        channel: The channel to listen on.
        on_notify: Called (from the listener thread) for each notification.
    """

    def __init__(
        self, engine: Engine, channel: str, on_notify: Callable[[], None]
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._on_notify = on_notify
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="jobsched-listener", daemon=True
        )

    def start(self) -> None:
        """Start listening."""
        self._thread.start()

    def stop(self, timeout: float = LISTEN_TIMEOUT * 2) -> None:
        """Stop listening and close the connection."""
        self._stopping.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._listen_once():
                self._stopping.wait(RECONNECT_DELAY)

    def _listen_once(self) -> bool:
        """Listen until stopped or the connection fails; ``False`` on failure."""
        try:
            self._listen()
        except Exception as error:  # reconnect: a lost hint costs one poll
            logger.debug("listener connection failed, reconnecting: %s", error)
            return False
        return True

    def _listen(self) -> None:
        from psycopg import sql

        pooled = self._engine.raw_connection()
        driver: Any = pooled.driver_connection
        pooled.detach()  # ours for good; the engine's pool is not shrunk
        try:
            driver.autocommit = True
            driver.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            # Whatever was added before LISTEN took effect may be due already.
            self._on_notify()
            while not self._stopping.is_set():
                for _ in driver.notifies(timeout=LISTEN_TIMEOUT, stop_after=1):
                    self._on_notify()
        finally:
            driver.close()
