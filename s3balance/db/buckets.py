"""Virtual buckets: the rows clients' bucket names map to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.errors import BucketNotEmptyError, NoSuchBucketError
from s3balance.db.model import multipart_uploads, objects, stored_acl, virtual_buckets
from s3balance.db.prepared import Direct, Prepared
from s3balance.db.records import BucketRecord, BucketTotals

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class BucketsComponent(DBComponent):
    """Creating, reading, changing and deleting virtual buckets."""

    def create_bucket(
        self, name: str, now: float, from_config: bool = False, acl: str = "private"
    ) -> Deferred[bool]:
        """Create a virtual bucket; fires False (and changes nothing) when it exists already."""
        return self.pool.do(_create_bucket, name, now, from_config, acl)

    def set_bucket_acl(self, name: str, acl: str) -> Deferred[bool]:
        """Give a bucket a canned ACL; fires False when there is no such bucket."""
        return self.pool.do(_set_bucket_acl, name, acl)

    def set_bucket_tags(self, name: str, tags: dict[str, str] | None) -> Deferred[bool]:
        """Replace a bucket's tag set (``None`` removes it); fires False when there is no such
        bucket."""
        return self.pool.do(_set_bucket_tags, name, tags)

    def get_bucket(self, name: str) -> Deferred[BucketRecord | None]:
        return self.pool.do_single_read(_get_bucket, name)

    def list_buckets(self) -> Deferred[list[BucketRecord]]:
        """All virtual buckets, by name."""
        return self.pool.do_read(_list_buckets)

    def delete_bucket(self, name: str) -> Deferred[None]:
        """:raises BucketNotEmptyError: objects or uploads remain. :raises NoSuchBucketError:"""
        return self.pool.do(_delete_bucket, name)

    def bucket_totals(self) -> Deferred[dict[str, BucketTotals]]:
        """``{virtual bucket name: totals}``, every bucket included (empty ones as zeros).

        One grouped query over the object rows (usage rows count per *real* bucket): a scan of
        the objects table, fine for a page an operator opens, not for a request path.
        """
        return self.pool.do_read(_bucket_totals)


# In a database thread, inside the pool's transaction (see s3balance.db.base).

#: Not "name": a bind named after a column would clash with the SET clause of an update.
_BY_NAME = virtual_buckets.c.name == sa.bindparam("bucket_name")
_SELECT_ID = sa.select(virtual_buckets.c.id).where(_BY_NAME)
_LOCK_ID = _SELECT_ID.with_for_update()
_SELECT_BUCKET = sa.select(virtual_buckets).where(_BY_NAME)
_SELECT_BUCKETS = sa.select(virtual_buckets)
#: Asked before each PUT's body is read, and in each commit (see s3balance.db.prepared).
_GET_BUCKET = Prepared(_SELECT_BUCKET)
_SELECT_ID_P = Prepared(_SELECT_ID)
_LOCK_ID_P = Prepared(_LOCK_ID)
_UPDATE_BUCKET = virtual_buckets.update().where(_BY_NAME)


def bucket_id(conn: sa.Connection, name: str, lock: bool = False) -> int | None:
    """The bucket's row id (locked against deletion when ``lock``), or None."""
    found = (_LOCK_ID_P if lock else _SELECT_ID_P).scalar(conn, {"bucket_name": name})
    return None if found is None else int(found)


def require_bucket(conn: sa.Connection, name: str) -> int:
    """:raises NoSuchBucketError:"""
    found = bucket_id(conn, name)
    if found is None:
        raise NoSuchBucketError(name)
    return found


def _create_bucket(
    conn: sa.Connection, name: str, now: float, from_config: bool, acl: str = "private"
) -> bool:
    if bucket_id(conn, name) is not None:
        return False
    try:
        with may_fail(conn):
            conn.execute(
                virtual_buckets.insert().values(
                    name=name, created_at=now, from_config=from_config, acl=stored_acl(acl)
                )
            )
    except sa.exc.IntegrityError:
        return False  # created concurrently
    return True


def _bucket_record(row: Any) -> BucketRecord:
    return BucketRecord(
        name=row.name,
        created_at=row.created_at,
        from_config=bool(row.from_config),
        acl=row.acl or "private",
        tags=None if row.tags is None else dict(row.tags),
    )


def _get_bucket(conn: sa.Connection | Direct, name: str) -> BucketRecord | None:
    row = _GET_BUCKET.first(conn, {"bucket_name": name})
    return None if row is None else _bucket_record(row)


def _list_buckets(conn: sa.Connection) -> list[BucketRecord]:
    # Sorted here: the databases' text collations do not all sort by code point.
    records = [_bucket_record(row) for row in conn.execute(_SELECT_BUCKETS)]
    return sorted(records, key=lambda record: record.name)


def _set_bucket_acl(conn: sa.Connection, name: str, acl: str) -> bool:
    values = {"bucket_name": name, "acl": stored_acl(acl)}
    return bool(conn.execute(_UPDATE_BUCKET, values).rowcount)


def _set_bucket_tags(conn: sa.Connection, name: str, tags: dict[str, str] | None) -> bool:
    values = {"bucket_name": name, "tags": None if tags is None else dict(tags)}
    return bool(conn.execute(_UPDATE_BUCKET, values).rowcount)


def _delete_bucket(conn: sa.Connection, name: str) -> None:
    found = bucket_id(conn, name, lock=True)
    if found is None:
        raise NoSuchBucketError(name)
    for table in (objects, multipart_uploads):
        used = conn.execute(
            sa.select(table.c.id).where(table.c.bucket_id == found).limit(1)
        ).first()
        if used is not None:
            raise BucketNotEmptyError(name)
    try:
        with may_fail(conn):
            conn.execute(virtual_buckets.delete().where(virtual_buckets.c.id == found))
    except sa.exc.IntegrityError as error:
        # An object or upload was added since the check: the foreign key refused the delete.
        raise BucketNotEmptyError(name) from error


_TOTALS = (
    sa.select(
        virtual_buckets.c.name,
        sa.func.count(objects.c.id),
        sa.func.coalesce(sa.func.sum(objects.c.size), 0),
    )
    .select_from(virtual_buckets.outerjoin(objects, objects.c.bucket_id == virtual_buckets.c.id))
    .group_by(virtual_buckets.c.id, virtual_buckets.c.name)
)


def _bucket_totals(conn: sa.Connection) -> dict[str, BucketTotals]:
    return {
        row[0]: BucketTotals(object_count=int(row[1]), bytes=int(row[2]))
        for row in conn.execute(_TOTALS)
    }
