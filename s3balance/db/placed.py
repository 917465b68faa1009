"""The objects stored on one backend, a page at a time: what moving copies between backends
(rebalance) reads, in a stable order so that a pass can stop and go on where it stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from s3balance.db.base import DBComponent
from s3balance.db.model import object_locations, objects, virtual_buckets
from s3balance.db.objects import locations_of
from s3balance.db.records import PlacedObject

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["PlacedComponent"]

_ON_BACKEND = (
    sa.select(objects.c.id, virtual_buckets.c.name, objects.c.key, objects.c.size)
    .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
    .where(
        objects.c.id > sa.bindparam("after_id"),
        objects.c.id.in_(
            sa.select(object_locations.c.object_id).where(
                object_locations.c.backend == sa.bindparam("backend_name")
            )
        ),
    )
    .order_by(objects.c.id)
    .limit(sa.bindparam("page_size"))
)


class PlacedComponent(DBComponent):
    """Paging through the objects with a copy on a backend."""

    def objects_located_on(
        self, backend: str, after_id: int, limit: int
    ) -> Deferred[list[PlacedObject]]:
        """The objects with a location on ``backend`` whose row id is above ``after_id``, by row
        id, at most ``limit``, each with all its locations.  An overwritten object keeps its row
        and a new one gets a higher id, so paging by id sees each object at most once."""
        return self.pool.do_read(_objects_located_on, backend, after_id, limit)


# In a database thread, inside the pool's transaction (see s3balance.db.base).


def _objects_located_on(
    conn: sa.Connection, backend: str, after_id: int, limit: int
) -> list[PlacedObject]:
    if limit <= 0:
        return []
    rows = conn.execute(
        _ON_BACKEND, {"after_id": after_id, "backend_name": backend, "page_size": limit}
    ).all()
    locations = locations_of(conn, [int(row.id) for row in rows])
    return [
        PlacedObject(int(row.id), row.name, row.key, int(row.size), locations[int(row.id)])
        for row in rows
    ]
