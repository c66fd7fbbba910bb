"""One benchmark process: a jobsched or APScheduler 3 scheduler under control.

The orchestrator (``run.py``) starts these as real OS processes and talks to
them through lines on stdin and stdout:

* the worker prints ``{"event": "ready"}`` once it is connected and set up;
* ``go`` starts the measured work (``start()``, a ``run_pending()`` loop, or
  APScheduler's ``resume()``); a worker that finishes by itself prints
  ``{"event": "done"}``;
* ``stats`` makes it print its counters; ``stop`` stops it, prints the final
  counters and exits.

Whatever happens, a worker exits by itself after ``--deadline`` seconds, so a
hung run can never outlive the benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, event, insert, select

import _jobs
from _env import NOOP, analyze, make_engine

_print_lock = threading.Lock()
# Pause of a run_pending() loop after a call that found nothing (seconds).
IDLE_PAUSE = 0.01


def emit(**message: Any) -> None:
    """Send one message to the orchestrator."""
    with _print_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


class LogCounter(logging.Handler):
    """Counts warnings and errors by message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname}: {str(record.msg)[:70]}"] += 1


_TABLE = re.compile(r"\b(?:jsbench_\w+?_[0-9a-f]{6}_|)(jobs|runs|meta)\b")


class StatementCounter:
    """Counts what an engine sends: DBAPI calls, statements, commits, rollbacks.

    An ``executemany`` is one call but one statement per parameter set (the
    driver sends them pipelined or as one multi-row statement); ``by_kind``
    counts statements.
    """

    def __init__(self, engine: Engine) -> None:
        self.kinds: Counter[str] = Counter()
        self.calls = 0
        self.commits = 0
        self.rollbacks = 0
        self.resets = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)
        event.listen(engine.pool, "reset", self._reset)

    def _statement(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        words = statement.split(None, 1)
        verb = words[0].upper() if words else "?"
        table = _TABLE.search(statement)
        self.calls += 1
        many = len(parameters) if executemany and parameters else 1
        self.kinds[f"{verb} {table.group(1) if table else '-'}"] += many

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def _rollback(self, conn: Any) -> None:
        self.rollbacks += 1

    def _reset(self, *args: Any) -> None:
        self.resets += 1

    def clear(self) -> None:
        self.kinds.clear()
        self.calls = self.commits = self.rollbacks = self.resets = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "statements": sum(self.kinds.values()),
            "calls": self.calls,
            "by_kind": dict(self.kinds),
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "pool_resets": self.resets,
        }


class Worker:
    """What every kind of worker shares: the command loop and the counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log = LogCounter()
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        logging.getLogger().addHandler(self.log)
        self.engine = make_engine(args.url, args.max_workers + 3)
        self.counter = StatementCounter(self.engine)
        self.cpu_at_go = 0.0
        self.wall_at_go = 0.0

    def setup(self) -> None:
        raise NotImplementedError

    def go(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {
            "event": "stats",
            "pid": os.getpid(),
            "executions": _jobs.executions,
            "cpu_s": time.process_time() - self.cpu_at_go,
            "wall_s": time.monotonic() - self.wall_at_go,
            "warnings": dict(self.log.counts),
            **self.counter.snapshot(),
        }

    def main(self) -> None:
        deadline = threading.Timer(self.args.deadline, self._expire)
        deadline.daemon = True
        deadline.start()
        self.setup()
        emit(event="ready", pid=os.getpid())
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                self.counter.clear()
                self.cpu_at_go = time.process_time()
                self.wall_at_go = time.monotonic()
                self.go()
            elif command == "stats":
                emit(**self.stats())
            elif command == "stop":
                self.stop()
                final = self.stats()
                final["ticks"] = _jobs.ticks
                emit(**final)
                break
        self.engine.dispose()

    def _expire(self) -> None:
        sys.stderr.write(f"worker {os.getpid()}: deadline reached, exiting\n")
        os._exit(3)


class JobschedWorker(Worker):
    """A jobsched process: ``start()`` or a ``run_pending()`` loop."""

    def setup(self) -> None:
        import jobsched

        args = self.args
        self.scheduler = jobsched.Scheduler(
            self.engine,
            table_prefix=args.prefix,
            max_workers=args.max_workers,
            batch_size=args.batch,
            create_tables=False,
        )
        self.scheduler.job(name=NOOP)(_jobs.noop)
        for index in range(args.recurring):
            name = f"tick-{index:02d}"
            self.scheduler.job(name=name, every=args.every)(_jobs.ticker(name))
        self.scheduler.jobs(limit=1)  # connects, checks the schema, syncs jobs
        self.scheduler.clock.now()  # the first read of the database clock
        self.started = False
        self.drainer: threading.Thread | None = None

    def go(self) -> None:
        if self.args.mode == "start":
            self.scheduler.start()
            self.started = True
        else:
            self.drainer = threading.Thread(target=self._drain, daemon=True)
            self.drainer.start()

    def _drain(self) -> None:
        # An empty call does not mean the backlog is gone: on SQLite (no row
        # locks) a process that loses every compare-and-set of a batch to
        # another gets nothing. The orchestrator decides when it is drained.
        try:
            while not _jobs.interrupt.is_set():
                if not self.scheduler.run_pending():
                    time.sleep(IDLE_PAUSE)
        except SystemExit:  # stopped mid-backlog by stop()
            return
        except Exception as error:
            emit(event="error", message=f"run_pending() raised {error!r}")
            raise

    def stop(self) -> None:
        if self.drainer is not None:
            _jobs.interrupt.set()
            self.drainer.join(60)
        if self.started:
            self.scheduler.stop(timeout=30)


class APSchedulerWorker(Worker):
    """An APScheduler 3 process with its SQLAlchemy job store."""

    def setup(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        args = self.args
        self.store = SQLAlchemyJobStore(engine=self.engine, tablename=args.prefix)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": self.store},
            executors={"default": ThreadPoolExecutor(args.max_workers)},
            timezone="UTC",
        )
        self.scheduler.start(paused=True)
        self.scheduler.remove_all_jobs()
        self._seed(args.count)
        _jobs.target = args.count

    def _seed(self, count: int) -> None:
        """Add ``count`` due one-off jobs, as ``add_job`` would write them."""
        table = self.store.jobs_t
        self.scheduler.add_job(
            "_jobs:noop",
            "date",
            run_date=datetime.now(timezone.utc),
            id="template",
            misfire_grace_time=None,  # never skip a late run: drain them all
        )
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == "template")).one()
        state = pickle.loads(row.job_state)
        with self.engine.begin() as conn:
            for start in range(1, count, 5000):
                rows = []
                for index in range(start, min(start + 5000, count)):
                    state["id"] = f"job-{index}"
                    rows.append(
                        {
                            "id": state["id"],
                            "next_run_time": row.next_run_time,
                            "job_state": pickle.dumps(state, pickle.HIGHEST_PROTOCOL),
                        }
                    )
                conn.execute(insert(table), rows)
        analyze(self.engine, table.name)

    def go(self) -> None:
        self.scheduler.resume()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        _jobs.reached.wait()
        emit(event="done", at=time.time())

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["jobsched", "apscheduler"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True, help="table prefix (or APS table)")
    parser.add_argument("--mode", choices=["start", "pending"], default="start")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--recurring", type=int, default=0)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="APScheduler jobs")
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    worker = (
        JobschedWorker(args) if args.kind == "jobsched" else APSchedulerWorker(args)
    )
    worker.main()


if __name__ == "__main__":
    main()
