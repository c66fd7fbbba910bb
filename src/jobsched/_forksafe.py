"""Keeping pooled connections in the process that opened them.

A web server that forks workers after the application created its engine
(gunicorn ``--preload``) hands every worker a copy of the parent's pool, whose
connections share one socket with the parent and the siblings: used from two
processes, they interleave protocol messages and fail in odd ways. jobsched
marks each connection with the process that opened it and refuses, at checkout,
a connection opened by another process; the pool then opens a fresh one. The
refused connection is kept, never closed nor garbage-collected, because closing
it would end the session that the other process is still using.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import Engine, event, exc

logger = logging.getLogger(__name__)

# Where a pooled connection's record keeps the id of the process that opened it.
PID_KEY = "jobsched_pid"

# Connections refused in this process: kept so that no finalizer closes them.
_inherited: list[Any] = []
# Whether this process was forked from one that had imported jobsched.
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    _inherited.clear()  # the parent's keepsakes are not ours to keep


os.register_at_fork(after_in_child=_after_fork_in_child)


def protect(engine: Engine) -> None:
    """Make ``engine``'s pool refuse connections opened by another process.

    Installed once per engine. A connection pooled before that carries no mark:
    in a process that was forked, it is refused too (it may be the parent's);
    otherwise it is this process's own and is marked as such.
    """
    if event.contains(engine, "checkout", _checkout):
        return

    event.listen(engine, "connect", _connect)
    # First in line, so that no other listener sees a connection we refuse.
    event.listen(engine, "checkout", _checkout, insert=True)


def _connect(dbapi_connection: Any, record: Any) -> None:
    record.info[PID_KEY] = os.getpid()


def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    opened_by = record.info.get(PID_KEY)
    if opened_by == os.getpid() or (opened_by is None and not _forked):
        record.info[PID_KEY] = os.getpid()
        return

    # Forget it without closing it: its socket may belong to another process.
    _inherited.append(dbapi_connection)
    record.dbapi_connection = proxy.dbapi_connection = None
    logger.debug("refused a pooled connection opened by process %s", opened_by)
    raise exc.DisconnectionError(
        f"connection opened by process {opened_by or 'unknown'}, not by this one"
    )
