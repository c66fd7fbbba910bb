"""Keeping pooled connections in the process that opened them.

A web server that forks workers after the application created its engine
(gunicorn ``--preload``) hands every worker a copy of the parent's pool, whose
connections share one socket with the parent and the siblings: used from two
processes, they interleave protocol messages and fail in odd ways. jobsched
marks each connection with the process that opened it and refuses, at checkout,
a connection opened by another process; the pool then opens a fresh one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import Engine, event, exc

logger = logging.getLogger(__name__)

# Where a pooled connection's record keeps the id of the process that opened it.
PID_KEY = "jobsched_pid"


def protect(engine: Engine) -> None:
    """Make ``engine``'s pool refuse connections opened by another process.

    Installed once per engine. Idle connections pooled before that cannot be
    traced to a process, so they are dropped without being closed (closing would
    disturb the process that really owns them), as SQLAlchemy recommends for a
    child process.
    """
    if event.contains(engine, "checkout", _checkout):
        return

    pool = engine.pool
    idle = getattr(pool, "checkedin", None)
    if callable(idle) and idle() > 0:
        engine.dispose(close=False)

    event.listen(engine, "connect", _connect)
    event.listen(engine, "checkin", _checkin)
    # First in line, so that no other listener sees a connection we refuse.
    event.listen(engine, "checkout", _checkout, insert=True)


def _connect(dbapi_connection: Any, record: Any) -> None:
    record.info[PID_KEY] = os.getpid()


def _checkin(dbapi_connection: Any, record: Any) -> None:
    # A connection checked out before protect() is marked when it comes back.
    record.info.setdefault(PID_KEY, os.getpid())


def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    opened_by = record.info.get(PID_KEY)
    if opened_by is None or opened_by == os.getpid():
        return

    # Forget it without closing it: its socket belongs to the other process.
    record.dbapi_connection = proxy.dbapi_connection = None
    logger.debug("dropped a pooled connection opened by process %s", opened_by)
    raise exc.DisconnectionError(
        f"connection opened by process {opened_by}, not by this one"
    )
