"""Counters: bytes and objects per backend, class A/B operations per backend and month.

Several daemons may share the database, so no counter is read to be written back: each changes
with ``UPDATE ... SET n = n + :delta`` (:func:`add_to_row`), inserting the row first when missing
and falling back to the update when a concurrent insert won.  Usage rows change in the transaction
of the rows they count (:func:`apply_usage`, called by the object and multipart components), always
in backend-name order, so two transactions never wait on each other's usage rows in opposite
orders (a deadlock).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.model import backend_usage, operation_counters
from s3balance.db.prepared import Prepared
from s3balance.db.records import BackendUsage, OperationCounts

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

#: Attempts at "lock the existing row, or insert it" before giving up (each failed insert means a
#: concurrent transaction inserted the row, which the next attempt then finds and locks).
UPSERT_ATTEMPTS = 5

#: Usage changes a transaction collects before :func:`apply_usage`: backend -> [bytes, objects].
Deltas = dict[str, list[int]]


class UsageComponent(DBComponent):
    """Used bytes per backend, and operation counts per backend and month."""

    def usage(self) -> Deferred[dict[str, BackendUsage]]:
        """Used bytes and object counts per backend name."""
        return self.pool.do_read(_usage)

    def count_operations(
        self,
        backend: str,
        month: str,
        class_a: int = 0,
        class_b: int = 0,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> Deferred[None]:
        """Add to a backend's counters for ``month`` (``"YYYY-MM"``), atomically in SQL so several
        daemons sharing the database never lose an increment."""
        return self.pool.do(
            _count_operations, backend, month, class_a, class_b, bytes_in, bytes_out
        )

    def operation_counts(self, month: str) -> Deferred[dict[str, OperationCounts]]:
        """Every backend's counters for ``month``."""
        return self.pool.do_read(_operation_counts, month)

    def operation_history(
        self, backend: str | None = None, first_month: str = "", last_month: str = "9999-12"
    ) -> Deferred[list[OperationCounts]]:
        """Counters of ``backend`` (or all) for months in [first_month, last_month], ordered by
        month then backend."""
        return self.pool.do_read(_operation_history, backend, first_month, last_month)


# In a database thread, inside the pool's transaction (see s3balance.db.base).


def new_deltas() -> Deltas:
    return defaultdict(lambda: [0, 0])


@functools.cache
def _increment(
    table: sa.Table, key_names: tuple[str, ...], names: tuple[str, ...]
) -> tuple[Prepared, Prepared]:
    """``UPDATE table SET c = c + :c ... WHERE key = :key_k ...`` and the insert of a whole row,
    built once per table and set of columns (run the short way: s3balance.db.prepared)."""
    condition = sa.and_(*(table.c[name] == sa.bindparam(f"key_{name}") for name in key_names))
    update = (
        table.update()
        .where(condition)
        .values({name: table.c[name] + sa.bindparam(f"add_{name}") for name in names})
    )
    every_column = tuple(column.name for column in table.columns)
    return Prepared(update), Prepared(table.insert(), column_keys=every_column)


def add_to_row(
    conn: sa.Connection, table: sa.Table, key: dict[str, Any], increments: dict[str, int]
) -> None:
    """``UPDATE table SET c = c + n WHERE key``, inserting the row (other counters 0) when missing.

    If a concurrent transaction inserted the same row first, the insert fails with a key
    violation (undone alone: :func:`~s3balance.db.base.may_fail`) and the update is run again,
    against their row.
    """
    if not any(increments.values()):
        return
    update, insert = _increment(table, tuple(key), tuple(increments))
    parameters = {f"key_{name}": value for name, value in key.items()}
    parameters.update({f"add_{name}": amount for name, amount in increments.items()})
    row = {column.name: 0 for column in table.columns if column.name not in key}
    row.update(key)
    row.update(increments)
    for _ in range(UPSERT_ATTEMPTS):
        if update.rowcount(conn, parameters):
            return
        try:
            with may_fail(conn):
                insert.rowcount(conn, row)
            return
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could neither update nor insert {table.name} row {key}")


def apply_usage(conn: sa.Connection, deltas: Deltas) -> None:
    """Add ``deltas`` to the backends' usage rows, in backend-name order."""
    for backend in sorted(deltas):
        size, count = deltas[backend]
        add_to_row(
            conn, backend_usage, {"backend": backend}, {"used_bytes": size, "object_count": count}
        )


_SELECT_USAGE = sa.select(backend_usage)
_SELECT_MONTH = sa.select(operation_counters).where(
    operation_counters.c.month == sa.bindparam("month")
)


def _usage(conn: sa.Connection) -> dict[str, BackendUsage]:
    return {
        row.backend: BackendUsage(row.backend, row.used_bytes, row.object_count)
        for row in conn.execute(_SELECT_USAGE)
    }


def _count_operations(
    conn: sa.Connection,
    backend: str,
    month: str,
    class_a: int,
    class_b: int,
    bytes_in: int,
    bytes_out: int,
) -> None:
    add_to_row(
        conn,
        operation_counters,
        {"backend": backend, "month": month},
        {"class_a": class_a, "class_b": class_b, "bytes_in": bytes_in, "bytes_out": bytes_out},
    )


def _counts_record(row: Any) -> OperationCounts:
    return OperationCounts(
        row.backend, row.month, row.class_a, row.class_b, row.bytes_in, row.bytes_out
    )


def _operation_counts(conn: sa.Connection, month: str) -> dict[str, OperationCounts]:
    return {
        row.backend: _counts_record(row) for row in conn.execute(_SELECT_MONTH, {"month": month})
    }


def _operation_history(
    conn: sa.Connection, backend: str | None, first_month: str, last_month: str
) -> list[OperationCounts]:
    query = sa.select(operation_counters).where(
        operation_counters.c.month >= first_month, operation_counters.c.month <= last_month
    )
    if backend is not None:
        query = query.where(operation_counters.c.backend == backend)
    records = [_counts_record(row) for row in conn.execute(query)]
    return sorted(records, key=lambda record: (record.month, record.backend))
