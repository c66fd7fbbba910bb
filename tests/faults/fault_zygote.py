"""Starts helper processes for the tests by forking, past the slow imports.

Run as ``python fault_zygote.py`` (the test session starts one). It imports
everything a helper process needs (SQLAlchemy, the drivers, jobsched), then
reads lines from stdin: each is the path of a ``fault_worker`` config. For
each it forks a child that becomes that helper process (in a session of its
own, with stdout and stderr going to ``<config without .json>.out``) and
writes the child's pid to stdout. When a child ends, its exit status goes to
``<config without .json>.exit``: the number a ``subprocess`` return code would
be (negative for a signal). The zygote itself opens no connection and starts
no thread, so forking it is safe. It exits when stdin closes, killing the
helpers still running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import threading

import fault_worker  # the helper's code, and through it jobsched and SQLAlchemy
import faultjobs  # noqa: F401
import faultsql  # noqa: F401
import sqlalchemy.dialects.mysql.pymysql
import sqlalchemy.dialects.postgresql.psycopg
import sqlalchemy.dialects.sqlite.pysqlite  # noqa: F401

with contextlib.suppress(ImportError):
    import psycopg  # noqa: F401
    import pymysql  # noqa: F401


def child(config_path: str) -> None:
    """Become the helper process for ``config_path``; never returns."""
    code = 1
    try:
        os.setsid()
        base = config_path.removesuffix(".json")
        out = os.open(base + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["fault_worker.py", config_path]
        code = fault_worker.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        # What the end of a normal interpreter does, before its final exit:
        # join the non-daemon threads and run the threading exit hooks (a
        # ThreadPoolExecutor waits for its running jobs there), then atexit.
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def reap(children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        base = children.pop(pid, None)
        if base is None:
            continue
        code = (
            -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        )
        with open(base + ".exit.tmp", "w", encoding="utf-8") as handle:
            handle.write(str(code))
        os.replace(base + ".exit.tmp", base + ".exit")


def main() -> int:
    children: dict[int, str] = {}
    stdin = sys.stdin.fileno()
    buffer = b""
    try:
        while True:
            ready, _, _ = select.select([stdin], [], [], 0.01)
            reap(children)
            if not ready:
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:
                return 0
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                path = line.decode().strip()
                if not path:
                    continue
                pid = os.fork()
                if pid == 0:
                    child(path)
                children[pid] = path.removesuffix(".json")
                sys.stdout.write(f"{pid}\n")
                sys.stdout.flush()
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
