"""Starting, commanding and reaping worker processes (see ``worker.py``)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _env import HERE

WORKER = HERE / "worker.py"


class WorkerProcess:
    """One ``worker.py`` process, and the messages it has sent."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log_path = log
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=HERE,
        )
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.done_at: float | None = None
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "done":
                self.done_at = time.monotonic()
            elif message.get("event") == "error":
                self.errors.append(str(message.get("message")))
            else:
                self.messages.put(message)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for the next message of kind ``event``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"worker {self.proc.pid} sent no {event!r} in {timeout:.0f} s "
                    f"(exit code {self.proc.poll()}; see {self.log.name})"
                )
            try:
                message = self.messages.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.proc.pid} exited with {self.proc.returncode} "
                        f"before sending {event!r} ({self._last_log_line()}); "
                        f"see {self.log.name}"
                    ) from None
                continue
            if message.get("event") == event:
                return message

    def _last_log_line(self) -> str:
        """The last line written to the shared log: usually the error."""
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else "nothing in the log"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


class Fleet:
    """Several worker processes started together and commanded together."""

    def __init__(self, argvs: list[list[str]], log: Path) -> None:
        self.workers = [WorkerProcess(argv, log) for argv in argvs]

    def ready(self, timeout: float = 120.0) -> None:
        for worker in self.workers:
            worker.expect("ready", timeout)

    def go(self) -> float:
        for worker in self.workers:
            worker.send("go")
        return time.monotonic()

    def errors(self) -> list[str]:
        return [e for worker in self.workers for e in worker.errors]

    def all_done(self) -> bool:
        return all(worker.done_at is not None for worker in self.workers)

    def last_done(self) -> float:
        return max(worker.done_at or 0.0 for worker in self.workers)

    def stats(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        for worker in self.workers:
            worker.send("stats")
        return [worker.expect("stats", timeout) for worker in self.workers]

    def stop(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Stop every worker; return their final counters (``{}`` for a lost one)."""
        for worker in self.workers:
            worker.send("stop")
        finals = [self._final(worker, timeout) for worker in self.workers]
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
            worker.kill()
        return finals

    @staticmethod
    def _final(worker: WorkerProcess, timeout: float) -> dict[str, Any]:
        try:
            return worker.expect("stats", timeout)
        except (TimeoutError, RuntimeError) as error:
            print(f"  ! {error}", file=sys.stderr)
            return {}

    def _last_log_line(self) -> str:
        """The last line written to the shared log: usually the error."""
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else "nothing in the log"

    def kill(self) -> None:
        for worker in self.workers:
            worker.kill()


def merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the counters of several workers."""
    total: dict[str, Any] = {
        "executions": 0,
        "statements": 0,
        "calls": 0,
        "commits": 0,
        "rollbacks": 0,
        "pool_resets": 0,
        "cpu_s": 0.0,
        "by_kind": {},
        "warnings": {},
    }
    for one in stats:
        for key in (
            "executions",
            "statements",
            "calls",
            "commits",
            "rollbacks",
            "pool_resets",
        ):
            total[key] += one.get(key, 0)
        total["cpu_s"] += one.get("cpu_s", 0.0)
        for group in ("by_kind", "warnings"):
            for name, count in one.get(group, {}).items():
                total[group][name] = total[group].get(name, 0) + count
    return total
