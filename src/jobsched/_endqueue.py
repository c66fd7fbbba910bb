"""The queue of run ends waiting to be written, and writing it.

:class:`EndQueueMixin` is the part of the scheduler's run path that comes after
a run: its end is queued, written with the others in one transaction, and
announced to event listeners once committed. A database failure keeps the ends
queued; an end the database refuses is dropped, and left to lease recovery.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ._errors import StoreError
from ._events import EventBus, RunFailed, RunsMissed, RunSucceeded
from ._models import RunOutcome
from ._rows import Claim, Decision, RunEnd
from ._store import Store
from ._store_base import is_transient
from ._store_end import Ending

if TYPE_CHECKING:
    from ._worker import LeaseKeeper

logger = logging.getLogger("jobsched._scheduler")


class EndQueueMixin:
    """Queues, writes and announces the ends of runs (see the module docstring)."""

    store: Store
    _leases: LeaseKeeper
    _events: EventBus
    _lock: Any
    _ends: list[Ending]
    _ends_since: float

    def _record(self, claim: Claim, end: RunEnd, decision: Decision) -> None:
        """Queue a run's end to be written; its lease is kept until it is.

        The queue is written by :meth:`_write_ends`: by ``run_pending()`` after
        each batch, and by the poller on every wake-up (a finishing worker wakes
        it). A database failure keeps the ends queued, leases renewed, until a
        later write succeeds, so a run that happened is never recorded as
        abandoned merely because the database was away when it ended.
        """
        self._leases.pin(claim)
        self._leases.discard(claim)
        with self._lock:
            if not self._ends:
                self._ends_since = time.monotonic()
            self._ends.append((claim, end, decision))

    def _ends_count(self) -> int:
        """How many run ends wait to be written."""
        with self._lock:
            return len(self._ends)

    def _ends_waiting(self) -> float:
        """Seconds the oldest queued end has waited (0 when none)."""
        with self._lock:
            return time.monotonic() - self._ends_since if self._ends else 0.0

    def _write_ends(self) -> None:
        """Write every queued run end in one transaction.

        If the database refuses the batch for a reason that is not transient,
        each end is written on its own, and any it refuses alone is dropped
        (see :meth:`_write_end_alone`).

        Raises:
            StoreError: The database failed for a transient reason; the ends
                not written stay queued.
        """
        with self._lock:
            endings, self._ends = self._ends, []
        if not endings:
            return

        failure: StoreError | None = None
        try:
            written: list[bool | None] = list(self.store.finish_many(endings))
        except StoreError as error:
            if _may_pass(error):
                self._keep_ends(endings, error)
            # One end the database refuses must not hold up the others.
            written, failure = self._write_each(endings)

        # After a failure, the ends without an answer are queued again below.
        answered = endings[: len(written)]
        for (claim, end, decision), ok in zip(answered, written, strict=True):
            self._leases.unpin(claim)
            if ok:
                self._announce_end(claim, end, decision)
            elif ok is not None:
                logger.warning(
                    "job %r: lost its claim while running (its lease expired and "
                    "another process recovered it, or the job was removed); its "
                    "result was not recorded",
                    claim.name,
                    extra={"jobsched": {"action": "claim_lost", "job": claim.name}},
                )
        if failure is not None:
            self._keep_ends(endings[len(answered) :], failure)

    def _write_each(
        self, endings: list[Ending]
    ) -> tuple[list[bool | None], StoreError | None]:
        """Write each end in a transaction of its own, after their batch failed.

        Returns:
            For each end written or refused, in order, whether it was written
            (``None``: refused, see :meth:`_write_end_alone`); and the transient
            failure that stopped the loop, if one did (the database is likely
            down: the ends left are not tried).
        """
        written: list[bool | None] = []
        for ending in endings:
            result = self._write_end_alone(ending)
            if isinstance(result, StoreError):
                return written, result
            written.append(result)
        return written, None

    def _keep_ends(self, endings: list[Ending], error: StoreError) -> NoReturn:
        """Queue ``endings`` again, ahead of newer ones, and raise ``error``."""
        with self._lock:
            self._ends = endings + self._ends
        logger.warning("could not record %d run(s) yet; kept, will retry", len(endings))
        raise error

    def _write_end_alone(self, ending: Ending) -> bool | StoreError | None:
        """Write one end in a transaction of its own.

        Returns:
            Whether it was written, as :meth:`Store.finish_many` says; the error,
            if it failed for a transient reason; ``None`` if the database
            refused it. Such an end is dropped (it would fail again): its lease
            is let lapse, and the run is recovered as abandoned like the run of
            a process that died.
        """
        claim = ending[0]
        try:
            return self.store.finish_many([ending])[0]
        except StoreError as error:
            if _may_pass(error):
                return error
            logger.error(
                "job %r: the database refused the result of its run (%s); it "
                "was not recorded, and the run will be recovered as abandoned "
                "once its lease expires",
                claim.name,
                error,
                extra={"jobsched": {"action": "end_refused", "job": claim.name}},
            )
            return None

    def _announce_end(self, claim: Claim, end: RunEnd, decision: Decision) -> None:
        """Publish the events of a run whose end is committed."""
        if not self._events.active:
            return

        if end.outcome is RunOutcome.SUCCEEDED:
            self._events.publish(
                RunSucceeded(
                    timestamp=end.finished_at,
                    job=claim.name,
                    scheduled_for=claim.scheduled_for,
                    attempt=claim.attempt,
                    duration=end.duration,
                )
            )
        else:
            self._events.publish(
                RunFailed(
                    timestamp=end.finished_at,
                    job=claim.name,
                    scheduled_for=claim.scheduled_for,
                    attempt=claim.attempt,
                    duration=end.duration,
                    error_type=end.error_type,
                    error_message=end.error_message,
                    timed_out=end.outcome is RunOutcome.TIMED_OUT,
                    will_retry=decision.scheduled_for is not None,
                )
            )
        self._announce_missed(claim.name, decision, end.finished_at)

    def _announce_missed(self, name: str, decision: Decision, now: datetime) -> None:
        if decision.missed_total:
            self._events.publish(
                RunsMissed(
                    timestamp=now,
                    job=name,
                    fire_times=decision.missed,
                    count=decision.missed_total,
                    reason=decision.reason,
                )
            )


def _may_pass(error: StoreError) -> bool:
    """Tell whether retrying the write that failed with ``error`` may succeed."""
    cause = error.__cause__
    return cause is None or is_transient(cause)
