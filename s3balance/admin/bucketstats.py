"""Object counts and bytes per virtual bucket, for the console's bucket list.

One grouped query over the object rows (the usage table counts per *real* bucket, not per virtual
one).  It reads every row's size, so it costs a scan of the objects table: fine for a page an
operator opens, not for a request path.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from s3balance.db.model import objects, virtual_buckets


@dataclass(frozen=True)
class BucketTotals:
    object_count: int
    bytes: int


def virtual_bucket_totals(conn: sa.Connection) -> dict[str, BucketTotals]:
    """``{virtual bucket name: totals}``, every virtual bucket included (empty ones as zeros)."""
    query = (
        sa.select(
            virtual_buckets.c.name,
            sa.func.count(objects.c.id),
            sa.func.coalesce(sa.func.sum(objects.c.size), 0),
        )
        .select_from(
            virtual_buckets.outerjoin(objects, objects.c.bucket_id == virtual_buckets.c.id)
        )
        .group_by(virtual_buckets.c.id, virtual_buckets.c.name)
    )
    return {
        row[0]: BucketTotals(object_count=int(row[1]), bytes=int(row[2]))
        for row in conn.execute(query)
    }
