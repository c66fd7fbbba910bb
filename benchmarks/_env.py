"""The databases, the machine, and filling the jobsched tables fast.

Every scenario works on tables of its own (prefix ``jsbench_<scenario>_``), which
it drops before and after, so the benchmark never touches an application's
tables or another scenario's rows.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, insert, select, text

import jobsched

HERE = Path(__file__).resolve().parent
#: The name every benchmark job is registered under, in every process.
NOOP = "bench.noop"
#: Prefix of every table the benchmark creates.
PREFIX_ROOT = "jsbench_"

DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1/test",
    "mysql": "mysql+pymysql://root@127.0.0.1/test",
}


@dataclass(frozen=True)
class Database:
    """One database the benchmark runs on."""

    name: str  # postgresql, mysql, sqlite
    url: str

    @property
    def label(self) -> str:
        return {"postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL"}.get(
            self.name, "SQLite (file)"
        )


_TEMPORARY: list[Path] = []


def databases(names: list[str]) -> list[Database]:
    """Resolve database names to URLs (``JOBSCHED_BENCH_<NAME>_URL`` overrides).

    SQLite gets a file in a new temporary directory; :func:`cleanup` removes it.
    """
    found = []
    for name in names:
        if name == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="jsbench-"))
            _TEMPORARY.append(folder)
            url = f"sqlite:///{folder / 'bench.db'}"
        else:
            url = os.environ.get(
                f"JOBSCHED_BENCH_{name.upper()}_URL", DEFAULT_URLS[name]
            )
        found.append(Database(name, url))
    return found


def cleanup() -> None:
    """Remove the temporary SQLite directories."""
    while _TEMPORARY:
        shutil.rmtree(_TEMPORARY.pop(), ignore_errors=True)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """Create an engine sized for ``pool_size`` threads using it at once."""
    if url.startswith("sqlite"):
        # The default pysqlite settings: rollback journal, 5 s busy timeout.
        return create_engine(url, pool_size=pool_size, max_overflow=4)
    return create_engine(url, pool_size=pool_size, max_overflow=4, pool_pre_ping=False)


def new_prefix(scenario: str) -> str:
    """Return a table prefix unique to this run of ``scenario``."""
    return f"{PREFIX_ROOT}{scenario}_{uuid.uuid4().hex[:6]}_"


def fresh_tables(engine: Engine, prefix: str) -> Any:
    """Drop and create the jobsched tables with ``prefix``; return them."""
    tables = jobsched.define_tables(prefix)
    tables.metadata.drop_all(engine)
    tables.metadata.create_all(engine)
    return tables


def drop_tables(engine: Engine, prefix: str) -> None:
    """Drop the jobsched tables with ``prefix`` (errors are ignored)."""
    try:
        jobsched.define_tables(prefix).metadata.drop_all(engine)
    except Exception as error:  # a best effort at cleaning up
        print(f"  (could not drop {prefix}* tables: {error})", file=sys.stderr)


def _noop() -> None:
    """The template job's function; never called."""


def template_row(engine: Engine, prefix: str) -> dict[str, Any]:
    """Enqueue one no-op job the public way and return its row as written.

    Cloning this row (new name, same everything else) produces rows exactly as
    ``Scheduler.enqueue`` writes them, whatever columns a version of jobsched
    has. The template row stays in the table as one of the seeded jobs.
    """
    scheduler = jobsched.Scheduler(engine, table_prefix=prefix)
    scheduler.job(name=NOOP)(_noop)
    name = scheduler.enqueue(NOOP)
    jobs = scheduler.tables.jobs
    with engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.name == name)).one()
    return dict(row._mapping)


def seed(
    engine: Engine,
    prefix: str,
    count: int,
    at: datetime | None = None,
    chunk: int = 5000,
) -> None:
    """Fill the jobs table with ``count`` one-off no-op jobs.

    Args:
        engine: Where.
        prefix: The tables' prefix.
        count: How many jobs (the template job included).
        at: When they are due; when omitted, at the moment of seeding.
        chunk: Rows per INSERT statement.
    """
    jobs = jobsched.define_tables(prefix).jobs
    row = template_row(engine, prefix)
    template_id = row.pop("id")
    if at is not None:
        spec = json.loads(row["trigger"])
        spec["at"] = at.isoformat()
        row.update(
            next_run_at=at,
            trigger=json.dumps(spec, sort_keys=True, separators=(",", ":")),
        )
        with engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == template_id)
                .values(next_run_at=at, trigger=row["trigger"])
            )

    done = 1
    while done < count:
        batch = min(chunk, count - done)
        rows = [dict(row, name=f"{NOOP}@{uuid.uuid4().hex}") for _ in range(batch)]
        with engine.begin() as conn:
            conn.execute(insert(jobs), rows)
        done += batch
    analyze(engine, jobs.name)


def analyze(engine: Engine, table: str) -> None:
    """Refresh the planner's statistics of ``table``, as autovacuum would.

    Without them, PostgreSQL plans the claim query of a freshly bulk-loaded
    backlog as a bitmap scan plus an on-disk sort of every due row (tens of
    milliseconds per batch); a long-lived table has statistics.
    """
    statement = {
        "postgresql": f"ANALYZE {table}",
        "mysql": f"ANALYZE TABLE {table}",
        "mariadb": f"ANALYZE TABLE {table}",
        "sqlite": f"ANALYZE {table}",
    }.get(engine.dialect.name)
    if statement:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(statement).close()


# -- the machine --------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def server_info(db: Database) -> dict[str, Any]:
    """Return the server's version and the settings that bound commit speed."""
    if db.name == "sqlite":
        return {"version": sqlite3.sqlite_version, "journal_mode": "delete (default)"}

    engine = make_engine(db.url, 1)
    try:
        with engine.connect() as conn:
            if db.name == "postgresql":
                info = {
                    "version": conn.execute(text("show server_version")).scalar(),
                    "synchronous_commit": conn.execute(
                        text("show synchronous_commit")
                    ).scalar(),
                    "fsync": conn.execute(text("show fsync")).scalar(),
                }
            else:
                info = {
                    "version": conn.execute(text("select version()")).scalar(),
                    "innodb_flush_log_at_trx_commit": conn.execute(
                        text("select @@innodb_flush_log_at_trx_commit")
                    ).scalar(),
                }
    except Exception as error:
        return {"version": None, "error": str(error).splitlines()[0]}
    finally:
        engine.dispose()
    return info


def source_info() -> str:
    """The jobsched commit measured, and whether its source had local changes."""
    root = HERE.parent
    location = Path(jobsched.__file__).resolve().parent
    if location != root / "src" / "jobsched":
        return f"imported from {location}"
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' with uncommitted changes in src/' if changed else ''}"


def machine_info(dbs: list[Database]) -> dict[str, Any]:
    """Describe where the benchmark ran."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {
            name: _version(name)
            for name in (
                "jobsched",
                "sqlalchemy",
                "psycopg",
                "pymysql",
                "apscheduler",
                "tenacity",
            )
        },
        "source": source_info(),
        "servers": {db.name: server_info(db) for db in dbs},
        "load_average_at_start": load,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
