"""The metadata store: where object metadata is written and read.

Every method runs its SQL on the database's dedicated thread pool (:mod:`s3balance.db.pool`), with
a connection per call, and fires with plain records from :mod:`s3balance.db.records`.  Usage
counters of each backend change in the same transaction as the rows they count, so used bytes can
never drift from the objects and parts that exist.

Several daemons may share one PostgreSQL or MariaDB database, so nothing here reads a value to
write it back: counters change with ``UPDATE ... SET n = n + :delta`` (inserting the row first when
missing, and falling back to the update when a concurrent insert won), and an object being
replaced or deleted is locked with ``SELECT ... FOR UPDATE`` before its old size is subtracted.
Usage rows are always updated in backend-name order, so two transactions never wait on each other's
usage rows in opposite orders (a deadlock).

Every write has a real key of its own (see :mod:`s3balance.gateway`), so a commit never races
another writer for bytes: it only switches the object row to the new location.  Conditional
writes compare and swap there: the object row is locked (``SELECT ... FOR UPDATE``, or the
unique index when it does not exist yet) before the condition is judged, inside the commit's
transaction.  Locations a commit or a delete unreferenced are queued in ``pending_deletions`` in
the same transaction, so their deletion survives a crash.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db import model
from s3balance.db.model import (
    backend_usage,
    completed_uploads,
    multipart_parts,
    multipart_uploads,
    object_locations,
    objects,
    operation_counters,
    pending_deletions,
    virtual_buckets,
)
from s3balance.db.records import (
    BackendUsage,
    BucketRecord,
    Location,
    ObjectPage,
    ObjectRecord,
    OperationCounts,
    PartRecord,
    UploadPage,
    UploadRecord,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from s3balance.db.pool import DBPool

#: Rows read per listing query at most.
LIST_BATCH = 1000

#: Attempts at "lock the existing row, or insert it" before giving up (each failed insert means a
#: concurrent transaction inserted the row, which the next attempt then finds and locks).
_UPSERT_ATTEMPTS = 5


class BucketNotEmptyError(Exception):
    """DeleteBucket on a bucket that still has objects or uploads in progress."""


class NoSuchBucketError(Exception):
    """The named virtual bucket does not exist."""


class PreconditionFailedError(Exception):
    """A conditional write or delete found the object not as the condition required; nothing
    was changed."""


class ObjectMissingError(Exception):
    """An ``If-Match`` write or delete found no object; nothing was changed."""


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
            if not _etags_match(self.if_match, current_etag):
                raise PreconditionFailedError("If-Match")


#: The condition of a plain write: none.
UNCONDITIONAL = Condition()


def _etags_match(header: str, etag: str) -> bool:
    wanted = etag.strip().strip('"')
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or (candidate and candidate.strip('"') == wanted):
            return True
    return False


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


@dataclass(frozen=True)
class PendingDeletion:
    """A location queued for deletion (row id, where, and when it may go)."""

    id: int
    location: Location
    delete_after: float


@dataclass(frozen=True)
class CompletedUpload:
    """The result of a completed multipart upload, kept for repeated completions."""

    upload_id: str
    bucket: str
    key: str
    etag: str
    size: int
    completed_at: float
    checksums: dict[str, str]


class MetadataStore:
    """Object, upload, usage and counter rows, behind Deferred-returning methods."""

    def __init__(self, pool: DBPool) -> None:
        self.pool = pool

    # -- virtual buckets -------------------------------------------------------------------

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
        return self.pool.do_read(_get_bucket, name)

    def list_buckets(self) -> Deferred[list[BucketRecord]]:
        """All virtual buckets, by name."""
        return self.pool.do_read(_list_buckets)

    def delete_bucket(self, name: str) -> Deferred[None]:
        """:raises BucketNotEmptyError: objects or uploads remain. :raises NoSuchBucketError:"""
        return self.pool.do(_delete_bucket, name)

    # -- objects ---------------------------------------------------------------------------

    def get_object(self, bucket: str, key: str) -> Deferred[ObjectRecord | None]:
        return self.pool.do_read(_get_object, bucket, key)

    def put_object(self, record: ObjectRecord) -> Deferred[list[Location]]:
        """Make ``record`` the visible object for its key, replacing any previous one.

        In one transaction: upsert the object row and its locations, add its size to its backends'
        usage and subtract the replaced object's.  Fires with the replaced object's locations that
        ``record`` does not also use: the caller deletes those bytes from their backends.
        :raises NoSuchBucketError: the bucket was deleted meanwhile.
        """
        return self.pool.do(_put_object, record)

    def commit_object(
        self, record: ObjectRecord, condition: Condition = UNCONDITIONAL, delete_after: float = 0.0
    ) -> Deferred[Replacement]:
        """:meth:`put_object` for the gateway: in the same transaction, judge ``condition``
        against the locked current row (compare and swap) and queue the replaced locations in
        ``pending_deletions`` (deletable after ``delete_after``).

        :raises PreconditionFailedError: :raises ObjectMissingError: (nothing committed)
        :raises NoSuchBucketError:
        """
        return self.pool.do(_commit_object, record, condition, delete_after)

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
        return self.pool.do(_update_object, bucket, key, {"acl": _stored_acl(acl)})

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

    # -- pending deletions -----------------------------------------------------------------

    def due_deletions(self, now: float, limit: int = 1000) -> Deferred[list[PendingDeletion]]:
        """Queued deletions whose time has come, oldest first."""
        return self.pool.do_read(_due_deletions, now, limit)

    def queue_deletions(
        self, locations: Sequence[Location], delete_after: float
    ) -> Deferred[tuple[int, ...]]:
        """Queue bytes no row references (copies of a write that did not complete) for
        deletion after ``delete_after``; fires with their queue ids, in order."""
        return self.pool.do(_queue_locations, list(locations), delete_after)

    def forget_deletions(self, ids: Sequence[int]) -> Deferred[None]:
        """Drop queued deletions (their bytes are gone)."""
        return self.pool.do(_forget_deletions, list(ids))

    # -- usage -----------------------------------------------------------------------------

    def usage(self) -> Deferred[dict[str, BackendUsage]]:
        """Used bytes and object counts per backend name."""
        return self.pool.do_read(_usage)

    # -- multipart uploads -----------------------------------------------------------------

    def create_upload(self, upload: UploadRecord) -> Deferred[None]:
        """:raises NoSuchBucketError:"""
        return self.pool.do(_create_upload, upload)

    def get_upload(self, upload_id: str) -> Deferred[UploadRecord | None]:
        return self.pool.do_read(_get_upload, upload_id)

    def put_part(self, part: PartRecord, backend: str) -> Deferred[None]:
        """Record (or replace) a part; the backend's used bytes grow by the size difference.
        :raises KeyError: the upload no longer exists (aborted or completed meanwhile)."""
        return self.pool.do(_put_part, part, backend)

    def list_parts(
        self, upload_id: str, part_number_marker: int = 0, max_parts: int = 1000
    ) -> Deferred[list[PartRecord]]:
        """Parts after ``part_number_marker``, ascending, at most ``max_parts`` (+1 is not added:
        ask for one more to learn whether the listing is truncated).  Empty for an unknown
        upload."""
        return self.pool.do_read(_list_parts, upload_id, part_number_marker, max_parts)

    def complete_upload(self, upload_id: str, record: ObjectRecord) -> Deferred[list[Location]]:
        """In one transaction: drop the upload and its parts (releasing their usage) and
        :meth:`put_object` ``record``.  Fires with the replaced object's locations to delete.
        :raises KeyError: the upload no longer exists."""
        return self.pool.do(_complete_upload, upload_id, record)

    def finish_upload(
        self,
        upload_id: str,
        record: ObjectRecord,
        condition: Condition = UNCONDITIONAL,
        delete_after: float = 0.0,
    ) -> Deferred[Replacement]:
        """:meth:`complete_upload` with the condition and queueing of :meth:`commit_object`,
        keeping the result for a repeated completion (:meth:`completed_upload`).
        :raises KeyError: :raises NoSuchBucketError: :raises PreconditionFailedError:
        :raises ObjectMissingError:"""
        return self.pool.do(_finish_upload, upload_id, record, condition, delete_after)

    def completed_upload(self, upload_id: str) -> Deferred[CompletedUpload | None]:
        """The kept result of a completed upload, or None."""
        return self.pool.do_read(_completed_upload, upload_id)

    def forget_completed_uploads(self, before: float) -> Deferred[int]:
        """Drop results of uploads completed before ``before``; fires with how many."""
        return self.pool.do(_forget_completed_uploads, before)

    def abort_upload(self, upload_id: str) -> Deferred[UploadRecord | None]:
        """Drop the upload and its parts (releasing their usage); fires with what was dropped."""
        return self.pool.do(_abort_upload, upload_id)

    def list_uploads(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        key_marker: str = "",
        upload_id_marker: str = "",
        max_uploads: int = 1000,
    ) -> Deferred[UploadPage]:
        """Uploads in (key, upload id) byte order, after ``key_marker`` (or, with
        ``upload_id_marker``, after that upload of ``key_marker``), with the same prefix and
        delimiter rules as :meth:`list_objects`.
        :raises NoSuchBucketError:
        """
        return self.pool.do_read(
            _list_uploads, bucket, prefix, delimiter, key_marker, upload_id_marker, max_uploads
        )

    def uploads_initiated_before(self, when: float) -> Deferred[list[UploadRecord]]:
        """Uploads of every bucket initiated before ``when``, oldest first."""
        return self.pool.do_read(_uploads_initiated_before, when)

    # -- operation counters ----------------------------------------------------------------

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


# The functions below run in a database thread, inside the transaction the pool opened.

# -- shared helpers --------------------------------------------------------------------------

_Deltas = dict[str, list[int]]  # backend -> [bytes, objects]


def _new_deltas() -> _Deltas:
    return defaultdict(lambda: [0, 0])


def _add_to_row(
    conn: sa.Connection, table: sa.Table, key: dict[str, Any], increments: dict[str, int]
) -> None:
    """``UPDATE table SET c = c + n WHERE key``, inserting the row (other counters 0) when missing.

    The insert runs in a savepoint: if a concurrent transaction inserted the same row first, it
    fails with a key violation and the update is run again, against their row.
    """
    if not any(increments.values()):
        return
    condition = sa.and_(*(table.c[name] == value for name, value in key.items()))
    update = (
        table.update()
        .where(condition)
        .values({name: table.c[name] + amount for name, amount in increments.items()})
    )
    row = {column.name: 0 for column in table.columns if column.name not in key}
    row.update(key)
    row.update(increments)
    for _ in range(_UPSERT_ATTEMPTS):
        if conn.execute(update).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(row))
            return
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could neither update nor insert {table.name} row {key}")


def _apply_usage(conn: sa.Connection, deltas: _Deltas) -> None:
    for backend in sorted(deltas):
        size, count = deltas[backend]
        _add_to_row(
            conn, backend_usage, {"backend": backend}, {"used_bytes": size, "object_count": count}
        )


def _bucket_id(conn: sa.Connection, name: str, lock: bool = False) -> int | None:
    query = sa.select(virtual_buckets.c.id).where(virtual_buckets.c.name == name)
    if lock:
        query = query.with_for_update()
    return conn.execute(query).scalar()


def _require_bucket(conn: sa.Connection, name: str) -> int:
    bucket_id = _bucket_id(conn, name)
    if bucket_id is None:
        raise NoSuchBucketError(name)
    return bucket_id


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None when
    there is none: the prefix is empty or all 0xFF)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _locations_of(
    conn: sa.Connection, object_ids: Sequence[int]
) -> dict[int, tuple[Location, ...]]:
    found: dict[int, list[Location]] = defaultdict(list)
    if object_ids:
        rows = conn.execute(
            sa.select(
                object_locations.c.object_id,
                object_locations.c.backend,
                object_locations.c.real_key,
            )
            .where(object_locations.c.object_id.in_(list(object_ids)))
            .order_by(object_locations.c.object_id, object_locations.c.position)
        )
        for row in rows:
            found[row.object_id].append(Location(row.backend, row.real_key))
    return {object_id: tuple(found.get(object_id, ())) for object_id in object_ids}


def _object_record(row: Any, bucket: str, locations: tuple[Location, ...]) -> ObjectRecord:
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


_OBJECT_COLUMNS = (
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


def _upload_record(row: Any, bucket: str) -> UploadRecord:
    return UploadRecord(
        upload_id=row.upload_id,
        bucket=bucket,
        key=row.key,
        backend=row.backend,
        real_key=row.real_key,
        backend_upload_id=row.backend_upload_id,
        initiated=row.initiated,
        headers=dict(row.headers),
        metadata=dict(row.user_metadata),
        checksum_algorithm=row.checksum_algorithm,
        checksum_type=row.checksum_type,
        tags=dict(row.tags or {}),
        acl=row.acl or "private",
    )


_UPLOAD_COLUMNS = (
    multipart_uploads.c.id,
    multipart_uploads.c.upload_id,
    multipart_uploads.c.key,
    multipart_uploads.c.backend,
    multipart_uploads.c.real_key,
    multipart_uploads.c.backend_upload_id,
    multipart_uploads.c.initiated,
    multipart_uploads.c.headers,
    multipart_uploads.c.user_metadata,
    multipart_uploads.c.checksum_algorithm,
    multipart_uploads.c.checksum_type,
    multipart_uploads.c.tags,
    multipart_uploads.c.acl,
)


# -- buckets ---------------------------------------------------------------------------------


def _create_bucket(
    conn: sa.Connection, name: str, now: float, from_config: bool, acl: str = "private"
) -> bool:
    if _bucket_id(conn, name) is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(
                virtual_buckets.insert().values(
                    name=name, created_at=now, from_config=from_config, acl=_stored_acl(acl)
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


def _get_bucket(conn: sa.Connection, name: str) -> BucketRecord | None:
    row = conn.execute(sa.select(virtual_buckets).where(virtual_buckets.c.name == name)).first()
    return None if row is None else _bucket_record(row)


def _list_buckets(conn: sa.Connection) -> list[BucketRecord]:
    # Sorted here: the databases' text collations do not all sort by code point.
    records = [_bucket_record(row) for row in conn.execute(sa.select(virtual_buckets))]
    return sorted(records, key=lambda record: record.name)


def _stored_acl(acl: str) -> str | None:
    """The ``acl`` column's value: NULL for the default, ``private``."""
    return None if acl == "private" else acl


def _set_bucket_acl(conn: sa.Connection, name: str, acl: str) -> bool:
    updated = conn.execute(
        virtual_buckets.update()
        .where(virtual_buckets.c.name == name)
        .values(acl=_stored_acl(acl))
    ).rowcount
    return bool(updated)


def _set_bucket_tags(conn: sa.Connection, name: str, tags: dict[str, str] | None) -> bool:
    updated = conn.execute(
        virtual_buckets.update()
        .where(virtual_buckets.c.name == name)
        .values(tags=None if tags is None else dict(tags))
    ).rowcount
    return bool(updated)


def _update_object(conn: sa.Connection, bucket: str, key: str, values: dict[str, Any]) -> bool:
    """Change columns of an object's row that are not about its bytes (tags, ACL)."""
    bucket_id = _bucket_id(conn, bucket)
    if bucket_id is None:
        return False
    updated = conn.execute(
        objects.update()
        .where(objects.c.bucket_id == bucket_id, objects.c.key == key)
        .values(values)
    ).rowcount
    return bool(updated)


def _delete_bucket(conn: sa.Connection, name: str) -> None:
    bucket_id = _bucket_id(conn, name, lock=True)
    if bucket_id is None:
        raise NoSuchBucketError(name)
    for table in (objects, multipart_uploads):
        used = conn.execute(
            sa.select(table.c.id).where(table.c.bucket_id == bucket_id).limit(1)
        ).first()
        if used is not None:
            raise BucketNotEmptyError(name)
    try:
        with conn.begin_nested():
            conn.execute(virtual_buckets.delete().where(virtual_buckets.c.id == bucket_id))
    except sa.exc.IntegrityError as error:
        # An object or upload was added since the check: the foreign key refused the delete.
        raise BucketNotEmptyError(name) from error


# -- objects ---------------------------------------------------------------------------------


def _get_object(conn: sa.Connection, bucket: str, key: str) -> ObjectRecord | None:
    row = conn.execute(
        sa.select(*_OBJECT_COLUMNS)
        .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
        .where(virtual_buckets.c.name == bucket, objects.c.key == key)
    ).first()
    if row is None:
        return None
    return _object_record(row, bucket, _locations_of(conn, [row.id])[row.id])


def _put_object(conn: sa.Connection, record: ObjectRecord) -> list[Location]:
    deltas = _new_deltas()
    replaced = _write_object(conn, record, deltas)
    _apply_usage(conn, deltas)
    return replaced.to_delete


def _commit_object(
    conn: sa.Connection, record: ObjectRecord, condition: Condition, delete_after: float
) -> Replacement:
    deltas = _new_deltas()
    replaced = _write_object(conn, record, deltas, condition)
    _apply_usage(conn, deltas)
    return _queue_deletions(conn, replaced, delete_after)


def _queue_deletions(
    conn: sa.Connection, replaced: Replacement, delete_after: float
) -> Replacement:
    """Insert ``replaced.to_delete`` into ``pending_deletions``; the ids go into the result."""
    ids = _queue_locations(conn, replaced.to_delete, delete_after)
    return Replacement(
        replaced.previous_size, replaced.previous_locations, replaced.to_delete, ids
    )


def _queue_locations(
    conn: sa.Connection, locations: Sequence[Location], delete_after: float
) -> tuple[int, ...]:
    ids = []
    for location in locations:
        result = conn.execute(
            pending_deletions.insert().values(
                backend=location.backend, real_key=location.real_key, delete_after=delete_after
            )
        )
        assert result.inserted_primary_key is not None
        ids.append(int(result.inserted_primary_key[0]))
    return tuple(ids)


def _write_object(
    conn: sa.Connection,
    record: ObjectRecord,
    deltas: _Deltas,
    condition: Condition = UNCONDITIONAL,
) -> Replacement:
    """Upsert ``record``'s rows, noting usage changes in ``deltas``; returns what was replaced,
    with the replaced locations that ``record`` does not reuse as ``to_delete``.

    ``condition`` is judged against the current row once it is locked (or once the insert proved
    there is none): the compare and swap of conditional writes.
    """
    bucket_id = _require_bucket(conn, record.bucket)
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
        "acl": _stored_acl(record.acl),
    }
    old_locations: tuple[Location, ...] = ()
    old_size: int | None = None
    for _ in range(_UPSERT_ATTEMPTS):
        existing = conn.execute(
            sa.select(objects.c.id, objects.c.size, objects.c.etag)
            .where(objects.c.bucket_id == bucket_id, objects.c.key == record.key)
            .with_for_update()
        ).first()
        if condition:
            condition.check(None if existing is None else existing.etag)
        if existing is not None:
            object_id = existing.id
            old_size = existing.size
            old_locations = _locations_of(conn, [object_id])[object_id]
            for location in old_locations:
                deltas[location.backend][0] -= existing.size
                deltas[location.backend][1] -= 1
            conn.execute(objects.update().where(objects.c.id == object_id).values(values))
            conn.execute(object_locations.delete().where(object_locations.c.object_id == object_id))
            break
        try:
            with conn.begin_nested():
                result = conn.execute(
                    objects.insert().values(bucket_id=bucket_id, key=record.key, **values)
                )
            assert result.inserted_primary_key is not None
            object_id = result.inserted_primary_key[0]
            break
        except sa.exc.IntegrityError:
            # Either a concurrent put inserted the key first (lock theirs on the next round)
            # or the bucket was deleted meanwhile.
            _require_bucket(conn, record.bucket)
    else:
        raise RuntimeError(f"could neither insert nor lock object {record.bucket}/{record.key}")

    if record.locations:
        conn.execute(
            object_locations.insert(),
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
    return Replacement(old_size, old_locations, replaced)


def _delete_object(conn: sa.Connection, bucket: str, key: str) -> ObjectRecord | None:
    bucket_id = _bucket_id(conn, bucket)
    if bucket_id is None:
        return None
    row = conn.execute(
        sa.select(*_OBJECT_COLUMNS)
        .where(objects.c.bucket_id == bucket_id, objects.c.key == key)
        .with_for_update()
    ).first()
    if row is None:
        return None
    locations = _locations_of(conn, [row.id])[row.id]
    conn.execute(object_locations.delete().where(object_locations.c.object_id == row.id))
    conn.execute(objects.delete().where(objects.c.id == row.id))
    deltas = _new_deltas()
    for location in locations:
        deltas[location.backend][0] -= row.size
        deltas[location.backend][1] -= 1
    _apply_usage(conn, deltas)
    return _object_record(row, bucket, locations)


def _remove_object(
    conn: sa.Connection, bucket: str, key: str, condition: Condition, delete_after: float
) -> Replacement:
    if condition:
        bucket_id = _bucket_id(conn, bucket)
        current = None
        if bucket_id is not None:
            current = conn.execute(
                sa.select(objects.c.etag)
                .where(objects.c.bucket_id == bucket_id, objects.c.key == key)
                .with_for_update()
            ).first()
        condition.check(None if current is None else current.etag)
    removed = _delete_object(conn, bucket, key)
    if removed is None:
        return Replacement(None, (), [])
    unique = list(dict.fromkeys(removed.locations))
    return _queue_deletions(
        conn, Replacement(removed.size, removed.locations, unique), delete_after
    )


# -- listings --------------------------------------------------------------------------------

# A listing position: rows strictly after ``after`` (a key, or a (key, upload id) pair), or from
# ``start`` (inclusive bytes), whichever is later.


class _Cursor:
    __slots__ = ("start", "after_key", "after_upload_id")

    def __init__(
        self,
        start: bytes = b"",
        after_key: bytes | None = None,
        after_upload_id: bytes | None = None,
    ) -> None:
        self.start = start
        self.after_key = after_key
        self.after_upload_id = after_upload_id

    def condition(self, key_column: Any, upload_id_column: Any = None) -> Any:
        start = key_column >= self.start
        if self.after_key is None or self.after_key < self.start:
            return start
        if self.after_upload_id is None or upload_id_column is None:
            return key_column > self.after_key
        return sa.or_(
            key_column > self.after_key,
            sa.and_(key_column == self.after_key, upload_id_column > self.after_upload_id),
        )


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    index = key.find(delimiter, len(prefix))
    if index < 0:
        return None
    return key[: index + len(delimiter)]


def _first_cursor(prefix: str, delimiter: str, marker: str, marker_upload_id: str) -> _Cursor:
    start = prefix.encode("utf-8")
    marker_prefix = _common_prefix(marker, prefix, delimiter) if marker.startswith(prefix) else None
    if marker_prefix is not None:
        # The marker is inside a common prefix, which the previous page returned: skip it all.
        skip_to = _successor(marker_prefix.encode("utf-8"))
        assert skip_to is not None  # it ends with the delimiter, never 0xFF bytes
        return _Cursor(start=max(start, skip_to))
    if not marker:
        return _Cursor(start=start)
    return _Cursor(
        start=start,
        after_key=marker.encode("utf-8"),
        after_upload_id=marker_upload_id.encode("utf-8") if marker_upload_id else None,
    )


def _scan(
    fetch: Callable[[_Cursor, int], list[Any]],
    cursor_after: Callable[[Any], _Cursor],
    prefix: str,
    delimiter: str,
    cursor: _Cursor,
    limit: int,
) -> tuple[list[Any], bool]:
    """Walk rows in order, rolling keys up into common prefixes (``str`` entries).

    Each query asks for what the page still needs plus one (to learn truncation).  After a common
    prefix, the next query seeks past every key under it instead of reading them, and each query
    yields at least one new entry, so a page takes at most ``limit + 2`` queries.

    :returns: the entries (rows and common prefixes) and whether more follow.
    """
    entries: list[Any] = []
    if limit <= 0:
        return entries, False
    while True:
        wanted = min(limit - len(entries) + 1, LIST_BATCH)
        rows = fetch(cursor, wanted)
        open_prefix: str | None = None
        last_row = None
        for row in rows:
            last_row = row
            if open_prefix is not None and row.key.startswith(open_prefix):
                continue
            if len(entries) == limit:
                return entries, True
            open_prefix = _common_prefix(row.key, prefix, delimiter)
            entries.append(open_prefix if open_prefix is not None else row)
        if len(rows) < wanted:
            return entries, False
        if open_prefix is not None:
            skip_to = _successor(open_prefix.encode("utf-8"))
            assert skip_to is not None
            cursor = _Cursor(start=skip_to)
        else:
            cursor = cursor_after(last_row)


def _prefix_upper_bound(key_column: Any, prefix: str) -> Any:
    upper = _successor(prefix.encode("utf-8"))
    return sa.true() if upper is None else key_column < upper


def _list_objects(
    conn: sa.Connection, bucket: str, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> ObjectPage:
    bucket_id = _require_bucket(conn, bucket)
    upper = _prefix_upper_bound(objects.c.key, prefix)

    def fetch(cursor: _Cursor, limit: int) -> list[Any]:
        return list(
            conn.execute(
                sa.select(*_OBJECT_COLUMNS)
                .where(objects.c.bucket_id == bucket_id, cursor.condition(objects.c.key), upper)
                .order_by(objects.c.key)
                .limit(limit)
            )
        )

    def cursor_after(row: Any) -> _Cursor:
        return _Cursor(after_key=row.key.encode("utf-8"))

    entries, truncated = _scan(
        fetch,
        cursor_after,
        prefix,
        delimiter,
        _first_cursor(prefix, delimiter, start_after, ""),
        max_keys,
    )
    rows = [entry for entry in entries if not isinstance(entry, str)]
    locations = _locations_of(conn, [row.id for row in rows])
    next_marker = None
    if truncated:
        last = entries[-1]
        next_marker = last if isinstance(last, str) else last.key
    return ObjectPage(
        objects=[_object_record(row, bucket, locations[row.id]) for row in rows],
        common_prefixes=[entry for entry in entries if isinstance(entry, str)],
        is_truncated=truncated,
        next_marker=next_marker,
    )


def _locations_on(conn: sa.Connection, backend: str) -> set[str]:
    keys = set(
        conn.execute(
            sa.select(object_locations.c.real_key).where(object_locations.c.backend == backend)
        ).scalars()
    )
    keys.update(
        conn.execute(
            sa.select(multipart_uploads.c.real_key).where(multipart_uploads.c.backend == backend)
        ).scalars()
    )
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


# -- pending deletions -----------------------------------------------------------------------


def _due_deletions(conn: sa.Connection, now: float, limit: int) -> list[PendingDeletion]:
    rows = conn.execute(
        sa.select(pending_deletions)
        .where(pending_deletions.c.delete_after <= now)
        .order_by(pending_deletions.c.delete_after, pending_deletions.c.id)
        .limit(limit)
    )
    return [
        PendingDeletion(int(row.id), Location(row.backend, row.real_key), row.delete_after)
        for row in rows
    ]


def _forget_deletions(conn: sa.Connection, ids: list[int]) -> None:
    if ids:
        conn.execute(pending_deletions.delete().where(pending_deletions.c.id.in_(ids)))


# -- usage -----------------------------------------------------------------------------------


def _usage(conn: sa.Connection) -> dict[str, BackendUsage]:
    return {
        row.backend: BackendUsage(row.backend, row.used_bytes, row.object_count)
        for row in conn.execute(sa.select(backend_usage))
    }


# -- multipart uploads -----------------------------------------------------------------------


def _create_upload(conn: sa.Connection, upload: UploadRecord) -> None:
    bucket_id = _require_bucket(conn, upload.bucket)
    try:
        with conn.begin_nested():
            conn.execute(
                multipart_uploads.insert().values(
                    upload_id=upload.upload_id,
                    bucket_id=bucket_id,
                    key=upload.key,
                    backend=upload.backend,
                    real_key=upload.real_key,
                    backend_upload_id=upload.backend_upload_id,
                    initiated=upload.initiated,
                    headers=dict(upload.headers),
                    user_metadata=dict(upload.metadata),
                    checksum_algorithm=upload.checksum_algorithm,
                    checksum_type=upload.checksum_type,
                    tags=dict(upload.tags) or None,
                    acl=_stored_acl(upload.acl),
                )
            )
    except sa.exc.IntegrityError:
        _require_bucket(conn, upload.bucket)
        raise


def _get_upload(conn: sa.Connection, upload_id: str) -> UploadRecord | None:
    row = conn.execute(
        sa.select(*_UPLOAD_COLUMNS, virtual_buckets.c.name.label("bucket"))
        .join(virtual_buckets, virtual_buckets.c.id == multipart_uploads.c.bucket_id)
        .where(multipart_uploads.c.upload_id == upload_id)
    ).first()
    return None if row is None else _upload_record(row, row.bucket)


def _lock_upload(conn: sa.Connection, upload_id: str, shared: bool = False) -> Any:
    return conn.execute(
        sa.select(*_UPLOAD_COLUMNS, virtual_buckets.c.name.label("bucket"))
        .join(virtual_buckets, virtual_buckets.c.id == multipart_uploads.c.bucket_id)
        .where(multipart_uploads.c.upload_id == upload_id)
        .with_for_update(read=shared, of=multipart_uploads)
    ).first()


def _put_part(conn: sa.Connection, part: PartRecord, backend: str) -> None:
    # A shared lock: parts of one upload may be stored concurrently, but not while the upload
    # is being completed or aborted (which lock it exclusively).
    upload = _lock_upload(conn, part.upload_id, shared=True)
    if upload is None:
        raise KeyError(part.upload_id)
    deltas = _new_deltas()
    values = {
        "backend": backend,
        "etag": part.etag,
        "size": part.size,
        "last_modified": part.last_modified,
        "checksums": dict(part.checksums) or None,
    }
    where = sa.and_(
        multipart_parts.c.upload_ref == upload.id,
        multipart_parts.c.part_number == part.part_number,
    )
    for _ in range(_UPSERT_ATTEMPTS):
        old = conn.execute(
            sa.select(multipart_parts.c.size, multipart_parts.c.backend)
            .where(where)
            .with_for_update()
        ).first()
        if old is not None:
            deltas[old.backend][0] -= old.size
            conn.execute(multipart_parts.update().where(where).values(values))
            break
        try:
            with conn.begin_nested():
                conn.execute(
                    multipart_parts.insert().values(
                        upload_ref=upload.id, part_number=part.part_number, **values
                    )
                )
            break
        except sa.exc.IntegrityError:
            continue  # the same part stored concurrently: replace theirs on the next round
    else:
        raise RuntimeError(f"could neither insert nor lock part {part.part_number}")
    deltas[backend][0] += part.size
    _apply_usage(conn, deltas)


def _list_parts(
    conn: sa.Connection, upload_id: str, part_number_marker: int, max_parts: int
) -> list[PartRecord]:
    rows = conn.execute(
        sa.select(multipart_parts)
        .join(multipart_uploads, multipart_uploads.c.id == multipart_parts.c.upload_ref)
        .where(
            multipart_uploads.c.upload_id == upload_id,
            multipart_parts.c.part_number > part_number_marker,
        )
        .order_by(multipart_parts.c.part_number)
        .limit(max(0, max_parts))
    )
    return [
        PartRecord(
            upload_id, row.part_number, row.etag, row.size, row.last_modified,
            dict(row.checksums or {}),
        )
        for row in rows
    ]


def _drop_upload(conn: sa.Connection, upload: Any, deltas: _Deltas) -> None:
    """Delete an upload and its parts, noting the parts' released bytes in ``deltas``."""
    sizes = conn.execute(
        sa.select(multipart_parts.c.backend, sa.func.sum(multipart_parts.c.size))
        .where(multipart_parts.c.upload_ref == upload.id)
        .group_by(multipart_parts.c.backend)
    )
    for backend, size in sizes:
        deltas[backend][0] -= int(size)
    conn.execute(multipart_parts.delete().where(multipart_parts.c.upload_ref == upload.id))
    conn.execute(multipart_uploads.delete().where(multipart_uploads.c.id == upload.id))


def _complete_upload(conn: sa.Connection, upload_id: str, record: ObjectRecord) -> list[Location]:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    deltas = _new_deltas()
    _drop_upload(conn, upload, deltas)
    replaced = _write_object(conn, record, deltas)
    _apply_usage(conn, deltas)
    return replaced.to_delete


def _finish_upload(
    conn: sa.Connection,
    upload_id: str,
    record: ObjectRecord,
    condition: Condition,
    delete_after: float,
) -> Replacement:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    deltas = _new_deltas()
    _drop_upload(conn, upload, deltas)
    replaced = _write_object(conn, record, deltas, condition)
    _apply_usage(conn, deltas)
    conn.execute(
        completed_uploads.insert().values(
            upload_id=upload_id,
            bucket=record.bucket,
            key=record.key,
            etag=record.etag,
            size=record.size,
            completed_at=record.last_modified,
            checksums=dict(record.checksums),
        )
    )
    return _queue_deletions(conn, replaced, delete_after)


def _completed_upload(conn: sa.Connection, upload_id: str) -> CompletedUpload | None:
    row = conn.execute(
        sa.select(completed_uploads).where(completed_uploads.c.upload_id == upload_id)
    ).first()
    if row is None:
        return None
    return CompletedUpload(
        row.upload_id, row.bucket, row.key, row.etag, int(row.size), row.completed_at,
        dict(row.checksums),
    )


def _forget_completed_uploads(conn: sa.Connection, before: float) -> int:
    return int(
        conn.execute(
            completed_uploads.delete().where(completed_uploads.c.completed_at < before)
        ).rowcount
    )


def _abort_upload(conn: sa.Connection, upload_id: str) -> UploadRecord | None:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        return None
    deltas = _new_deltas()
    _drop_upload(conn, upload, deltas)
    _apply_usage(conn, deltas)
    return _upload_record(upload, upload.bucket)


def _list_uploads(
    conn: sa.Connection,
    bucket: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
) -> UploadPage:
    bucket_id = _require_bucket(conn, bucket)
    upper = _prefix_upper_bound(multipart_uploads.c.key, prefix)

    def fetch(cursor: _Cursor, limit: int) -> list[Any]:
        return list(
            conn.execute(
                sa.select(*_UPLOAD_COLUMNS)
                .where(
                    multipart_uploads.c.bucket_id == bucket_id,
                    cursor.condition(multipart_uploads.c.key, multipart_uploads.c.upload_id),
                    upper,
                )
                .order_by(multipart_uploads.c.key, multipart_uploads.c.upload_id)
                .limit(limit)
            )
        )

    def cursor_after(row: Any) -> _Cursor:
        return _Cursor(after_key=row.key.encode("utf-8"), after_upload_id=row.upload_id.encode())

    # S3 ignores the upload id marker without a key marker.
    first = _first_cursor(prefix, delimiter, key_marker, upload_id_marker if key_marker else "")
    entries, truncated = _scan(fetch, cursor_after, prefix, delimiter, first, max_uploads)
    next_key_marker = next_upload_id_marker = None
    if truncated:
        last = entries[-1]
        if isinstance(last, str):
            next_key_marker = last
        else:
            next_key_marker, next_upload_id_marker = last.key, last.upload_id
    return UploadPage(
        uploads=[_upload_record(entry, bucket) for entry in entries if not isinstance(entry, str)],
        common_prefixes=[entry for entry in entries if isinstance(entry, str)],
        is_truncated=truncated,
        next_key_marker=next_key_marker,
        next_upload_id_marker=next_upload_id_marker,
    )


def _uploads_initiated_before(conn: sa.Connection, when: float) -> list[UploadRecord]:
    rows = conn.execute(
        sa.select(*_UPLOAD_COLUMNS, virtual_buckets.c.name.label("bucket"))
        .join(virtual_buckets, virtual_buckets.c.id == multipart_uploads.c.bucket_id)
        .where(multipart_uploads.c.initiated < when)
        .order_by(multipart_uploads.c.initiated, multipart_uploads.c.id)
    )
    return [_upload_record(row, row.bucket) for row in rows]


# -- operation counters ----------------------------------------------------------------------


def _count_operations(
    conn: sa.Connection,
    backend: str,
    month: str,
    class_a: int,
    class_b: int,
    bytes_in: int,
    bytes_out: int,
) -> None:
    _add_to_row(
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
    rows = conn.execute(sa.select(operation_counters).where(operation_counters.c.month == month))
    return {row.backend: _counts_record(row) for row in rows}


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


__all__ = [
    "ANY",
    "BucketNotEmptyError",
    "CompletedUpload",
    "Condition",
    "MetadataStore",
    "NoSuchBucketError",
    "ObjectMissingError",
    "PendingDeletion",
    "PreconditionFailedError",
    "Replacement",
    "UNCONDITIONAL",
    "model",
]
