"""The cost of one poll and one claim batch as the jobs table grows.

One jobs table per size (10 thousand, 100 thousand, a million rows), 1 % of the
rows due and the rest due over the next days, all generated inside PostgreSQL
from one row that ``Scheduler.enqueue`` wrote, then vacuumed and analysed (as
autovacuum leaves a long-lived table). A warmed-up scheduler per table then
times the poll query (``Store.next_event``) and claim batches, taking the sizes
in turn round after round, so that a change in the machine's load while the
benchmark runs falls on every size alike. The server's own execution time of
the poll query (``EXPLAIN ANALYZE``) is reported as well: it is the part that
depends on the table, without the client's overhead.
"""

from __future__ import annotations

import re
import statistics
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, event, text

import jobsched

from _env import (
    NOOP,
    Database,
    drop_tables,
    fresh_tables,
    make_engine,
    new_prefix,
    template_row,
)

POLLS = 60  # timed polls per size
SERVER_TIMINGS = 7  # EXPLAIN ANALYZE runs of the poll query per size
CLAIMS = 5  # timed claim batches per size (each takes batch_size due rows)

# The columns generated per row; every other column is copied from the template.
_GENERATED = ("id", "name", "next_run_at", "trigger")


def _naive_utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def grow(engine: Engine, prefix: str, template: dict[str, Any], first: int, last: int):
    """Insert rows ``first``..``last``: every hundredth due, the others later."""
    copied = [name for name in template if name not in _GENERATED]
    columns = ", ".join(copied)
    values = ", ".join(f":{name}" for name in copied)
    params = {name: _naive_utc(template[name]) for name in copied}
    params.update(first=first, last=last, prefix=f"{NOOP}@p")
    statement = text(
        f"""
        INSERT INTO {prefix}jobs (name, next_run_at, trigger, {columns})
        SELECT :prefix || g.n, g.at,
               jsonb_set(CAST(:trigger AS jsonb), '{{at}}',
                         to_jsonb(to_char(g.at, 'YYYY-MM-DD"T"HH24:MI:SS.US')
                                  || '+00:00'))::text,
               {values}
        FROM (
            SELECT n, CASE WHEN n % 100 = 0
                THEN (now() AT TIME ZONE 'UTC') - interval '1 hour'
                     + n * interval '1 microsecond'
                ELSE (now() AT TIME ZONE 'UTC') + interval '1 day'
                     + n * interval '100 milliseconds'
                END AS at
            FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS n
        ) AS g
        """
    )
    with engine.begin() as conn:
        conn.execute(statement, {**params, "trigger": template["trigger"]})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {prefix}jobs"))


class Capture:
    """Keeps the last statements an engine sent, to EXPLAIN them afterwards."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._keep)

    def _keep(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any):
        self.seen.append((statement, params))

    def find(self, *needles: str) -> tuple[str, Any] | None:
        for statement, params in reversed(self.seen):
            if all(needle in statement for needle in needles):
                return statement, params
        return None


def _explain(engine: Engine, found: tuple[str, Any] | None) -> str | None:
    if found is None:
        return None
    statement, params = found
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, params
        ).all()
        conn.rollback()  # the claim's SELECT ... FOR UPDATE locked rows
    return "\n".join(line for (line,) in plan)


def _server_ms(plan: str | None) -> float | None:
    found = re.search(r"Execution Time: ([\d.]+) ms", plan or "")
    return float(found.group(1)) if found else None


class Sized:
    """One table of a given size and the scheduler polling it."""

    def __init__(self, engine: Engine, size: int, batch: int) -> None:
        self.size = size
        self.prefix = new_prefix("poll")
        fresh_tables(engine, self.prefix)
        started = time.monotonic()
        try:
            grow(engine, self.prefix, template_row(engine, self.prefix), 2, size)
        except BaseException:
            drop_tables(engine, self.prefix)
            raise
        self.seed_s = time.monotonic() - started
        self.scheduler = jobsched.Scheduler(
            engine, table_prefix=self.prefix, batch_size=batch, create_tables=False
        )
        self.scheduler.job(name=NOOP)(lambda: None)
        self.scheduler.jobs(limit=1)
        self.polls: list[float] = []
        self.claims: list[float] = []
        self.server: list[float] = []
        self.claimed = 0

    def poll(self) -> None:
        started = time.perf_counter()
        self.scheduler.store.next_event([NOOP])
        self.polls.append((time.perf_counter() - started) * 1000)

    def claim(self, batch: int) -> None:
        now = self.scheduler.clock.now()
        started = time.perf_counter()
        got = self.scheduler._claim(now, batch)
        self.claims.append((time.perf_counter() - started) * 1000)
        self.claimed += len(got)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.size,
            "due": self.size // 100,
            "seed_s": round(self.seed_s, 1),
            "poll_ms_median": round(statistics.median(self.polls), 3),
            "poll_ms_min": round(min(self.polls), 3),
            "poll_server_ms_median": (
                round(statistics.median(self.server), 3) if self.server else None
            ),
            "claim_ms_median": round(statistics.median(self.claims), 3),
            "claimed_per_batch": self.claimed / len(self.claims),
        }


def poll_cost(db: Database, sizes: list[int], batch: int) -> dict[str, Any]:
    """Time the poll query and a claim batch at each table size."""
    engine = make_engine(db.url, 3)
    capture = Capture(engine)
    tables: list[Sized] = []
    try:
        tables.extend(Sized(engine, size, batch) for size in sizes)
        for table in tables:
            for _ in range(3):  # warm the statement caches and the pool
                table.poll()
            table.polls.clear()
        for _ in range(POLLS):
            for table in tables:
                table.poll()
        for _ in range(SERVER_TIMINGS):
            for table in tables:
                table.scheduler.store.next_event([NOOP])
                plan = _explain(engine, capture.find("min(", table.prefix))
                if (ms := _server_ms(plan)) is not None:
                    table.server.append(ms)
        for _ in range(CLAIMS):
            for table in tables:
                table.claim(batch)

        largest = tables[-1]
        largest.scheduler.store.next_event([NOOP])
        poll_plan = _explain(engine, capture.find("min(", largest.prefix))
        largest.scheduler._claim(largest.scheduler.clock.now(), batch)
        claim_plan = _explain(engine, capture.find("FOR UPDATE", largest.prefix))
        found = [table.summary() for table in tables]
        first, last = found[0], found[-1]
        return {
            "database": db.name,
            "batch_size": batch,
            "sizes": found,
            "poll_plan": poll_plan,
            "claim_plan": claim_plan,
            "poll_ratio": round(last["poll_ms_median"] / first["poll_ms_median"], 2),
            "poll_server_ratio": (
                round(last["poll_server_ms_median"] / first["poll_server_ms_median"], 2)
                if first["poll_server_ms_median"] and last["poll_server_ms_median"]
                else None
            ),
            "claim_ratio": round(last["claim_ms_median"] / first["claim_ms_median"], 2),
        }
    finally:
        for table in tables:
            drop_tables(engine, table.prefix)
        engine.dispose()
