"""A helper process for the fault-injection tests: one application process.

Run as ``python fault_worker.py CONFIG.json``. It builds an engine and a
:class:`jobsched.Scheduler` on the test's tables, registers the jobs the config
lists (bodies from :mod:`faultjobs`), then polls with ``start()`` until it
receives SIGTERM or SIGINT, or until ``run_for`` seconds have passed; either
way it calls ``scheduler.stop(timeout=stop_timeout)`` and exits 0.

Config keys (JSON object):

* ``url``, ``prefix``: the database and table prefix.
* ``app_name``: PostgreSQL ``application_name`` of its connections.
* ``lease``, ``poll``, ``max_workers``: scheduler settings.
* ``jobs``: list of ``{"name", "body", "args", "kwargs", "schedule",
  "options"}``; ``schedule`` is ``{"every": s}``, ``{"at": iso}`` or
  ``{"cron": expr}``; ``options`` are :meth:`Scheduler.job` options, plus
  ``retry_wait_fixed`` (seconds) for a tenacity ``wait_fixed``.
* ``log``: its log file. It logs ``OWNER <token>``, ``CONN <id>`` for every
  database connection it opens, ``STARTED`` and ``EXITING``.
* ``go``: a path to wait for before starting the scheduler (imports and
  registration are done by then, so it starts at once).
* ``start_at``: a ``time.time()`` value to wait for before starting.
* ``run_for``: seconds to run before stopping by itself.
* ``stop_timeout``: passed to ``stop()``.
* ``fork``: start this many application processes, forked from this one
  once the imports are done (see :func:`launch`).
* ``patches``: fault hooks: ``"no_renew"`` (the lease keeper renews
  nothing) and ``"exit_after_claim"`` (the process ends with ``os._exit`` as
  soon as a claim has committed, before the job's body starts).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from typing import Any

import faultjobs
from faultsql import statement_steps
from sqlalchemy import create_engine, event
from tenacity import wait_fixed

from jobsched import Scheduler
from jobsched._worker import LeaseKeeper

EXIT_AFTER_CLAIM_CODE = 17


def engine_for(config: dict[str, Any]) -> Any:
    """Build the engine, logging the server-side id of every connection."""
    url: str = config["url"]
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql") and config.get("app_name"):
        connect_args["application_name"] = config["app_name"]
    engine = create_engine(url, connect_args=connect_args)
    log = logging.getLogger("fault_worker")

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "thread_id"):  # pymysql
            log.info("CONN %s", dbapi_connection.thread_id())
        elif hasattr(dbapi_connection, "info"):  # psycopg
            log.info("CONN %s", dbapi_connection.info.backend_pid)

    if "exit_after_claim" in config.get("patches", []):
        exit_after_claim(engine, config["prefix"])
    return engine


def exit_after_claim(engine: Any, prefix: str) -> None:
    """End the process as soon as a claim's transaction has committed.

    The claim is recognised by its SQL; once the connection that ran it goes
    back to the pool (after the COMMIT), the process exits at once, before
    the job's body can start.
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _mark(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "claim" in statement_steps(statement, prefix):
            conn.info["claimed"] = True

    @event.listens_for(engine, "checkin")
    def _exit(_dbapi_connection: Any, record: Any) -> None:
        if record.info.pop("claimed", False):
            logging.getLogger("fault_worker").info("EXIT_AFTER_CLAIM")
            logging.shutdown()
            os._exit(EXIT_AFTER_CLAIM_CODE)


def apply_patches(patches: list[str]) -> None:
    if "no_renew" in patches:
        # The lease keeper renews nothing (the negative control of case B13).
        assert hasattr(LeaseKeeper, "_renew"), "LeaseKeeper._renew is gone"
        LeaseKeeper._renew = lambda self, claims: None  # type: ignore[method-assign]


def register(scheduler: Scheduler, job: dict[str, Any]) -> None:
    options = dict(job.get("options", {}))
    fixed = options.pop("retry_wait_fixed", None)
    if fixed is not None:
        options["retry_wait"] = wait_fixed(fixed)
    if "retry_on" in options:
        options["retry_on"] = tuple(getattr(builtins, n) for n in options["retry_on"])
    schedule = dict(job.get("schedule", {}))
    if "at" in schedule:
        schedule["at"] = datetime.fromisoformat(schedule["at"])
    scheduler.register(
        getattr(faultjobs, job.get("body", "body")),
        name=job["name"],
        args=job.get("args", []),
        kwargs=job.get("kwargs", {}),
        **schedule,
        **options,
    )


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("fork"):
        return launch(config)
    return run(config)


def launch(config: dict[str, Any]) -> int:
    """Fork ``config["fork"]`` application processes, already past the imports.

    Starting many interpreters costs seconds of CPU in imports alone; forking
    them from one that has imported everything (but opened no connection)
    costs nothing. Child ``i`` logs to ``<log without .log>-<i>.log``. SIGTERM
    is passed on to every child; the exit code is 0 when every child's is.
    """
    children = []
    base = config["log"].removesuffix(".log")
    for index in range(config["fork"]):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run({**config, "fork": 0, "log": f"{base}-{index}.log"})
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    statuses = [os.waitpid(child, 0)[1] for child in children]
    return 0 if all(status == 0 for status in statuses) else 1


def run(config: dict[str, Any]) -> int:
    """Be one application process; see the module docstring."""
    logging.basicConfig(
        filename=config["log"],
        level=logging.DEBUG if config.get("debug") else logging.INFO,
        format="%(created).3f %(process)d %(threadName)s %(levelname)s %(name)s "
        "%(message)s",
    )
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    log = logging.getLogger("fault_worker")

    apply_patches(config.get("patches", []))
    engine = engine_for(config)
    scheduler = Scheduler(
        engine,
        table_prefix=config["prefix"],
        lease=config.get("lease", 1.0),
        poll_interval=config.get("poll", 0.1),
        max_workers=config.get("max_workers", 4),
    )
    for job in config.get("jobs", []):
        register(scheduler, job)
    log.info("OWNER %s", scheduler.owner)
    stop_timeout = config.get("stop_timeout", 10.0)
    stopping = False

    def on_sigterm(signum: int, _frame: Any) -> None:
        # What a host application does: stop the scheduler from the handler.
        nonlocal stopping
        log.info("SIGNAL %d", signum)
        stopping = True
        scheduler.stop(timeout=stop_timeout)
        log.info("STOPPED")

    signal.signal(signal.SIGTERM, on_sigterm)

    go = config.get("go")
    while go and not os.path.exists(go) and not stopping:
        time.sleep(0.01)
    start_at = config.get("start_at")
    if start_at:
        time.sleep(max(start_at - time.time(), 0.0))

    if stopping:
        return 0
    scheduler.start()
    log.info("STARTED")
    deadline = time.monotonic() + config.get("run_for", 3600.0)
    try:
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.02)
            # (running first: SIGTERM may stop the scheduler between the two)
            if not scheduler.running and not stopping:
                log.error("SCHEDULER THREAD DIED")
                return 3
    except KeyboardInterrupt:  # SIGINT, as Ctrl-C delivers it
        log.info("SIGNAL %d", signal.SIGINT)
        stopping = True
        scheduler.stop(timeout=stop_timeout)
        log.info("STOPPED")

    if not stopping:
        scheduler.stop(timeout=stop_timeout)
        log.info("STOPPED")
    log.info("EXITING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
