"""Pending deletions: bytes no row references any more, queued until they may go.

A commit or delete that unreferences a location queues it here in its own transaction
(:func:`queue_deletions`), so the deletion survives a crash; the gateway's sweeper deletes the
bytes once ``delete_after`` has passed and then forgets the row.  A row with a
``backend_upload_id`` is a backend's multipart upload no row references any more (a copy of a
replicated upload, :func:`queue_upload_aborts`): the sweeper aborts it instead of deleting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from s3balance.db.base import DBComponent
from s3balance.db.model import pending_deletions
from s3balance.db.prepared import Prepared
from s3balance.db.records import Location, UploadCopy

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class PendingDeletion:
    """A location queued for deletion (row id, where, and when it may go)."""

    id: int
    location: Location
    delete_after: float
    #: A backend upload at the location to abort, instead of deleting the key (a copy of a
    #: replicated multipart upload that no row references any more); None for plain bytes.
    backend_upload_id: str | None = None


class DeletionsComponent(DBComponent):
    """Queueing, reading and forgetting deletions."""

    def due_deletions(self, now: float, limit: int = 1000) -> Deferred[list[PendingDeletion]]:
        """Queued deletions whose time has come, oldest first."""
        return self.pool.do_read(_due_deletions, now, limit)

    def queue_deletions(
        self, locations: Sequence[Location], delete_after: float
    ) -> Deferred[tuple[int, ...]]:
        """Queue bytes no row references (the copies of a replicated write that did not
        complete) for deletion after ``delete_after``; fires with their queue ids, in order."""
        return self.pool.do(queue_deletions, list(locations), delete_after)

    def forget_deletions(self, ids: Sequence[int]) -> Deferred[None]:
        """Drop queued deletions (their bytes are gone)."""
        return self.pool.do(_forget_deletions, list(ids))


# In a database thread, inside the pool's transaction (see s3balance.db.base).

_INSERT = pending_deletions.insert()
_INSERT_P = Prepared(
    _INSERT,
    column_keys=("backend", "real_key", "delete_after"),
    returning_id=pending_deletions.c.id,
)
_SELECT_DUE = (
    sa.select(pending_deletions)
    .where(pending_deletions.c.delete_after <= sa.bindparam("now"))
    .order_by(pending_deletions.c.delete_after, pending_deletions.c.id)
    .limit(sa.bindparam("limit"))
)
#: Rows a forget statement names at most, and the list lengths it is prepared for: a batch is
#: padded to the next one by repeating its last id (SQL's IN ignores the repeats).
_FORGET_SIZES = (1, 4, 16, 64)
_FORGET = {
    size: Prepared(
        pending_deletions.delete().where(
            pending_deletions.c.id.in_([sa.bindparam(f"id{n}") for n in range(size)])
        )
    )
    for size in _FORGET_SIZES
}


def queue_deletions(
    conn: sa.Connection, locations: Sequence[Location], delete_after: float
) -> tuple[int, ...]:
    """Queue ``locations`` for deletion after ``delete_after``; returns their row ids, in
    order."""
    ids = []
    for location in locations:
        values = {
            "backend": location.backend,
            "real_key": location.real_key,
            "delete_after": delete_after,
        }
        ids.append(_INSERT_P.insert(conn, values))
    return tuple(ids)


def queue_upload_aborts(
    conn: sa.Connection, real_key: str, copies: Sequence[UploadCopy], delete_after: float
) -> list[PendingDeletion]:
    """Queue the backend uploads ``copies`` at ``real_key`` to be aborted after
    ``delete_after``."""
    queued = []
    for copy in copies:
        result = conn.execute(
            _INSERT,
            {
                "backend": copy.backend,
                "real_key": real_key,
                "delete_after": delete_after,
                "backend_upload_id": copy.backend_upload_id,
            },
        )
        assert result.inserted_primary_key is not None
        queued.append(
            PendingDeletion(
                int(result.inserted_primary_key[0]), Location(copy.backend, real_key),
                delete_after, copy.backend_upload_id,
            )
        )
    return queued


def _due_deletions(conn: sa.Connection, now: float, limit: int) -> list[PendingDeletion]:
    rows = conn.execute(_SELECT_DUE, {"now": now, "limit": limit})
    return [
        PendingDeletion(
            int(row.id), Location(row.backend, row.real_key), row.delete_after,
            row.backend_upload_id,
        )
        for row in rows
    ]


def _forget_deletions(conn: sa.Connection, ids: list[int]) -> None:
    # Prepared statements of fixed length (an expanding IN list goes through SQLAlchemy's
    # execute, about a hundred microseconds a call): a small PUT that replaced an object ends
    # with forgetting the old bytes' row.
    largest = _FORGET_SIZES[-1]
    for start in range(0, len(ids), largest):
        chunk = ids[start : start + largest]
        size = next(size for size in _FORGET_SIZES if size >= len(chunk))
        last = len(chunk) - 1
        _FORGET[size].rowcount(conn, {f"id{n}": chunk[min(n, last)] for n in range(size)})
