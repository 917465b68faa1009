"""The SQL of an index rebuild and of an import (:mod:`s3balance.rebuild`), a store component.

A rebuild adopts what it finds on the backends into rows, next to daemons that may be writing:
each adoption is a compare and swap on the object's locations (the caller read the row, decided
that its find is newer, and the row must still be what it read), and goes through the objects
component's own upsert (:func:`~s3balance.db.objects.write_object`), so usage counters move in the
same transaction as the rows they count.  Deciding which write is newer is the caller's business:
this module only runs SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from twisted.internet.defer import Deferred

from s3balance.db.base import DBComponent
from s3balance.db.buckets import require_bucket
from s3balance.db.model import (
    backend_usage,
    multipart_parts,
    object_locations,
    objects,
    pending_deletions,
    upload_copies,
)
from s3balance.db.objects import locations_of, upload_keys_on, write_object
from s3balance.db.records import BackendUsage, Location, ObjectRecord
from s3balance.db.usage import apply_usage, new_deltas

#: ``adopted``: the row was written (new, or replacing ``replaced``); ``changed``: the row was
#: not what the caller expected (read it again and decide again).
AdoptionOutcome = Literal["adopted", "changed"]


@dataclass(frozen=True)
class Adoption:
    """What :meth:`RebuildComponent.adopt` did.

    :ivar replaced: locations the row had before and no longer has (superseded writes: their
        bytes stay where they are, for scrub to report).
    """

    outcome: AdoptionOutcome
    replaced: tuple[Location, ...] = ()


@dataclass(frozen=True)
class Reserved:
    """Real keys of one backend the index holds for something other than a visible object."""

    #: Locations queued for deletion (replaced or deleted objects): never adopted again.
    pending_deletion: set[str] = field(default_factory=set)
    #: Targets of multipart uploads in progress: a daemon will commit them, or abort them.
    uploading: set[str] = field(default_factory=set)


class RebuildComponent(DBComponent):
    """Rows written by a rebuild or an import, on the daemon's pool."""

    def adopt(
        self, record: ObjectRecord, expected: tuple[Location, ...] | None
    ) -> Deferred[Adoption]:
        """Make ``record`` the row of its key if the row is still as the caller saw it.

        :param expected: the locations of the row the caller read, None when it saw no row.
        :raises NoSuchBucketError: the virtual bucket is gone.
        """
        return self.pool.do(_adopt, record, expected)

    def reserved_on(self, backend: str) -> Deferred[Reserved]:
        return self.pool.do_read(_reserved_on, backend)

    def recompute_usage(self) -> Deferred[dict[str, BackendUsage]]:
        """Set every backend's usage to what its rows add up to (visible objects and parts of
        uploads in progress).  A read-then-write of the counters: run it only while no daemon
        writes to the database."""
        return self.pool.do(_recompute_usage)


def _adopt(
    conn: sa.Connection, record: ObjectRecord, expected: tuple[Location, ...] | None
) -> Adoption:
    # Lock the row (if any) before judging it, as a commit does.
    row = conn.execute(
        sa.select(objects.c.id)
        .where(
            objects.c.bucket_id == require_bucket(conn, record.bucket),
            objects.c.key == record.key,
        )
        .with_for_update()
    ).first()
    seen = None if row is None else locations_of(conn, [row.id])[row.id]
    if seen != expected:
        return Adoption("changed")
    deltas = new_deltas()
    replaced = write_object(conn, record, deltas)
    apply_usage(conn, deltas)
    return Adoption("adopted", tuple(replaced.to_delete))


def _reserved_on(conn: sa.Connection, backend: str) -> Reserved:
    pending = conn.execute(
        sa.select(pending_deletions.c.real_key).where(pending_deletions.c.backend == backend)
    ).scalars()
    return Reserved(set(pending), upload_keys_on(conn, backend))


def _recompute_usage(conn: sa.Connection) -> dict[str, BackendUsage]:
    totals: dict[str, list[int]] = {}
    located = conn.execute(
        sa.select(
            object_locations.c.backend,
            sa.func.coalesce(sa.func.sum(objects.c.size), 0),
            sa.func.count(),
        )
        .join(objects, objects.c.id == object_locations.c.object_id)
        .group_by(object_locations.c.backend)
    )
    for backend, size, count in located:
        totals[backend] = [int(size), int(count)]
    part_size = sa.func.coalesce(sa.func.sum(multipart_parts.c.size), 0)
    parts = conn.execute(
        sa.select(multipart_parts.c.backend, part_size).group_by(multipart_parts.c.backend)
    )
    for backend, size in parts:
        totals.setdefault(backend, [0, 0])[0] += int(size)
    # The other copies of replicated uploads count every part too.
    copies = conn.execute(
        sa.select(upload_copies.c.backend, part_size)
        .join(multipart_parts, multipart_parts.c.upload_ref == upload_copies.c.upload_ref)
        .group_by(upload_copies.c.backend)
    )
    for backend, size in copies:
        totals.setdefault(backend, [0, 0])[0] += int(size)
    known = set(conn.execute(sa.select(backend_usage.c.backend)).scalars())
    for backend in sorted(known | set(totals)):
        size, count = totals.get(backend, [0, 0])
        values = {"used_bytes": size, "object_count": count}
        if backend in known:
            conn.execute(
                backend_usage.update().where(backend_usage.c.backend == backend).values(values)
            )
        else:
            conn.execute(backend_usage.insert().values(backend=backend, **values))
    return {
        backend: BackendUsage(backend, *totals.get(backend, [0, 0]))
        for backend in sorted(known | set(totals))
    }
