"""Objects: the rows that make keys visible, and the commit that switches them.

Every write has a real key of its own (see :mod:`s3balance.gateway`), so a commit never races
another writer for bytes: it only switches the object row to the new location.  Conditional writes
compare and swap there: the object row is locked (``SELECT ... FOR UPDATE``, or the unique index
when it does not exist yet) before the condition is judged, inside the commit's transaction, which
also changes the backends' usage (:func:`s3balance.db.usage.apply_usage`) and queues the locations
nothing references any more (:func:`s3balance.db.deletions.queue_deletions`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.conditions import etag_matches
from s3balance.db.base import DBComponent, may_fail
from s3balance.db.buckets import bucket_id, require_bucket
from s3balance.db.deletions import queue_deletions
from s3balance.db.errors import ObjectMissingError, PreconditionFailedError
from s3balance.db.listing import Cursor, first_cursor, prefix_upper_bound, scan
from s3balance.db.model import (
    multipart_uploads,
    object_locations,
    objects,
    pending_deletions,
    stored_acl,
    upload_copies,
    virtual_buckets,
)
from s3balance.db.prepared import Direct, Prepared
from s3balance.db.records import Location, ObjectPage, ObjectRecord
from s3balance.db.repairqueue import queue_repair
from s3balance.db.usage import UPSERT_ATTEMPTS, Deltas, apply_usage, new_deltas

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

#: ``Condition.if_none_match`` value: the key must not exist.
ANY = "*"


@dataclass(frozen=True)
class Condition:
    """What the current object must be for a commit (or delete) to go ahead.

    :param if_match: the ETag the current object must have (quotes optional); a missing object
        fails with :class:`ObjectMissingError`.
    :param if_none_match: ``"*"``: there must be no current object.
    """

    if_match: str | None = None
    if_none_match: str | None = None

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None

    def check(self, current_etag: str | None) -> None:
        """:raises PreconditionFailedError: :raises ObjectMissingError:"""
        if self.if_none_match is not None and current_etag is not None:
            raise PreconditionFailedError("If-None-Match")
        if self.if_match is not None:
            if current_etag is None:
                raise ObjectMissingError()
            if not etag_matches(self.if_match, current_etag):
                raise PreconditionFailedError("If-Match")


#: The condition of a plain write: none.
UNCONDITIONAL = Condition()


@dataclass(frozen=True)
class Replacement:
    """What a commit replaced (or a delete removed), as the caller needs it.

    :param previous_size: the replaced object's size; None when there was no object.
    :param previous_locations: where the replaced object was (for usage accounting).
    :param to_delete: replaced locations nothing references any more; each was queued in
        ``pending_deletions`` in the same transaction (``pending_ids``, same order).
    """

    previous_size: int | None
    previous_locations: tuple[Location, ...]
    to_delete: list[Location]
    pending_ids: tuple[int, ...] = ()
    #: The id of the row a commit wrote (a replacing write keeps the row's id).
    object_id: int | None = None


class ObjectsComponent(DBComponent):
    """Object rows and their locations."""

    def get_object(self, bucket: str, key: str) -> Deferred[ObjectRecord | None]:
        return self.pool.do_single_read(_get_object, bucket, key)

    def put_object(self, record: ObjectRecord) -> Deferred[list[Location]]:
        """Make ``record`` the visible object for its key, replacing any previous one.

        In one transaction: upsert the object row and its locations, add its size to its backends'
        usage and subtract the replaced object's.  Fires with the replaced object's locations that
        ``record`` does not also use: the caller deletes those bytes from their backends.
        :raises NoSuchBucketError: the bucket was deleted meanwhile.
        """
        return self.pool.do(_put_object, record)

    def commit_object(
        self,
        record: ObjectRecord,
        condition: Condition = UNCONDITIONAL,
        delete_after: float = 0.0,
        short: bool = False,
    ) -> Deferred[Replacement]:
        """:meth:`put_object` for the gateway: in the same transaction, judge ``condition``
        against the locked current row (compare and swap) and queue the replaced locations in
        ``pending_deletions`` (deletable after ``delete_after``).  A ``short`` object (stored
        with fewer copies than its bucket's ``replicas``) is queued for repair in the same
        transaction.

        :raises PreconditionFailedError: :raises ObjectMissingError: (nothing committed)
        :raises NoSuchBucketError:
        """
        return self.pool.do(_commit_object, record, condition, delete_after, short)

    def remove_object(
        self, bucket: str, key: str, condition: Condition = UNCONDITIONAL, delete_after: float = 0.0
    ) -> Deferred[Replacement]:
        """:meth:`delete_object` with the condition and queueing of :meth:`commit_object`
        (``previous_size`` is None when there was no object)."""
        return self.pool.do(_remove_object, bucket, key, condition, delete_after)

    def set_object_tags(self, bucket: str, key: str, tags: dict[str, str]) -> Deferred[bool]:
        """Replace an object's tags (an empty dict removes them); fires False when there is no
        such object."""
        return self.pool.do(_update_object, bucket, key, {"tags": dict(tags) or None})

    def set_object_acl(self, bucket: str, key: str, acl: str) -> Deferred[bool]:
        """Give an object a canned ACL; fires False when there is no such object."""
        return self.pool.do(_update_object, bucket, key, {"acl": stored_acl(acl)})

    def delete_object(self, bucket: str, key: str) -> Deferred[ObjectRecord | None]:
        """Remove the object row (usage adjusted in the same transaction); fires with what was
        removed, so the caller can delete its bytes, or None when there was nothing."""
        return self.pool.do(_delete_object, bucket, key)

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> Deferred[ObjectPage]:
        """Keys after ``start_after`` that start with ``prefix``, in UTF-8 byte order, with keys
        that contain ``delimiter`` after the prefix rolled up into common prefixes (a common prefix
        counts once towards ``max_keys``).

        A ``start_after`` inside a common prefix skips that whole prefix, so a page's
        ``next_marker`` (a key or a common prefix) is a valid ``start_after`` for the next page.
        ``max_keys`` <= 0 gives an empty, untruncated page.
        :raises NoSuchBucketError:
        """
        return self.pool.do_read(_list_objects, bucket, prefix, delimiter, start_after, max_keys)

    def locations_on(self, backend: str) -> Deferred[set[str]]:
        """Every real key that object rows, uploads and pending deletions reference on
        ``backend`` (for scrub)."""
        return self.pool.do_read(_locations_on, backend)

    def objects_on(self, backend: str) -> Deferred[dict[str, tuple[int, str]]]:
        """``real key -> (size, ETag)`` of every object row with a location on ``backend``."""
        return self.pool.do_read(_objects_on, backend)


# In a database thread, inside the pool's transaction (see s3balance.db.base).

OBJECT_COLUMNS = (
    objects.c.id,
    objects.c.key,
    objects.c.size,
    objects.c.etag,
    objects.c.last_modified,
    objects.c.headers,
    objects.c.user_metadata,
    objects.c.checksums,
    objects.c.part_sizes,
    objects.c.part_checksums,
    objects.c.tags,
    objects.c.acl,
)

#: Binds are never named after a column: that name would clash with an update's SET clause.
_IN_BUCKET = sa.and_(
    objects.c.bucket_id == sa.bindparam("owner_id"), objects.c.key == sa.bindparam("object_key")
)
#: The object and its locations in one query: one row per location (or one row without any).
_SELECT_OBJECT = (
    sa.select(
        *OBJECT_COLUMNS,
        object_locations.c.backend.label("location_backend"),
        object_locations.c.real_key.label("location_key"),
    )
    .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
    .outerjoin(object_locations, object_locations.c.object_id == objects.c.id)
    .where(
        virtual_buckets.c.name == sa.bindparam("bucket_name"),
        objects.c.key == sa.bindparam("object_key"),
    )
    .order_by(object_locations.c.position)
)
#: A GET's one statement, run the short way (see s3balance.db.prepared).
_GET_OBJECT = Prepared(_SELECT_OBJECT)
_LOCK_CURRENT = (
    sa.select(objects.c.id, objects.c.size, objects.c.etag).where(_IN_BUCKET).with_for_update()
)
_LOCK_OBJECT = sa.select(*OBJECT_COLUMNS).where(_IN_BUCKET).with_for_update()
_SELECT_LOCATIONS = (
    sa.select(object_locations.c.object_id, object_locations.c.backend, object_locations.c.real_key)
    .where(object_locations.c.object_id.in_(sa.bindparam("object_ids", expanding=True)))
    .order_by(object_locations.c.object_id, object_locations.c.position)
)
_SELECT_LOCATIONS_OF_ONE = (
    sa.select(object_locations.c.backend, object_locations.c.real_key)
    .where(object_locations.c.object_id == sa.bindparam("object_id"))
    .order_by(object_locations.c.position)
)
_UPDATE_OBJECT = objects.update().where(objects.c.id == sa.bindparam("object_id"))
_UPDATE_IN_BUCKET = objects.update().where(_IN_BUCKET)
_INSERT_OBJECT = objects.insert()
_INSERT_LOCATIONS = object_locations.insert()
_DELETE_LOCATIONS = object_locations.delete().where(
    object_locations.c.object_id == sa.bindparam("object_id")
)
_DELETE_OBJECT = objects.delete().where(objects.c.id == sa.bindparam("object_id"))

#: The columns a write sets (``write_object``'s ``values``).
_WRITTEN = (
    "size", "etag", "last_modified", "headers", "user_metadata", "checksums", "part_sizes",
    "part_checksums", "tags", "acl",
)  # fmt: skip
#: A commit's statements, run the short way (see s3balance.db.prepared).
_LOCK_CURRENT_P = Prepared(_LOCK_CURRENT)
_LOCATIONS_OF_ONE_P = Prepared(_SELECT_LOCATIONS_OF_ONE)
_UPDATE_OBJECT_P = Prepared(_UPDATE_OBJECT, column_keys=_WRITTEN)
_INSERT_OBJECT_P = Prepared(
    _INSERT_OBJECT, column_keys=("bucket_id", "key", *_WRITTEN), returning_id=objects.c.id
)
_INSERT_LOCATIONS_P = Prepared(
    _INSERT_LOCATIONS, column_keys=("object_id", "position", "backend", "real_key")
)
_DELETE_LOCATIONS_P = Prepared(_DELETE_LOCATIONS)


def object_record(row: Any, bucket: str, locations: tuple[Location, ...]) -> ObjectRecord:
    return ObjectRecord(
        bucket=bucket,
        key=row.key,
        size=row.size,
        etag=row.etag,
        last_modified=row.last_modified,
        headers=dict(row.headers),
        metadata=dict(row.user_metadata),
        checksums=dict(row.checksums),
        part_sizes=tuple(row.part_sizes),
        locations=locations,
        part_checksums=tuple(row.part_checksums or ()),
        tags=dict(row.tags or {}),
        acl=row.acl or "private",
    )


def locations_of(
    conn: sa.Connection, object_ids: Sequence[int]
) -> dict[int, tuple[Location, ...]]:
    """Each object's locations, in order."""
    found: dict[int, list[Location]] = defaultdict(list)
    if object_ids:
        rows = conn.execute(_SELECT_LOCATIONS, {"object_ids": list(object_ids)})
        for row in rows:
            found[row.object_id].append(Location(row.backend, row.real_key))
    return {object_id: tuple(found.get(object_id, ())) for object_id in object_ids}


def _locations_of_one(conn: sa.Connection, object_id: int) -> tuple[Location, ...]:
    rows = _LOCATIONS_OF_ONE_P.rows(conn, {"object_id": object_id})
    return tuple(Location(row.backend, row.real_key) for row in rows)


def _get_object(conn: sa.Connection | Direct, bucket: str, key: str) -> ObjectRecord | None:
    rows = _GET_OBJECT.rows(conn, {"bucket_name": bucket, "object_key": key})
    if not rows:
        return None
    locations = tuple(
        Location(row.location_backend, row.location_key)
        for row in rows
        if row.location_backend is not None
    )
    return object_record(rows[0], bucket, locations)


def _put_object(conn: sa.Connection, record: ObjectRecord) -> list[Location]:
    deltas = new_deltas()
    replaced = write_object(conn, record, deltas)
    apply_usage(conn, deltas)
    return replaced.to_delete


def _commit_object(
    conn: sa.Connection,
    record: ObjectRecord,
    condition: Condition,
    delete_after: float,
    short: bool = False,
) -> Replacement:
    deltas = new_deltas()
    replaced = write_object(conn, record, deltas, condition)
    apply_usage(conn, deltas)
    if short and replaced.object_id is not None:
        queue_repair(conn, replaced.object_id, record.last_modified)
    return queue_replaced(conn, replaced, delete_after)


def queue_replaced(conn: sa.Connection, replaced: Replacement, delete_after: float) -> Replacement:
    """Queue ``replaced.to_delete`` in ``pending_deletions``; the ids go into the result."""
    ids = queue_deletions(conn, replaced.to_delete, delete_after)
    return Replacement(
        replaced.previous_size, replaced.previous_locations, replaced.to_delete, ids,
        replaced.object_id,
    )  # fmt: skip


def write_object(
    conn: sa.Connection,
    record: ObjectRecord,
    deltas: Deltas,
    condition: Condition = UNCONDITIONAL,
) -> Replacement:
    """Upsert ``record``'s rows, noting usage changes in ``deltas``; returns what was replaced,
    with the replaced locations that ``record`` does not reuse as ``to_delete``.

    ``condition`` is judged against the current row once it is locked (or once the insert proved
    there is none): the compare and swap of conditional writes.
    """
    owner = require_bucket(conn, record.bucket)
    values = {
        "size": record.size,
        "etag": record.etag,
        "last_modified": record.last_modified,
        "headers": dict(record.headers),
        "user_metadata": dict(record.metadata),
        "checksums": dict(record.checksums),
        "part_sizes": list(record.part_sizes),
        "part_checksums": list(record.part_checksums) or None,
        "tags": dict(record.tags) or None,
        "acl": stored_acl(record.acl),
    }
    old_locations: tuple[Location, ...] = ()
    old_size: int | None = None
    for _ in range(UPSERT_ATTEMPTS):
        existing = _LOCK_CURRENT_P.first(conn, {"owner_id": owner, "object_key": record.key})
        if condition:
            condition.check(None if existing is None else existing.etag)
        if existing is not None:
            object_id = existing.id
            old_size = existing.size
            old_locations = _locations_of_one(conn, object_id)
            for location in old_locations:
                deltas[location.backend][0] -= existing.size
                deltas[location.backend][1] -= 1
            _UPDATE_OBJECT_P.rowcount(conn, {"object_id": object_id, **values})
            _DELETE_LOCATIONS_P.rowcount(conn, {"object_id": object_id})
            break
        try:
            with may_fail(conn):
                object_id = _INSERT_OBJECT_P.insert(
                    conn, {"bucket_id": owner, "key": record.key, **values}
                )
            break
        except sa.exc.IntegrityError:
            # Either a concurrent put inserted the key first (lock theirs on the next round)
            # or the bucket was deleted meanwhile.
            require_bucket(conn, record.bucket)
    else:
        raise RuntimeError(f"could neither insert nor lock object {record.bucket}/{record.key}")

    if record.locations:
        _INSERT_LOCATIONS_P.execute_many(
            conn,
            [
                {
                    "object_id": object_id,
                    "position": position,
                    "backend": location.backend,
                    "real_key": location.real_key,
                }
                for position, location in enumerate(record.locations)
            ],
        )
    for location in record.locations:
        deltas[location.backend][0] += record.size
        deltas[location.backend][1] += 1
    kept = set(record.locations)
    replaced: list[Location] = []
    for location in old_locations:
        if location not in kept and location not in replaced:
            replaced.append(location)
    return Replacement(old_size, old_locations, replaced, object_id=int(object_id))


def _update_object(conn: sa.Connection, bucket: str, key: str, values: dict[str, Any]) -> bool:
    """Change columns of an object's row that are not about its bytes (tags, ACL)."""
    owner = bucket_id(conn, bucket)
    if owner is None:
        return False
    parameters = {"owner_id": owner, "object_key": key, **values}
    return bool(conn.execute(_UPDATE_IN_BUCKET, parameters).rowcount)


def _delete_object(conn: sa.Connection, bucket: str, key: str) -> ObjectRecord | None:
    owner = bucket_id(conn, bucket)
    if owner is None:
        return None
    row = conn.execute(_LOCK_OBJECT, {"owner_id": owner, "object_key": key}).first()
    if row is None:
        return None
    locations = _locations_of_one(conn, row.id)
    conn.execute(_DELETE_LOCATIONS, {"object_id": row.id})
    conn.execute(_DELETE_OBJECT, {"object_id": row.id})
    deltas = new_deltas()
    for location in locations:
        deltas[location.backend][0] -= row.size
        deltas[location.backend][1] -= 1
    apply_usage(conn, deltas)
    return object_record(row, bucket, locations)


def _remove_object(
    conn: sa.Connection, bucket: str, key: str, condition: Condition, delete_after: float
) -> Replacement:
    if condition:
        owner = bucket_id(conn, bucket)
        current = None
        if owner is not None:
            current = conn.execute(_LOCK_CURRENT, {"owner_id": owner, "object_key": key}).first()
        condition.check(None if current is None else current.etag)
    removed = _delete_object(conn, bucket, key)
    if removed is None:
        return Replacement(None, (), [])
    unique = list(dict.fromkeys(removed.locations))
    return queue_replaced(conn, Replacement(removed.size, removed.locations, unique), delete_after)


def _list_objects(
    conn: sa.Connection, bucket: str, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> ObjectPage:
    owner = require_bucket(conn, bucket)
    upper = prefix_upper_bound(objects.c.key, prefix)

    def fetch(cursor: Cursor, limit: int) -> list[Any]:
        return list(
            conn.execute(
                sa.select(*OBJECT_COLUMNS)
                .where(objects.c.bucket_id == owner, cursor.condition(objects.c.key), upper)
                .order_by(objects.c.key)
                .limit(limit)
            )
        )

    def cursor_after(row: Any) -> Cursor:
        return Cursor(after_key=row.key.encode("utf-8"))

    entries, truncated = scan(
        fetch,
        cursor_after,
        prefix,
        delimiter,
        first_cursor(prefix, delimiter, start_after, ""),
        max_keys,
    )
    rows = [entry for entry in entries if not isinstance(entry, str)]
    locations = locations_of(conn, [row.id for row in rows])
    next_marker = None
    if truncated:
        last = entries[-1]
        next_marker = last if isinstance(last, str) else last.key
    return ObjectPage(
        objects=[object_record(row, bucket, locations[row.id]) for row in rows],
        common_prefixes=[entry for entry in entries if isinstance(entry, str)],
        is_truncated=truncated,
        next_marker=next_marker,
    )


def upload_keys_on(conn: sa.Connection, backend: str) -> set[str]:
    """The real keys of the multipart uploads in progress with a copy on ``backend`` (the
    upload row's own, or one of its ``upload_copies``)."""
    keys = set(
        conn.execute(
            sa.select(multipart_uploads.c.real_key).where(multipart_uploads.c.backend == backend)
        ).scalars()
    )
    keys.update(
        conn.execute(
            sa.select(multipart_uploads.c.real_key)
            .join(upload_copies, upload_copies.c.upload_ref == multipart_uploads.c.id)
            .where(upload_copies.c.backend == backend)
        ).scalars()
    )
    return keys


def _locations_on(conn: sa.Connection, backend: str) -> set[str]:
    keys = set(
        conn.execute(
            sa.select(object_locations.c.real_key).where(object_locations.c.backend == backend)
        ).scalars()
    )
    keys.update(upload_keys_on(conn, backend))
    keys.update(
        conn.execute(
            sa.select(pending_deletions.c.real_key).where(pending_deletions.c.backend == backend)
        ).scalars()
    )
    return keys


def _objects_on(conn: sa.Connection, backend: str) -> dict[str, tuple[int, str]]:
    rows = conn.execute(
        sa.select(object_locations.c.real_key, objects.c.size, objects.c.etag)
        .join(objects, objects.c.id == object_locations.c.object_id)
        .where(object_locations.c.backend == backend)
    )
    return {row.real_key: (int(row.size), row.etag) for row in rows}
