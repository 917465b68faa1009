"""Statements of the hot path, compiled once and run on the DBAPI cursor.

SQLAlchemy's Core caches a statement's compiled form, but each ``Connection.execute`` still
costs about a hundred microseconds of Python around a lookup SQLite answers in ten: execution
contexts, event dispatch, parameter and result processing through generic machinery.  A small
GET is one such lookup and a small PUT a handful, so that overhead was a large share of a small
request's CPU.  :class:`Prepared` keeps the statement written with SQLAlchemy (one definition,
every dialect), compiles it once per dialect into SQL text, the order of its parameters and the
type processors of its binds and columns, and then runs it on the connection's DBAPI cursor.

The rules that keep it equivalent to ``conn.execute``:

- values go through the same bind and result processors SQLAlchemy would apply (taken from the
  dialect's implementation of each type, so :class:`~s3balance.db.model.Utf8Bytes` and
  :class:`~s3balance.db.model.JsonText` behave identically);
- a DBAPI error is raised as SQLAlchemy's wrapped exception (``IntegrityError``,
  ``OperationalError``...), so callers' ``except sa.exc.IntegrityError`` and the pool's retry
  rules see what they always saw; a lost connection is invalidated first, as SQLAlchemy does;
- with ``database.log_level`` at ``info`` or above, statements go through ``conn.execute`` so
  they are logged as before.

:class:`Direct` lets a function that issues exactly one read statement run on a pooled DBAPI
connection outside any SQLAlchemy transaction (:meth:`~s3balance.db.pool.DBThreadPool.
do_single_read`): one statement is its own consistent snapshot on all three databases.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import PoolProxiedConnection

from s3balance.db.driver import first_value, lastrowid, rowcount, run_on_cursor
from s3balance.db.engine import STATEMENT_LOG

__all__ = ["Direct", "Prepared"]


Processor = Callable[[Any], Any] | None
#: What can be prepared: statements whose parameters are all named or literal.
Statement = sa.Select[Any] | sa.Update | sa.Delete | sa.Insert


class Direct:
    """What :class:`Prepared` needs of a connection, over a pooled DBAPI connection with no
    SQLAlchemy ``Connection`` around it (the attributes are named as ``sa.Connection``'s)."""

    def __init__(self, connection: PoolProxiedConnection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def invalidate(self) -> None:
        self.connection.invalidate()


class _Compiled:
    """One statement compiled for one dialect."""

    def __init__(
        self,
        statement: Statement,
        dialect: Dialect,
        column_keys: tuple[str, ...] | None,
        returning_id: sa.Column[Any] | None,
    ) -> None:
        #: Where the driver has no ``lastrowid`` worth trusting (PostgreSQL), the new row's id
        #: comes back through RETURNING.
        self.returns_id = False
        if returning_id is not None and dialect.name == "postgresql":
            assert isinstance(statement, sa.Insert), "returning_id is for an INSERT"
            statement = statement.returning(returning_id)
            self.returns_id = True
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None
        )
        self.sql = compiled.string
        self.positional = compiled.positional
        names = list(compiled.positiontup or ()) if compiled.positional else list(compiled.binds)
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        self.binds: list[tuple[str, str, Processor, Any]] = []
        for name in names:
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: expanding parameters are not supported here")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            default = bind.effective_value if bind.value is not None else None
            self.binds.append((name, escaped.get(name, name), processor, default))
        columns = getattr(statement, "selected_columns", None) if not self.returns_id else None
        self.columns: list[Any] = list(columns) if columns is not None else []
        self.row_type: type[Any] | None = (
            collections.namedtuple("PreparedRow", list(columns.keys()))  # type: ignore[misc]
            if columns is not None
            else None
        )
        #: Result processors, worked out on the first execution: some depend on the type code
        #: the driver reports for the column.
        self.readers: list[Processor] | None = None

    def parameters(self, params: Mapping[str, Any]) -> Any:
        values = []
        for name, _, processor, default in self.binds:
            value = params[name] if name in params else default
            values.append(processor(value) if processor is not None else value)
        if self.positional:
            return tuple(values)
        return {key: value for (_, key, _, _), value in zip(self.binds, values, strict=True)}

    def read_rows(self, cursor: Any, dialect: Dialect) -> list[Any]:
        readers = self.readers
        if readers is None:
            types = [entry[1] for entry in cursor.description or ()]
            readers = self.readers = [
                column.type.dialect_impl(dialect).result_processor(dialect, code)
                for column, code in zip(self.columns, types, strict=True)
            ]
        make = self.row_type._make  # type: ignore[union-attr]
        if not any(readers):
            return [make(row) for row in cursor.fetchall()]
        return [
            make([v if r is None else r(v) for r, v in zip(readers, row, strict=True)])
            for row in cursor.fetchall()
        ]


class Prepared:
    """A SQLAlchemy Core statement run on the DBAPI cursor (see the module docstring).

    :param statement: its parameters must be named binds (``sa.bindparam``) or literals;
        expanding ``IN`` lists are refused when it is compiled.
    :param column_keys: for an INSERT or UPDATE without ``.values()``: the columns the
        parameters set, named after them (as ``conn.execute(table.insert(), row)`` does).
    :param returning_id: for :meth:`insert`: the primary key column whose new value it returns.
    """

    def __init__(
        self,
        statement: Statement,
        column_keys: tuple[str, ...] | None = None,
        returning_id: sa.Column[Any] | None = None,
    ) -> None:
        self.statement = statement
        self.column_keys = column_keys
        self.returning_id = returning_id
        #: By dialect, which each entry holds: while it is cached, no other engine's dialect can
        #: be given its id.
        self._by_dialect: dict[int, tuple[Dialect, _Compiled]] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        entry = self._by_dialect.get(id(dialect))
        if entry is not None and entry[0] is dialect:
            return entry[1]
        found = _Compiled(self.statement, dialect, self.column_keys, self.returning_id)
        self._by_dialect[id(dialect)] = (dialect, found)
        return found

    def rows(self, conn: sa.Connection | Direct, params: Mapping[str, Any]) -> list[Any]:
        """The rows of a SELECT, as named tuples with the statement's column keys."""
        if _logged(conn):
            return list(conn.execute(self.statement, dict(params)).all())  # type: ignore[union-attr]
        compiled, dialect = self.compiled(conn.dialect), conn.dialect
        return run_on_cursor(conn, compiled.sql, compiled.parameters(params), False,
                    lambda cursor: compiled.read_rows(cursor, dialect))  # fmt: skip

    def first(self, conn: sa.Connection | Direct, params: Mapping[str, Any]) -> Any | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None

    def scalar(self, conn: sa.Connection | Direct, params: Mapping[str, Any]) -> Any | None:
        row = self.first(conn, params)
        return None if row is None else row[0]

    def rowcount(self, conn: sa.Connection | Direct, params: Mapping[str, Any]) -> int:
        """Run an UPDATE, DELETE or INSERT; the rows it matched."""
        if _logged(conn):
            return int(conn.execute(self.statement, dict(params)).rowcount)  # type: ignore[union-attr]
        compiled = self.compiled(conn.dialect)
        return int(run_on_cursor(conn, compiled.sql, compiled.parameters(params), False, rowcount))

    def insert(self, conn: sa.Connection | Direct, params: Mapping[str, Any]) -> int:
        """Run an INSERT of one row; the new row's ``returning_id``."""
        if _logged(conn):
            result = conn.execute(self.statement, dict(params))  # type: ignore[union-attr]
            assert result.inserted_primary_key is not None
            return int(result.inserted_primary_key[0])
        compiled = self.compiled(conn.dialect)
        read = first_value if compiled.returns_id else lastrowid
        return int(run_on_cursor(conn, compiled.sql, compiled.parameters(params), False, read))

    def execute_many(self, conn: sa.Connection | Direct, rows: list[Mapping[str, Any]]) -> None:
        """Run an INSERT (or UPDATE) once per row of parameters, in one driver call."""
        if not rows:
            return
        if _logged(conn):
            conn.execute(self.statement, [dict(row) for row in rows])  # type: ignore[union-attr]
            return
        compiled = self.compiled(conn.dialect)
        arguments = [compiled.parameters(row) for row in rows]
        run_on_cursor(conn, compiled.sql, arguments, True, rowcount)


def _logged(conn: sa.Connection | Direct) -> bool:
    return isinstance(conn, sa.Connection) and STATEMENT_LOG.isEnabledFor(logging.INFO)
