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

Write intents (table ``write_intents``) serialise writes of one ``(backend, real key)`` across
daemons; :mod:`s3balance.gateway` explains the protocol.  Here: :meth:`MetadataStore.claim_write`
takes a location (or a dead daemon's stale claim of it), :meth:`MetadataStore.replace_object`
commits an object and, in the same transaction, releases the writer's claim and claims the
replaced locations it may delete - skipping those another writer holds, since that writer is
about to commit new bytes there.  A commit always locks the object row before any intent row, so
two commits of one key never wait on each other in opposite orders.
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
    multipart_parts,
    multipart_uploads,
    object_locations,
    objects,
    operation_counters,
    virtual_buckets,
    write_intents,
    write_waiters,
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


class ClaimLostError(Exception):
    """A commit found its write's claim gone: another daemon took it over as stale, so the bytes
    at the location may be that daemon's.  Nothing was committed."""


@dataclass(frozen=True)
class WriteIntent:
    """Who claims locations, and the clock to judge other claims by.

    :param token: unique per write; every row a write claims carries it.
    :param daemon: the claiming daemon, for operators reading the table.
    :param now: the claimer's current time (seconds since the epoch).
    :param stale_after: a claim whose heartbeat is older than this many seconds belongs to a
        dead daemon and may be taken over.
    """

    token: str
    daemon: str
    now: float
    stale_after: float


@dataclass(frozen=True)
class Replacement:
    """What a commit replaced (or a delete removed), as the caller needs it.

    :param previous_size: the replaced object's size; None when there was no object.
    :param previous_locations: where the replaced object was (for usage accounting).
    :param to_delete: replaced locations nothing references any more, claimed for the caller
        when it passed a :class:`WriteIntent`: delete their bytes, then release the token.
    """

    previous_size: int | None
    previous_locations: tuple[Location, ...]
    to_delete: list[Location]


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

    def replace_object(self, record: ObjectRecord, intent: WriteIntent) -> Deferred[Replacement]:
        """:meth:`put_object` for a write that claimed ``record``'s locations with ``intent``.

        In the same transaction, releases those claims and claims (for ``intent.token``) the
        replaced locations to delete, leaving out any that another live claim holds.
        :raises ClaimLostError: ``intent`` no longer holds ``record``'s first location.
        :raises NoSuchBucketError:
        """
        return self.pool.do(_replace_object, record, intent)

    def remove_object(self, bucket: str, key: str, intent: WriteIntent) -> Deferred[Replacement]:
        """:meth:`delete_object`, also claiming the removed locations for deletion as
        :meth:`replace_object` does (``previous_size`` is None when there was no object)."""
        return self.pool.do(_remove_object, bucket, key, intent)

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
        """Every real key that object rows and uploads reference on ``backend`` (for scrub)."""
        return self.pool.do_read(_locations_on, backend)

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

    def complete_upload_replacing(
        self, upload_id: str, record: ObjectRecord, intent: WriteIntent
    ) -> Deferred[Replacement]:
        """:meth:`complete_upload` with the claims of :meth:`replace_object`.
        :raises KeyError: :raises NoSuchBucketError: :raises ClaimLostError:"""
        return self.pool.do(_complete_upload_replacing, upload_id, record, intent)

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

    # -- write intents ---------------------------------------------------------------------

    def claim_write(
        self,
        backend: str,
        real_key: str,
        intent: WriteIntent,
        bucket: str | None = None,
    ) -> Deferred[bool]:
        """Claim ``(backend, real_key)`` for ``intent.token``: fires True when it is ours (new,
        already ours, or taken over from a claim older than ``intent.stale_after``), False when
        another live claim holds it.

        :param bucket: also check this virtual bucket exists (saves a query per write).
        :raises NoSuchBucketError:
        """
        return self.pool.do(_claim_write, backend, real_key, intent, bucket)

    def refresh_write(self, token: str, now: float) -> Deferred[int]:
        """Renew the heartbeat of ``token``'s claims; fires with how many it still holds."""
        return self.pool.do(_refresh_write, token, now)

    def release_write(self, token: str) -> Deferred[None]:
        """Drop every claim of ``token``, and its place in any queue (nothing happens when it
        holds none)."""
        return self.pool.do(_release_write, token)

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


def _replace_object(conn: sa.Connection, record: ObjectRecord, intent: WriteIntent) -> Replacement:
    deltas = _new_deltas()
    replaced = _write_object(conn, record, deltas)
    replaced = _settle_claims(conn, record, replaced, intent)
    _apply_usage(conn, deltas)
    return replaced


def _settle_claims(
    conn: sa.Connection, record: ObjectRecord, replaced: Replacement, intent: WriteIntent
) -> Replacement:
    """Release the writer's claims on ``record``'s locations (refusing the commit when the first
    is no longer ours) and claim the replaced locations to delete; called after the object row
    was locked."""
    for position, location in enumerate(record.locations):
        released = conn.execute(
            write_intents.delete().where(
                write_intents.c.backend == location.backend,
                write_intents.c.real_key == location.real_key,
                write_intents.c.token == intent.token,
            )
        ).rowcount
        if not released and position == 0:
            raise ClaimLostError(f"{location.backend}:{location.real_key}")
    return _claim_for_deletion(conn, replaced, intent)


def _claim_for_deletion(
    conn: sa.Connection, replaced: Replacement, intent: WriteIntent
) -> Replacement:
    deletable = [
        location
        for location in replaced.to_delete
        if _claim(conn, location.backend, location.real_key, intent)
    ]
    return Replacement(replaced.previous_size, replaced.previous_locations, deletable)


def _write_object(conn: sa.Connection, record: ObjectRecord, deltas: _Deltas) -> Replacement:
    """Upsert ``record``'s rows, noting usage changes in ``deltas``; returns what was replaced,
    with the replaced locations that ``record`` does not reuse as ``to_delete``."""
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
            sa.select(objects.c.id, objects.c.size)
            .where(objects.c.bucket_id == bucket_id, objects.c.key == record.key)
            .with_for_update()
        ).first()
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


def _remove_object(conn: sa.Connection, bucket: str, key: str, intent: WriteIntent) -> Replacement:
    removed = _delete_object(conn, bucket, key)
    if removed is None:
        return Replacement(None, (), [])
    unique = list(dict.fromkeys(removed.locations))
    return _claim_for_deletion(conn, Replacement(removed.size, removed.locations, unique), intent)


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
    return keys


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


def _complete_upload_replacing(
    conn: sa.Connection, upload_id: str, record: ObjectRecord, intent: WriteIntent
) -> Replacement:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    deltas = _new_deltas()
    _drop_upload(conn, upload, deltas)
    replaced = _settle_claims(conn, record, _write_object(conn, record, deltas), intent)
    _apply_usage(conn, deltas)
    return replaced


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


# -- write intents ---------------------------------------------------------------------------


def _claim(conn: sa.Connection, backend: str, real_key: str, intent: WriteIntent) -> bool:
    """Insert ``intent``'s claim, or take over a stale one; False while a live claim holds it.

    The locking read sees the latest committed claim on every database (MariaDB's plain reads
    would see the transaction's snapshot); a failed insert means a concurrent claim won the race,
    which the next round reads.
    """
    where = sa.and_(write_intents.c.backend == backend, write_intents.c.real_key == real_key)
    claimed = {
        "token": intent.token,
        "daemon": intent.daemon[:255],
        "claimed_at": intent.now,
        "heartbeat_at": intent.now,
    }
    stale_before = intent.now - intent.stale_after
    for _ in range(_UPSERT_ATTEMPTS):
        row = conn.execute(
            sa.select(write_intents.c.token, write_intents.c.heartbeat_at)
            .where(where)
            .with_for_update()
        ).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        write_intents.insert().values(backend=backend, real_key=real_key, **claimed)
                    )
                return True
            except sa.exc.IntegrityError:
                continue
        if row.token == intent.token:
            return True
        if row.heartbeat_at >= stale_before:
            return False
        taken = conn.execute(
            write_intents.update()
            .where(where, write_intents.c.token == row.token)
            .values(**claimed)
        ).rowcount
        if taken:
            return True
    return False


#: A waiter that has not polled for this long gave up (its client left, or it timed out); the
#: gateway polls at least every second.
WAITER_STALE_AFTER = 5.0


def _claim_write(
    conn: sa.Connection, backend: str, real_key: str, intent: WriteIntent, bucket: str | None
) -> bool:
    """A writer's claim, first come, first served: while an older writer waits for the same
    location, a newer one does not get it even when it is free, and joins the queue."""
    if bucket is not None:
        _require_bucket(conn, bucket)
    waiting = sa.and_(write_waiters.c.backend == backend, write_waiters.c.real_key == real_key)
    conn.execute(
        write_waiters.delete().where(
            waiting, write_waiters.c.last_seen < intent.now - WAITER_STALE_AFTER
        )
    )
    mine = conn.execute(
        sa.select(write_waiters.c.first_seen).where(waiting, write_waiters.c.token == intent.token)
    ).first()
    since = mine.first_seen if mine is not None else intent.now
    ahead = conn.execute(
        sa.select(write_waiters.c.token)
        .where(
            waiting,
            write_waiters.c.token != intent.token,
            sa.or_(
                write_waiters.c.first_seen < since,
                sa.and_(write_waiters.c.first_seen == since, write_waiters.c.token < intent.token),
            ),
        )
        .limit(1)
    ).first()
    granted = ahead is None and _claim(conn, backend, real_key, intent)
    if granted:
        if mine is not None:
            conn.execute(
                write_waiters.delete().where(waiting, write_waiters.c.token == intent.token)
            )
    elif mine is not None:
        conn.execute(
            write_waiters.update()
            .where(waiting, write_waiters.c.token == intent.token)
            .values(last_seen=intent.now)
        )
    else:
        conn.execute(
            write_waiters.insert().values(
                backend=backend,
                real_key=real_key,
                token=intent.token,
                first_seen=since,
                last_seen=intent.now,
            )
        )
    return granted


def _refresh_write(conn: sa.Connection, token: str, now: float) -> int:
    return int(
        conn.execute(
            write_intents.update().where(write_intents.c.token == token).values(heartbeat_at=now)
        ).rowcount
    )


def _release_write(conn: sa.Connection, token: str) -> None:
    conn.execute(write_intents.delete().where(write_intents.c.token == token))
    conn.execute(write_waiters.delete().where(write_waiters.c.token == token))


__all__ = [
    "BucketNotEmptyError",
    "ClaimLostError",
    "MetadataStore",
    "NoSuchBucketError",
    "Replacement",
    "WriteIntent",
    "model",
]
