"""What every part of the store shares: the pool its calls run on.

Like buildbot's ``DBConnectorComponent``: each area of the schema (buckets, objects, multipart
uploads, pending deletions, usage) is a component class whose methods hand one function to the
pool and return its Deferred.  Those functions (``_name(conn, ...)``, module level in each
component's module) run in a database thread inside the pool's transaction, materialise rows into
:mod:`s3balance.db.records` before returning, and do nothing but SQL, since the pool reruns them
after a transient failure.  Functions other components call inside the same transaction are
public (no underscore).

Statements are built once, at import, with ``bindparam`` placeholders where values vary:
SQLAlchemy then reuses their cache keys and compiled forms instead of building and compiling a
statement on every call.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from s3balance.db.pool import DBPool


class DBComponent:
    """One area of the store over the shared pool (see the module docstring)."""

    def __init__(self, pool: DBPool) -> None:
        self.pool = pool


def may_fail(conn: sa.Connection) -> AbstractContextManager[Any]:
    """Around a statement whose constraint error the caller catches to go on in the same
    transaction (insert-if-missing races, a foreign key refusing a delete).

    PostgreSQL aborts the whole transaction on any failed statement, so there the statement runs
    in a savepoint; SQLite and InnoDB undo only the failed statement and the transaction goes on,
    so elsewhere a savepoint would only cost two more statements.
    """
    if conn.dialect.name == "postgresql":
        return conn.begin_nested()
    return contextlib.nullcontext()
