"""Running SQL on a connection's DBAPI cursor, with the errors SQLAlchemy would raise.

The store's retry rules (:mod:`s3balance.db.pool`) and its insert-if-missing races catch
SQLAlchemy's exception types; SQL run on the cursor directly (:mod:`s3balance.db.prepared`, the
``BEGIN`` of an SQLite transaction) must raise those too, and invalidate a connection the driver
reports lost, as SQLAlchemy itself does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = ["CursorOwner", "execute_text", "first_value", "lastrowid", "rowcount", "run_on_cursor"]


class CursorOwner(Protocol):
    """What both ``sa.Connection`` and :class:`~s3balance.db.prepared.Direct` offer."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def connection(self) -> Any: ...

    def invalidate(self) -> None: ...


def run_on_cursor(
    conn: CursorOwner,
    sql: str,
    arguments: Any,
    many: bool,
    result: Callable[[Any], Any],
) -> Any:
    """Execute ``sql`` (``executemany`` when ``many``) and return ``result(cursor)``.

    :raises sa.exc.DBAPIError: the matching subclass, wrapping the driver's error.
    """
    dialect = conn.dialect
    dbapi_connection = conn.connection
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        if many:
            cursor.executemany(sql, arguments)
        else:
            cursor.execute(sql, arguments)
        return result(cursor)
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, dbapi_connection, cursor)
        if lost:
            conn.invalidate()
        raise sa.exc.DBAPIError.instance(
            sql,
            arguments,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from error
    finally:
        if cursor is not None:
            try:
                cursor.close()
            except dialect.loaded_dbapi.Error:
                pass  # the connection is gone; the error above says so


def execute_text(conn: CursorOwner, sql: str) -> None:
    """Run plain SQL without parameters (``BEGIN IMMEDIATE``)."""
    run_on_cursor(conn, sql, (), False, rowcount)


def rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)


def lastrowid(cursor: Any) -> int:
    return int(cursor.lastrowid)


def first_value(cursor: Any) -> Any:
    return cursor.fetchone()[0]
