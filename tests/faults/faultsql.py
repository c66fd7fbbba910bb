"""Recognising jobsched's SQL statements, for fault hooks in tests and helpers."""

from __future__ import annotations

import re


def statement_steps(statement: str, prefix: str) -> frozenset[str]:
    """Tell which steps of the run path a SQL statement takes, from its text alone.

    ``claim`` (an UPDATE that takes a job: it sets ``last_run_at``), ``end``
    (an UPDATE that ends a run: it sets ``last_outcome``), ``renew`` (an
    UPDATE that sets only ``lease_until``), ``run_row`` (an INSERT into the
    run history), ``update`` (any other UPDATE of a job). One statement may
    take several steps: on PostgreSQL a claim also opens the run rows. A
    batch's statement (one for all its rows, see ``jobsched._jsonbatch``) is
    recognised like the per-row one. Tests recognise statements by their SQL
    so that they do not depend on how jobsched's Python code is organised.
    """
    text = " ".join(statement.split()).upper()
    jobs = f"{prefix}jobs".upper()
    steps = set()
    # A batch's rows may be joined in: "UPDATE jobs, (SELECT ...) AS batch SET".
    for changes in re.findall(
        rf"UPDATE {jobs}(?: AS \w+|, \(.*?\) AS \w+)? SET (.*?)(?: WHERE|$)", text
    ):
        if "LAST_RUN_AT" in changes:
            steps.add("claim")
        elif "LAST_OUTCOME" in changes:
            steps.add("end")
        elif changes.startswith("LEASE_UNTIL") and "STATUS" not in changes:
            steps.add("renew")
        else:
            steps.add("update")
    if f"INSERT INTO {prefix}runs".upper() in text:
        steps.add("run_row")
    return frozenset(steps)
