"""The background threads: the poller behind ``start()`` and the lease keeper.

The poller sleeps until the next known due time (at most ``poll_interval``),
claims no more jobs than it has free workers, and hands them to a thread pool.
The lease keeper renews the lease of every run this process holds, whether it
runs in the pool or inline in ``run_pending()``, until the run is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from ._errors import StoreError
from ._notify import Listener, can_listen
from ._rows import Claim
from ._running import QUEUE_PATIENCE

if TYPE_CHECKING:
    from ._scheduler import Scheduler

logger = logging.getLogger(__name__)

# Renew a lease when a third of it has passed, so two renewals can fail in a row.
RENEW_FRACTION = 3
# Shortest sleep after a poll that found due work it could not claim (another
# process holds it): short enough to stay prompt, long enough not to spin.
CONTENDED_DELAY = 0.05
# Longest sleep between polls while the database keeps failing (seconds).
MAX_FAILURE_DELAY = 30.0


class LeaseKeeper:
    """Renews the leases of this process's claimed runs in a thread of its own."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._claims: dict[tuple[int, int], Claim] = {}
        # Runs that ended but whose result is not written yet: their leases are
        # kept until it is, whatever the code that ran them does.
        self._pinned: dict[tuple[int, int], Claim] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, claims: Iterable[Claim]) -> None:
        """Start renewing the leases of ``claims``."""
        with self._lock:
            for claim in claims:
                self._claims[(claim.job_id, claim.version)] = claim
            self._start_thread()

    def pin(self, claim: Claim) -> None:
        """Keep renewing ``claim``'s lease until :meth:`unpin`, even if discarded."""
        with self._lock:
            self._pinned[(claim.job_id, claim.version)] = claim
            self._start_thread()

    def unpin(self, claim: Claim) -> None:
        """Undo :meth:`pin`."""
        with self._lock:
            self._pinned.pop((claim.job_id, claim.version), None)

    def _start_thread(self) -> None:
        if (self._claims or self._pinned) and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="jobsched-leases", daemon=True
            )
            self._thread.start()

    def holds(self, job_id: int, version: int) -> bool:
        """Whether this process holds (and renews) the claim of that row version."""
        key = (job_id, version)
        with self._lock:
            return key in self._claims or key in self._pinned

    def release_all_pinned(self) -> list[Claim]:
        """Stop renewing every pinned claim (their ends could not be written)."""
        with self._lock:
            pinned, self._pinned = list(self._pinned.values()), {}
        return pinned

    def discard(self, claim: Claim) -> None:
        """Stop renewing the lease of ``claim``."""
        with self._lock:
            self._claims.pop((claim.job_id, claim.version), None)

    @contextmanager
    def keeping(self, claims: Iterable[Claim]) -> Iterator[None]:
        """Renew the leases of ``claims`` for the duration of the block."""
        held = list(claims)
        self.add(held)
        try:
            yield
        finally:
            for claim in held:
                self.discard(claim)

    def _loop(self) -> None:
        period = self._scheduler.lease.total_seconds() / RENEW_FRACTION
        while True:
            time.sleep(period)
            with self._lock:
                claims = list({**self._claims, **self._pinned}.values())
                if not claims:
                    self._thread = None
                    return

            self._renew(claims)

    def _renew(self, claims: list[Claim]) -> None:
        scheduler = self._scheduler
        try:
            lost = scheduler.store.renew(claims, scheduler.clock.now(), scheduler.lease)
        except StoreError as error:
            logger.warning("could not renew leases, will try again: %s", error)
            return

        for claim in lost:
            key = (claim.job_id, claim.version)
            with self._lock:
                held = key in self._claims or key in self._pinned
            if not held:
                continue  # it ended (and its row moved on) while we renewed
            logger.warning(
                "job %r: lease lost to another process; this run's result will "
                "not be recorded",
                claim.name,
                extra={"jobsched": {"action": "lease_lost", "job": claim.name}},
            )
            self.discard(claim)
            self.unpin(claim)


class Poller:
    """The thread behind :meth:`Scheduler.start` and its pool of workers."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[Future[object], Claim] = {}
        # When each claim was handed to the pool (to find those left waiting).
        self._queued_at: dict[Future[object], float] = {}
        # Claims waited too long for a worker: queue none until one frees up.
        self._stalled = False
        self._pool = ThreadPoolExecutor(
            scheduler.max_workers, thread_name_prefix="jobsched-worker"
        )
        self._thread = threading.Thread(
            target=self._loop, name="jobsched-poller", daemon=True
        )
        self._listener: Listener | None = None
        # The last round claimed as many jobs as it had free workers.
        self._saturated = False
        self._last_poll = 0.0
        if can_listen(scheduler.engine):
            self._listener = Listener(
                scheduler.engine, scheduler.store.channel, self.wake
            )

    def start(self) -> None:
        """Start the polling thread (and the listener, on PostgreSQL)."""
        self._thread.start()
        if self._listener is not None:
            self._listener.start()

    def is_alive(self) -> bool:
        """Whether the polling thread runs."""
        return self._thread.is_alive()

    def wake(self) -> None:
        """Poll now instead of at the end of the current sleep."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop claiming, release claims not started, wait for running jobs."""
        deadline = time.monotonic() + timeout
        with self._lock:  # from now on _submit() refuses, see there
            self._stopping.set()
        self._wake.set()
        if self._listener is not None:
            # It notices within one wait for notifications; never past our budget.
            self._listener.stop(min(max(deadline - time.monotonic(), 0), 0.1))
        self._thread.join(max(deadline - time.monotonic(), 0))

        with self._lock:  # before cancelling: a cancelled future leaves _running
            pending = dict(self._running)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._release([c for f, c in pending.items() if f.cancelled()])

        for future in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with suppress(Exception):  # timed out or cancelled: nothing to wait for
                future.exception(timeout=remaining)

        try:
            self._scheduler._write_ends()
        except StoreError as error:
            # Nobody is left to retry: let the leases lapse so that another
            # process recovers these runs, instead of holding them forever.
            lapsed = self._scheduler._leases.release_all_pinned()
            logger.warning(
                "stopping with %d run result(s) not written (%s); their leases "
                "will lapse and another process will recover them as abandoned",
                len(lapsed),
                error,
            )

    def _release(self, claims: list[Claim]) -> None:
        """Give back claims that never started, so any process runs them now."""
        with suppress(StoreError):  # logged; their leases lapse
            self._scheduler._release(claims)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                delay = self._tick()
                failures = 0
            except StoreError as error:
                failures += 1
                delay = min(
                    self._scheduler.poll_interval * 2**failures, MAX_FAILURE_DELAY
                )
                logger.warning(
                    "poll failed (%d in a row), next try in %.1f s: %s",
                    failures,
                    delay,
                    error,
                    extra={"jobsched": {"action": "poll_failed"}},
                )
            except Exception:
                logger.exception("unexpected error in the poll loop; continuing")
                delay = self._scheduler.poll_interval

            self._wake.wait(delay)
            self._wake.clear()

    def _room(self) -> int:
        """How many more jobs this process may hold now.

        Its workers, plus the queue of claimed jobs waiting for one (see
        :meth:`Scheduler._queue_limit`), less the jobs running or queued and
        the runs whose end is not written yet.
        """
        scheduler = self._scheduler
        queue = 0 if self._stalled else scheduler._queue_limit()
        capacity = scheduler.max_workers + queue
        unwritten = scheduler._ends_count()
        with self._lock:
            return capacity - len(self._running) - unwritten

    def _tick(self) -> float:
        """Poll once; return how long to sleep before the next poll.

        After a round that filled every free worker, the next round claims at
        once without the poll query (the claim itself says whether more is
        due), but the poll query, which also finds expired leases, still runs at
        least once per poll interval.
        """
        scheduler = self._scheduler
        scheduler._ensure_ready()
        scheduler._write_ends()
        self._give_back_waiting()
        now = scheduler.clock.now()
        interval = scheduler.poll_interval
        polled_long_ago = time.monotonic() - self._last_poll >= interval
        if not self._saturated or polled_long_ago:
            self._last_poll = time.monotonic()
            due, expiry = scheduler.store.next_events(scheduler._registry.names())
            if expiry is not None and expiry <= now:
                scheduler._recover_expired(now)
            if due is None or due > now:
                logger.debug("nothing due; sleeping")
                soonest = min((t for t in (due, expiry) if t is not None), default=None)
                wait = interval if soonest is None else (soonest - now).total_seconds()
                return min(max(wait, 0.0), interval)

        free = self._room()
        if free <= 0:
            return interval  # a finishing worker wakes the poller

        claims = scheduler._claim(now, free)
        scheduler._leases.add(claims)
        refused = [claim for claim in claims if not self._submit(claim)]
        self._release(refused)

        self._saturated = len(claims) == free
        return 0.0 if claims else CONTENDED_DELAY

    def _submit(self, claim: Claim) -> bool:
        """Hand a claim to the pool; ``False`` once :meth:`stop` has begun.

        A claim that was in progress when ``stop()`` began (and perhaps gave up
        waiting for this thread) is refused here, under the lock ``stop()``
        sets its flag under, and given back instead of being stranded.
        """
        with self._lock:
            if self._stopping.is_set():
                return False
            future: Future[object] = self._pool.submit(self._run, claim)
            self._running[future] = claim
            self._queued_at[future] = time.monotonic()
        future.add_done_callback(self._done)
        return True

    def _run(self, claim: Claim) -> object:
        scheduler = self._scheduler
        started = time.monotonic()
        try:
            return scheduler._run_claim(claim)
        except (KeyboardInterrupt, SystemExit):
            logger.critical(
                "job %r raised KeyboardInterrupt or SystemExit; the scheduler stops "
                "claiming jobs",
                claim.name,
            )
            self._stopping.set()
            raise
        finally:
            scheduler._keep_pace(time.monotonic() - started)
            scheduler._leases.discard(claim)
            if self._stopping.is_set():
                # No poller is left to write this end: write it from here.
                with suppress(StoreError):
                    scheduler._write_ends()

    def _done(self, future: Future[object]) -> None:
        with self._lock:
            self._running.pop(future, None)
            self._queued_at.pop(future, None)
            if not future.cancelled():
                self._stalled = False  # a worker came free
        self._wake.set()

    def _give_back_waiting(self) -> None:
        """Give back queued claims that waited :data:`QUEUE_PATIENCE` for a worker.

        The runs ahead of them turned out slower than the pace they were
        claimed at; other processes may have free workers. Until a worker of
        this one comes free, it queues no more claims.
        """
        oldest = time.monotonic() - QUEUE_PATIENCE
        with self._lock:
            waiting = [
                (future, claim)
                for future, claim in self._running.items()
                if self._queued_at.get(future, oldest) < oldest
                and not future.running()
                and not future.done()
            ]
        given_back = [claim for future, claim in waiting if future.cancel()]
        if given_back:
            self._stalled = True
            logger.info(
                "giving back %d claimed job(s) that waited over %.1f s for a worker",
                len(given_back),
                QUEUE_PATIENCE,
            )
            self._release(given_back)
