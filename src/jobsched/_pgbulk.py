"""Set-based claim and end statements for PostgreSQL.

On PostgreSQL a whole batch is written by one statement: the values of every
row travel as a few arrays, ``unnest`` turns them back into rows, and an
``UPDATE ... FROM`` applies each row's compare-and-set (id and version for a
claim; id, owner and version for an end). ``RETURNING`` names exactly the rows
that statement changed, and a data-modifying ``WITH`` writes the matching run
history rows in the same statement, so a batch costs one round trip whatever
its size, and the SQL text never changes (the driver prepares it once). Each
statement also names its rows with ``id = ANY(...)``, so the planner finds them
by primary key however large the table is.

Array parameters are sent in binary. Other engines, and PostgreSQL through
another driver than psycopg 3, use the portable statements in
:mod:`jobsched._store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

from ._models import JobState, RunOutcome

if TYPE_CHECKING:
    from ._rows import Decision, JobRow
    from ._store_end import Ending
    from ._tables import Tables

# Claim: the rows' new values in, one run row per job that was won out.
_CLAIM = """
WITH v AS (
    SELECT * FROM unnest(
        %(ids)b::bigint[], %(versions)b::integer[], %(nexts)b::timestamp[],
        %(attempts)b::integer[], %(fors)b::timestamp[]
    ) AS v(id, version, next_run_at, attempt, run_for)
), won AS (
    UPDATE {jobs} AS j
    SET status = '{running}', owner = %(owner)s, lease_until = %(lease)s,
        last_run_at = %(now)s, updated_at = %(now)s, version = j.version + 1,
        next_run_at = v.next_run_at, attempt = v.attempt,
        scheduled_for = v.run_for, error = NULL
    FROM v
    WHERE j.id = ANY(%(ids)b::bigint[])
      AND j.id = v.id AND j.version = v.version AND j.status = '{scheduled}'
    RETURNING j.id, j.name, j.scheduled_for, j.attempt
)
INSERT INTO {runs} (job_id, job_name, scheduled_for, attempt, owner, started_at,
                    outcome)
SELECT id, name, scheduled_for, attempt, %(owner)s, %(now)s, '{open}'
FROM won
RETURNING job_id, id
"""

# End: each job moves on if the claim still holds it; its run row is closed
# in the same statement. A job paused while it ran becomes paused.
_END = """
WITH v AS (
    SELECT * FROM unnest(
        %(ids)b::bigint[], %(owners)b::text[], %(versions)b::integer[],
        %(statuses)b::text[], %(nexts)b::timestamp[], %(fors)b::timestamp[],
        %(attempts)b::integer[], %(outcomes)b::text[], %(missed)b::integer[],
        %(errors)b::text[], %(finished)b::timestamp[], %(run_fors)b::timestamp[],
        %(run_attempts)b::integer[], %(error_types)b::text[],
        %(messages)b::text[], %(tracebacks)b::text[]
    ) AS v(id, owner, version, status, next_run_at, scheduled_for, attempt,
           outcome, missed, error, finished_at, run_for, run_attempt,
           error_type, error_message, traceback)
), ended AS (
    UPDATE {jobs} AS j
    SET status = CASE WHEN v.status = '{scheduled}' AND j.paused
                      THEN '{paused}' ELSE v.status END,
        next_run_at = v.next_run_at, scheduled_for = v.scheduled_for,
        attempt = v.attempt, owner = NULL, lease_until = NULL,
        last_outcome = v.outcome, missed_count = j.missed_count + v.missed,
        error = v.error, version = j.version + 1, updated_at = v.finished_at
    FROM v
    WHERE j.id = ANY(%(ids)b::bigint[])
      AND j.id = v.id AND j.owner = v.owner AND j.version = v.version
      AND j.status = '{running}'
    RETURNING j.id, j.version
), recorded AS (
    UPDATE {runs} AS r
    SET outcome = v.outcome, finished_at = v.finished_at,
        error_type = v.error_type, error_message = v.error_message,
        traceback = v.traceback
    FROM v JOIN ended ON ended.id = v.id AND ended.version = v.version + 1
    WHERE r.job_id = v.id AND r.scheduled_for = v.run_for
      AND r.attempt = v.run_attempt AND r.outcome = '{open}'
)
SELECT id, version - 1 FROM ended
"""


def can_bulk(engine: Engine) -> bool:
    """Whether these statements suit the engine: PostgreSQL through psycopg 3."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def _naive(moment: datetime | None) -> datetime | None:
    """Store a time as naive UTC, as :class:`~jobsched._tables.UTCDateTime` does."""
    if moment is None:
        return None
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.replace(tzinfo=None)


class PostgresBulk:
    """The set-based statements of one store's tables."""

    def __init__(self, engine: Engine, tables: Tables) -> None:
        quote = engine.dialect.identifier_preparer.quote
        names = {
            "jobs": quote(tables.jobs.name),
            "runs": quote(tables.runs.name),
            "running": JobState.RUNNING.value,
            "scheduled": JobState.SCHEDULED.value,
            "paused": JobState.PAUSED.value,
            "open": RunOutcome.RUNNING.value,
        }
        self._claim = _CLAIM.format(**names)
        self._end = _END.format(**names)

    def claim(
        self,
        conn: Connection,
        decided: Sequence[tuple[JobRow, Decision]],
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> dict[int, int]:
        """Claim every row of ``decided`` whose version still matches.

        Returns:
            The run id of each job that was claimed, by job id.
        """
        params: dict[str, Any] = {
            "ids": [row.id for row, _ in decided],
            "versions": [row.version for row, _ in decided],
            "nexts": [_naive(d.next_run_at) for _, d in decided],
            "attempts": [d.attempt for _, d in decided],
            "fors": [_naive(d.run_for) for _, d in decided],
            "owner": owner,
            "lease": _naive(now + lease),
            "now": _naive(now),
        }
        return dict(conn.exec_driver_sql(self._claim, params).all())

    def end(self, conn: Connection, endings: Sequence[Ending]) -> set[tuple[int, int]]:
        """Write the end of every run in ``endings`` whose claim still holds.

        Returns:
            The job id and claimed version of each end this statement wrote
            (one batch can hold two ends of one job: a stale claim's and a
            later one's, of which only the later can hold).
        """
        params: dict[str, Any] = {
            "ids": [c.job_id for c, _, _ in endings],
            "owners": [c.owner for c, _, _ in endings],
            "versions": [c.version for c, _, _ in endings],
            "statuses": [d.status.value for _, _, d in endings],
            "nexts": [_naive(d.next_run_at) for _, _, d in endings],
            "fors": [_naive(d.scheduled_for) for _, _, d in endings],
            "attempts": [d.attempt for _, _, d in endings],
            "outcomes": [e.outcome.value for _, e, _ in endings],
            "missed": [d.missed_total for _, _, d in endings],
            "errors": [d.error for _, _, d in endings],
            "finished": [_naive(e.finished_at) for _, e, _ in endings],
            "run_fors": [_naive(c.scheduled_for) for c, _, _ in endings],
            "run_attempts": [c.attempt for c, _, _ in endings],
            "error_types": [e.error_type for _, e, _ in endings],
            "messages": [e.error_message for _, e, _ in endings],
            "tracebacks": [e.traceback for _, e, _ in endings],
        }
        return {
            (key, version) for key, version in conn.exec_driver_sql(self._end, params)
        }
