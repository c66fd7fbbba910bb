"""Development sessions: ``nox -s lint typecheck tests``.

The ``tests`` session runs once per database backend. SQLite needs nothing; the
PostgreSQL and MySQL/MariaDB sessions read ``JOBSCHED_TEST_POSTGRESQL_URL`` and
``JOBSCHED_TEST_MYSQL_URL`` (or start a testcontainers server when Docker
answers, or skip with the reason).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

DATABASES = ["sqlite", "postgresql", "mysql"]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "src")


@nox.session
@nox.parametrize("db", DATABASES)
def tests(session: nox.Session, db: str) -> None:
    session.install("-e", ".[test]")
    if db == "sqlite":  # everything that needs no server
        session.run("pytest", "-m", "not slow and not external_db", *session.posargs)
    else:
        session.run(
            "pytest", "-m", "external_db and not slow", "-k", db, *session.posargs
        )


@nox.session
def slow(session: nox.Session) -> None:
    """The multi-process, fault-injection and stress tests."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (needs PostgreSQL and MariaDB; see benchmarks/)."""
    session.install("-e", ".[test]", "apscheduler>=3.11,<4")
    session.run("python", "benchmarks/run.py", *session.posargs)
