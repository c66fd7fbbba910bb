"""Per-row statements sent as one statement per batch on MariaDB and SQLite.

The store writes claims, ends of runs and their history rows with per-row
compare-and-set statements. Where the engine can read a JSON batch, a whole
batch goes as one statement instead: the values of every row travel as a
single JSON array of arrays, which the database turns back into rows
(``JSON_TABLE`` on MariaDB 10.6 and later, ``json_each`` on SQLite 3.38 and
later), and one multi-table ``UPDATE`` joins the target table to those rows
and applies each row's own condition. Both forms are built from one
description of the statement (:class:`BatchedUpdate`), so they cannot drift
apart.

A batch whose document would be large (long error texts) is sent in several
statements of at most :data:`MAX_DOCUMENT` characters, in the same
transaction. Neither form says which rows it changed (MariaDB has no ``UPDATE ...
RETURNING``), so the store reads the winners back under the same fence
afterwards; a row count never decides.

Elsewhere (MySQL, older MariaDB and SQLite) the per-row statements are sent
together with ``executemany``. PostgreSQL has statements of its own
(:mod:`jobsched._pgbulk`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Connection, Engine, Text, bindparam, text
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression
from sqlalchemy.sql.operators import custom_op
from sqlalchemy.types import TypeEngine

from ._tables import UTCDateTime

T = TypeVar("T")

#: A statement built from the expressions of its parameters.
Build = Callable[["Params"], Any]

#: Each kind of batch column: how MariaDB's ``JSON_TABLE`` reads it, and its type.
_KINDS: dict[str, tuple[str, TypeEngine[Any]]] = {
    "int": ("BIGINT", BigInteger()),
    "time": ("DATETIME(6)", UTCDateTime()),
    "text": ("LONGTEXT", Text()),
}
# A time in a batch: naive UTC with microseconds, the form in which the tables
# store it on SQLite (text) and in which MariaDB reads a DATETIME(6).
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_UTC = UTCDateTime()


def can_batch(engine: Engine) -> bool:
    """Tell whether the engine reads a JSON batch: MariaDB 10.6+, SQLite 3.38+."""
    dialect = engine.dialect
    if dialect.server_version_info is None:  # learnt on the first connection
        engine.connect().close()
    version = dialect.server_version_info or ()
    if dialect.name == "sqlite":
        return version >= (3, 38)
    if dialect.name in ("mysql", "mariadb"):
        return bool(getattr(dialect, "is_mariadb", False)) and version >= (10, 6)
    return False


class Params(dict[str, ColumnElement[Any]]):
    """The SQL expression of each parameter of a statement being built.

    Args:
        values: The expression of each parameter, by name.
        steer: Whether this is SQLite's batch statement (see :meth:`unindexed`).
    """

    def __init__(
        self, values: Mapping[str, ColumnElement[Any]], *, steer: bool = False
    ) -> None:
        super().__init__(values)
        self._steer = steer

    def unindexed(self, column: ColumnElement[T]) -> ColumnElement[T]:
        """``column``, for a condition that must not choose how rows are found.

        In SQLite's batch statement, a condition on an indexed column (such as
        the status) would make the planner walk that index and, for every row
        it finds, scan the whole batch. The unary ``+`` (SQLite's documented
        way to keep a term away from the indexes) leaves it one plan: for each
        row of the batch, one look-up by primary key.
        """
        if not self._steer:
            return column
        return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


class BatchedUpdate:
    """A per-row ``UPDATE`` that can also be sent once for a whole batch.

    Args:
        build: Builds the statement from the expressions of its parameters.
        rows: The parameters that differ from row to row, each with its kind
            (``int``, ``time`` or ``text``). The first one names the row.
        key: The target table's column that the first parameter matches. On
            MariaDB the batch statement also names its rows with ``key IN
            (...)``, so that the planner finds them by that key however it
            orders the join.
        shared: The parameters that every row of a batch shares.
        dialect: The engine's dialect name, when it reads JSON batches;
            ``None`` sends the per-row statement with ``executemany``.
    """

    def __init__(
        self,
        build: Build,
        rows: Sequence[tuple[str, str]],
        key: ColumnElement[Any],
        shared: Sequence[str] = (),
        dialect: str | None = None,
    ) -> None:
        self._names = [name for name, _ in rows]
        self._times = [kind == "time" for _, kind in rows]
        self._per_row = build(
            Params({name: bindparam(name) for name in [*self._names, *shared]})
        )
        self._batched = None
        self._keyed = dialect != "sqlite"
        if dialect is not None:
            batch = _json_rows(dialect, rows)
            values: dict[str, ColumnElement[Any]] = {n: bindparam(n) for n in shared}
            values.update((name, batch.c[name]) for name in self._names)
            self._batched = build(Params(values, steer=not self._keyed))
            if self._keyed:
                keys: Any = bindparam(_KEYS, expanding=True)
                self._batched = self._batched.where(key.in_(keys))

    def execute(
        self,
        conn: Connection,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply the statement to every row of ``rows``, in one round trip if it can.

        Args:
            conn: The connection, inside the caller's transaction.
            rows: Each row's parameters (extra keys are ignored).
            shared: The parameters common to every row.
        """
        if not rows:
            return
        common = dict(shared or {})
        if self._batched is None:
            conn.execute(self._per_row, [{**row, **common} for row in rows])
            return

        # In key order, so that concurrent batches lock their rows in one order.
        first = self._names[0]
        batch = [
            [
                _stored_time(row[name]) if is_time else row[name]
                for name, is_time in zip(self._names, self._times, strict=True)
            ]
            for row in sorted(rows, key=lambda row: row[first])
        ]
        for chunk, document in _documents(batch):
            common[_BATCH] = document
            if self._keyed:
                common[_KEYS] = [values[0] for values in chunk]
            conn.execute(self._batched, common)


#: The largest JSON document sent as one batch statement, in characters: far
#: below MariaDB's default ``max_allowed_packet`` (16 MiB) even for rows whose
#: texts are as long as the tables keep them.
MAX_DOCUMENT = 1_000_000


def _documents(batch: list[list[Any]]) -> Iterator[tuple[list[list[Any]], str]]:
    """Split ``batch`` into chunks whose JSON documents stay under the limit."""
    whole = json.dumps(batch, separators=(",", ":"))
    if len(whole) <= MAX_DOCUMENT:
        yield batch, whole
        return
    chunk: list[list[Any]] = []
    parts: list[str] = []
    size = 0
    for values in batch:
        part = json.dumps(values, separators=(",", ":"))
        if chunk and size + len(part) + 1 > MAX_DOCUMENT:
            yield chunk, "[" + ",".join(parts) + "]"
            chunk, parts, size = [], [], 0
        chunk.append(values)
        parts.append(part)
        size += len(part) + 1
    yield chunk, "[" + ",".join(parts) + "]"


# The bound parameters of a JSON batch: its rows, and the keys they name.
_BATCH = "b_batch"
_KEYS = "b_keys"


def _json_rows(dialect: str, rows: Sequence[tuple[str, str]]) -> Any:
    """The rows of a JSON batch as a derived table named ``batch``."""
    if dialect == "sqlite":
        picks = ", ".join(f"value ->> {i} AS {key}" for i, (key, _) in enumerate(rows))
        sql = f"SELECT {picks} FROM json_each(:{_BATCH})"
    else:
        fields = ", ".join(
            f"{key} {_KINDS[kind][0]} PATH '$[{i}]'"
            for i, (key, kind) in enumerate(rows)
        )
        sql = f"SELECT * FROM JSON_TABLE(:{_BATCH}, '$[*]' COLUMNS ({fields})) AS t"
    return (
        text(sql)
        .bindparams(bindparam(_BATCH, type_=Text()))
        .columns(**{key: _KINDS[kind][1] for key, kind in rows})
        .subquery("batch")
    )


def _stored_time(moment: datetime | None) -> str | None:
    stored = _UTC.process_bind_param(moment, None)  # type: ignore[arg-type]
    return None if stored is None else stored.strftime(_TIME_FORMAT)
