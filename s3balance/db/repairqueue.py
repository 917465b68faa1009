"""Queueing an object for repair inside another component's transaction.

A write committed with fewer copies than its bucket's ``replicas`` (``write_quorum``) is put in
``repair_queue`` by the commit itself, so that repair finds it without scanning for it and a crash
right after the commit cannot forget it (see :mod:`s3balance.db.repairs`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from s3balance.db.base import may_fail
from s3balance.db.model import repair_queue
from s3balance.db.usage import UPSERT_ATTEMPTS

__all__ = ["queue_repair", "upsert"]


def queue_repair(conn: sa.Connection, object_id: int, now: float) -> None:
    """Queue ``object_id`` for repair (again, at ``now``, if it already was)."""
    upsert(conn, repair_queue, {"object_id": object_id}, {"queued_at": now})


def upsert(
    conn: sa.Connection, table: sa.Table, key: dict[str, Any], values: dict[str, Any]
) -> None:
    """Update the row with ``key`` to ``values``, inserting it when missing (a concurrent
    insert makes the update run again, against theirs)."""
    where = sa.and_(*(table.c[name] == value for name, value in key.items()))
    for _ in range(UPSERT_ATTEMPTS):
        if conn.execute(table.update().where(where).values(**values)).rowcount:
            return
        try:
            with may_fail(conn):
                conn.execute(table.insert().values(**key, **values))
            return
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could neither update nor insert {table.name} row {key}")
