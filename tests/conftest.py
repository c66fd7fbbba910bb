"""Shared fixtures: one database fixture parametrized over every backend.

A backend's URL comes from an environment variable when set:

* ``JOBSCHED_TEST_POSTGRESQL_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1/test``)
* ``JOBSCHED_TEST_MYSQL_URL`` (e.g. ``mysql+pymysql://root@127.0.0.1/test``)

Otherwise a testcontainers container is started when Docker answers, and
otherwise the backend's tests are skipped with the reason. With
``JOBSCHED_REQUIRE_BACKENDS=1`` (CI sets it) such a skip is a failure instead.

Each test gets its own table prefix, so tests never see each other's rows, and
its tables are dropped afterwards.
"""

from __future__ import annotations

import gc
import itertools
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from jobsched import Scheduler, define_tables

BACKENDS = ("sqlite", "postgresql", "mysql")
ENV_URL = {
    "postgresql": "JOBSCHED_TEST_POSTGRESQL_URL",
    "mysql": "JOBSCHED_TEST_MYSQL_URL",
}
REQUIRE_ENV = "JOBSCHED_REQUIRE_BACKENDS"
_counter = itertools.count()


def _docker_available() -> bool:
    socket_path = "/var/run/docker.sock"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(socket_path):
        return False

    # The docker client leaves a socket open when it fails; keep that quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()
    return True


def _container_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if not _docker_available():
        return None

    if backend == "postgresql":
        from testcontainers.postgres import PostgresContainer

        container: Any = PostgresContainer("postgres:16", driver="psycopg")
    else:
        from testcontainers.mysql import MySqlContainer

        container = MySqlContainer("mariadb:11", dialect="pymysql")
    container.start()
    request.addfinalizer(container.stop)
    return str(container.get_connection_url())


def _unavailable(backend: str, why: str) -> None:
    message = f"{backend} tests need a server: {why}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Return a function giving the URL of a backend's server, started once."""
    cache: dict[str, str | None] = {}

    def url_for(backend: str) -> str:
        if backend not in cache:
            cache[backend] = os.environ.get(ENV_URL[backend]) or _container_url(
                backend, request
            )
        found = cache[backend]
        if found is None:
            _unavailable(
                backend,
                f"set {ENV_URL[backend]} or make Docker available for testcontainers",
            )
        return str(found)

    return url_for


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.external_db),
        pytest.param("mysql", id="mysql", marks=pytest.mark.external_db),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend a test runs on."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, server_url: Callable[[str], str], tmp_path: Any) -> str:
    """A database URL for this test (a fresh SQLite file, or a shared server)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return server_url(backend)


@pytest.fixture
def prefix() -> str:
    """A table prefix private to this test."""
    return f"t{next(_counter)}_{uuid.uuid4().hex[:6]}_"


@pytest.fixture
def engine(db_url: str, prefix: str) -> Iterator[Engine]:
    """An engine on this test's database; checks that no connection leaks."""
    engine = create_engine(db_url)
    yield engine

    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    define_tables(prefix).metadata.drop_all(engine)
    engine.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) left checked out"


@pytest.fixture
def make_scheduler(engine: Engine, prefix: str) -> Iterator[Callable[..., Scheduler]]:
    """Build schedulers on this test's engine and tables; stops them afterwards."""
    made: list[Scheduler] = []

    def make(**options: Any) -> Scheduler:
        options.setdefault("table_prefix", prefix)
        scheduler = Scheduler(engine, **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=5)
