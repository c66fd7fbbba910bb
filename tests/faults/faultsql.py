"""Recognising jobsched's SQL statements, for fault hooks in tests and helpers."""

from __future__ import annotations


def statement_kind(statement: str, prefix: str) -> str | None:
    """Tell which step of the run path a SQL statement is, from its text alone.

    ``claim`` (the UPDATE that takes a job: it sets ``last_run_at``), ``end``
    (an UPDATE that ends a run: it sets ``last_outcome``), ``renew`` (an
    UPDATE that sets only ``lease_until``), ``run_row`` (an INSERT into the
    run history), or ``None``. Tests recognise statements by their SQL so that
    they do not depend on how jobsched's Python code is organised.
    """
    head = " ".join(statement.split()).upper()
    jobs = f"UPDATE {prefix}jobs SET ".upper()
    if head.startswith(jobs):
        if "LAST_RUN_AT" in head:
            return "claim"
        if "LAST_OUTCOME" in head:
            return "end"
        if head.startswith(jobs + "LEASE_UNTIL") and "STATUS" not in head:
            return "renew"
        return "update"
    if head.startswith(f"INSERT INTO {prefix}runs".upper()):
        return "run_row"
    return None
