"""Events: what happened, for code that wants to react (metrics, alerts, logs).

Subscribe with :meth:`jobsched.Scheduler.subscribe`. Every event is a frozen
dataclass named in the past tense, carrying the time it happened (from the
scheduler's clock). Events are delivered in the thread where they happen, after
the change they describe is committed; a listener that raises is logged and
never disturbs the scheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base class of every event.

    Attributes:
        timestamp: When it happened (aware UTC).
    """

    timestamp: datetime


@dataclass(frozen=True, kw_only=True)
class JobEvent(Event):
    """An event about one job.

    Attributes:
        job: The job's name.
    """

    job: str


@dataclass(frozen=True, kw_only=True)
class RunEvent(JobEvent):
    """An event about one run of a job.

    Attributes:
        scheduled_for: The fire time of the run.
        attempt: The attempt number (0 for a missed fire time).
    """

    scheduled_for: datetime
    attempt: int


@dataclass(frozen=True, kw_only=True)
class RunStarted(RunEvent):
    """This process claimed a run and is starting it."""


@dataclass(frozen=True, kw_only=True)
class RunSucceeded(RunEvent):
    """A run returned normally.

    Attributes:
        duration: Seconds it took.
    """

    duration: float


@dataclass(frozen=True, kw_only=True)
class RunFailed(RunEvent):
    """A run raised, or exceeded its timeout.

    Attributes:
        duration: Seconds it took.
        error_type: The exception's qualified type name.
        error_message: The exception's message.
        timed_out: Whether it was cut short by its timeout.
        will_retry: Whether another attempt is scheduled.
    """

    duration: float
    error_type: str | None
    error_message: str | None
    timed_out: bool
    will_retry: bool


@dataclass(frozen=True, kw_only=True)
class RunsMissed(JobEvent):
    """Fire times of a job passed without a run (misfire, grace or overlap).

    Attributes:
        fire_times: The missed fire times (at most a hundred are listed).
        count: How many were missed in all.
        reason: Why.
    """

    fire_times: tuple[datetime, ...]
    count: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class LeaseExpired(RunEvent):
    """This process recovered a run whose owner stopped renewing its lease.

    Attributes:
        owner: The process that lost it.
    """

    owner: str | None


@dataclass(frozen=True, kw_only=True)
class JobBroken(JobEvent):
    """A job's row could not be interpreted and was marked broken.

    Attributes:
        reason: What is wrong with it.
    """

    reason: str


Listener = Callable[[Event], None]


class EventBus:
    """Delivers events to subscribed listeners."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Listener, tuple[type[Event], ...]]] = []
        self._lock = threading.Lock()

    def subscribe(
        self, listener: Listener, kinds: tuple[type[Event], ...] = (Event,)
    ) -> None:
        """Call ``listener`` with every event that is an instance of ``kinds``."""
        with self._lock:
            self._listeners.append((listener, kinds))

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            self._listeners = [(f, k) for f, k in self._listeners if f is not listener]

    @property
    def active(self) -> bool:
        """Whether anyone listens (the run path builds no event otherwise)."""
        return bool(self._listeners)

    def publish(self, event: Event) -> None:
        """Deliver ``event``; a listener that raises is logged and skipped."""
        with self._lock:
            listeners = list(self._listeners)
        for listener, kinds in listeners:
            if isinstance(event, kinds):
                self._deliver(listener, event)

    @staticmethod
    def _deliver(listener: Listener, event: Event) -> None:
        try:
            listener(event)
        except Exception:
            logger.exception("event listener %r failed on %r", listener, event)
