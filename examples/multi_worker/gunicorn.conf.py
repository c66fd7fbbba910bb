"""gunicorn settings for the multi-worker example: four workers, one scheduler each.

Run from the project's root:

    .venv/bin/gunicorn -c examples/multi_worker/gunicorn.conf.py

The scheduler is started in ``post_fork``, inside each worker, so that every
worker has its own engine, connections and threads; nothing of the kind is
created in the master process before the fork.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Make webapp.py importable whatever the current directory is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

wsgi_app = "webapp:application"
bind = os.environ.get("JOBSCHED_DEMO_BIND", "127.0.0.1:8000")
workers = 4
loglevel = "info"


def on_starting(server: Any) -> None:
    """In the master, before forking: create the demo's own table once."""
    import webapp

    webapp.create_demo_table()


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker: create its engine and scheduler, start polling."""
    import logging

    import webapp

    logging.basicConfig(
        level=logging.INFO,
        format=f"[worker {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    webapp.start_scheduler()


def worker_exit(server: Any, worker: Any) -> None:
    """In a worker that is shutting down: stop its scheduler cleanly."""
    import webapp

    webapp.stop_scheduler()
