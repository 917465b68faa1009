"""Multipart uploads: uploads in progress, their parts, and the results of completed ones.

Parts count towards their backend's usage while the upload lasts; completing an upload releases
them and commits the object in one transaction (:func:`s3balance.db.objects.write_object`), so
used bytes never count a part and its object twice.

An upload of a replicated bucket has a copy on each of several backends (``upload_copies`` holds
those beyond the row's own ``backend``); every part counts on every copy's backend.  A copy that
is dropped (:meth:`MultipartComponent.drop_upload_copies`) or abandoned with its upload
(:meth:`MultipartComponent.abandon_upload`) has its backend upload queued in
``pending_deletions`` in the same transaction, to be aborted there: no copy is ever forgotten.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.buckets import require_bucket
from s3balance.db.deletions import PendingDeletion, queue_upload_aborts
from s3balance.db.listing import Cursor, first_cursor, prefix_upper_bound, scan
from s3balance.db.model import (
    completed_uploads,
    multipart_parts,
    multipart_uploads,
    stored_acl,
    upload_copies,
    virtual_buckets,
)
from s3balance.db.objects import UNCONDITIONAL, Condition, Replacement, queue_replaced, write_object
from s3balance.db.records import (
    Location,
    ObjectRecord,
    PartRecord,
    UploadCopy,
    UploadPage,
    UploadRecord,
)
from s3balance.db.repairqueue import queue_repair
from s3balance.db.usage import UPSERT_ATTEMPTS, Deltas, apply_usage, new_deltas

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


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


@dataclass(frozen=True)
class AbandonedCopies:
    """Copies of an upload given up in one transaction: the bytes of parts each backend no
    longer counts, and the queued aborts of their backend uploads (see the module docstring)."""

    #: The upload as it was before (with every copy it had).
    upload: UploadRecord
    released: dict[str, int]
    queued: list[PendingDeletion]


class MultipartComponent(DBComponent):
    """Uploads in progress, their parts, and kept results of completed uploads."""

    def create_upload(self, upload: UploadRecord) -> Deferred[None]:
        """:raises NoSuchBucketError:"""
        return self.pool.do(_create_upload, upload)

    def get_upload(self, upload_id: str) -> Deferred[UploadRecord | None]:
        return self.pool.do_read(_get_upload, upload_id)

    def put_part(self, part: PartRecord) -> Deferred[None]:
        """Record (or replace) a part; the used bytes of the backend of every copy of the upload
        grow by the size difference.
        :raises KeyError: the upload no longer exists (aborted or completed meanwhile)."""
        return self.pool.do(_put_part, part)

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
        short: bool = False,
    ) -> Deferred[Replacement]:
        """:meth:`complete_upload` with the condition and queueing of :meth:`commit_object`
        (``short``: queued for repair too), keeping the result for a repeated completion
        (:meth:`completed_upload`).
        :raises KeyError: :raises NoSuchBucketError: :raises PreconditionFailedError:
        :raises ObjectMissingError:"""
        return self.pool.do(_finish_upload, upload_id, record, condition, delete_after, short)

    def completed_upload(self, upload_id: str) -> Deferred[CompletedUpload | None]:
        """The kept result of a completed upload, or None."""
        return self.pool.do_read(_completed_upload, upload_id)

    def forget_completed_uploads(self, before: float) -> Deferred[int]:
        """Drop results of uploads completed before ``before``; fires with how many."""
        return self.pool.do(_forget_completed_uploads, before)

    def drop_upload_copies(
        self, upload_id: str, backends: Collection[str], delete_after: float
    ) -> Deferred[AbandonedCopies]:
        """Drop the copies of an upload on ``backends`` (they failed a part, or its completion):
        their usage is released and their backend uploads queued for abortion after
        ``delete_after``.  When the upload's own backend goes, another copy takes its place.
        :raises KeyError: the upload no longer exists.
        :raises ValueError: no copy would be left (abandon the upload instead)."""
        return self.pool.do(_drop_upload_copies, upload_id, frozenset(backends), delete_after)

    def abandon_upload(
        self, upload_id: str, delete_after: float
    ) -> Deferred[AbandonedCopies | None]:
        """Drop an upload and its parts, queueing every copy's backend upload for abortion
        after ``delete_after``; None when the upload no longer exists."""
        return self.pool.do(_abandon_upload, upload_id, delete_after)

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


# In a database thread, inside the pool's transaction (see s3balance.db.base).

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

#: An upload with its bucket's name.
_SELECT_UPLOAD = sa.select(*_UPLOAD_COLUMNS, virtual_buckets.c.name.label("bucket")).join(
    virtual_buckets, virtual_buckets.c.id == multipart_uploads.c.bucket_id
)
_BY_UPLOAD_ID = multipart_uploads.c.upload_id == sa.bindparam("wanted_upload_id")
_GET_UPLOAD = _SELECT_UPLOAD.where(_BY_UPLOAD_ID)
_LOCK_UPLOAD = _GET_UPLOAD.with_for_update(of=multipart_uploads)
_LOCK_UPLOAD_SHARED = _GET_UPLOAD.with_for_update(read=True, of=multipart_uploads)


def _upload_record(
    row: Any, bucket: str, copies: Sequence[UploadCopy] = ()
) -> UploadRecord:
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
        copies=tuple(copies),
    )


def _copies_of(conn: sa.Connection, refs: Collection[int]) -> dict[int, list[UploadCopy]]:
    """The other copies of the uploads with these row ids, by row id (in backend order)."""
    found: dict[int, list[UploadCopy]] = {ref: [] for ref in refs}
    if not refs:
        return found
    rows = conn.execute(
        sa.select(upload_copies)
        .where(upload_copies.c.upload_ref.in_(sorted(refs)))
        .order_by(upload_copies.c.upload_ref, upload_copies.c.backend)
    )
    for row in rows:
        found[row.upload_ref].append(UploadCopy(row.backend, row.backend_upload_id))
    return found


def _records(conn: sa.Connection, rows: Sequence[Any], bucket: str | None = None) -> list[
    UploadRecord
]:
    """Upload records of ``rows``, with their copies (one query for all)."""
    copies = _copies_of(conn, {row.id for row in rows})
    return [
        _upload_record(row, bucket if bucket is not None else row.bucket, copies[row.id])
        for row in rows
    ]


def _create_upload(conn: sa.Connection, upload: UploadRecord) -> None:
    owner = require_bucket(conn, upload.bucket)
    try:
        with may_fail(conn):
            inserted = conn.execute(
                multipart_uploads.insert().values(
                    upload_id=upload.upload_id,
                    bucket_id=owner,
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
                    acl=stored_acl(upload.acl),
                )
            )
    except sa.exc.IntegrityError:
        require_bucket(conn, upload.bucket)
        raise
    if upload.copies:
        assert inserted.inserted_primary_key is not None
        ref = int(inserted.inserted_primary_key[0])
        conn.execute(
            upload_copies.insert(),
            [
                {"upload_ref": ref, "backend": c.backend, "backend_upload_id": c.backend_upload_id}
                for c in upload.copies
            ],
        )


def _get_upload(conn: sa.Connection, upload_id: str) -> UploadRecord | None:
    row = conn.execute(_GET_UPLOAD, {"wanted_upload_id": upload_id}).first()
    return None if row is None else _records(conn, [row])[0]


def _lock_upload(conn: sa.Connection, upload_id: str, shared: bool = False) -> Any:
    query = _LOCK_UPLOAD_SHARED if shared else _LOCK_UPLOAD
    return conn.execute(query, {"wanted_upload_id": upload_id}).first()


def _put_part(conn: sa.Connection, part: PartRecord) -> None:
    # A shared lock: parts of one upload may be stored concurrently, but not while the upload
    # is being completed or aborted (which lock it exclusively).
    upload = _lock_upload(conn, part.upload_id, shared=True)
    if upload is None:
        raise KeyError(part.upload_id)
    # The row's backend, not the caller's: a copy may have taken the place of a dropped one.
    backend = upload.backend
    others = [copy.backend for copy in _copies_of(conn, [upload.id])[upload.id]]
    deltas = new_deltas()
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
    for _ in range(UPSERT_ATTEMPTS):
        old = conn.execute(
            sa.select(multipart_parts.c.size, multipart_parts.c.backend)
            .where(where)
            .with_for_update()
        ).first()
        if old is not None:
            for name in [old.backend, *others]:
                deltas[name][0] -= old.size
            conn.execute(multipart_parts.update().where(where).values(values))
            break
        try:
            with may_fail(conn):
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
    for name in [backend, *others]:
        deltas[name][0] += part.size
    apply_usage(conn, deltas)


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


def _drop_upload(conn: sa.Connection, upload: Any, deltas: Deltas) -> None:
    """Delete an upload and its parts, noting the parts' released bytes in ``deltas``."""
    sizes = conn.execute(
        sa.select(multipart_parts.c.backend, sa.func.sum(multipart_parts.c.size))
        .where(multipart_parts.c.upload_ref == upload.id)
        .group_by(multipart_parts.c.backend)
    )
    total = 0
    for backend, size in sizes:
        deltas[backend][0] -= int(size)
        total += int(size)
    for copy in _copies_of(conn, [upload.id])[upload.id]:
        deltas[copy.backend][0] -= total
    conn.execute(upload_copies.delete().where(upload_copies.c.upload_ref == upload.id))
    conn.execute(multipart_parts.delete().where(multipart_parts.c.upload_ref == upload.id))
    conn.execute(multipart_uploads.delete().where(multipart_uploads.c.id == upload.id))


def _complete_upload(conn: sa.Connection, upload_id: str, record: ObjectRecord) -> list[Location]:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    deltas = new_deltas()
    _drop_upload(conn, upload, deltas)
    replaced = write_object(conn, record, deltas)
    apply_usage(conn, deltas)
    return replaced.to_delete


def _finish_upload(
    conn: sa.Connection,
    upload_id: str,
    record: ObjectRecord,
    condition: Condition,
    delete_after: float,
    short: bool = False,
) -> Replacement:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    deltas = new_deltas()
    _drop_upload(conn, upload, deltas)
    replaced = write_object(conn, record, deltas, condition)
    apply_usage(conn, deltas)
    if short and replaced.object_id is not None:
        queue_repair(conn, replaced.object_id, record.last_modified)
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
    return queue_replaced(conn, replaced, delete_after)


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
    record = _records(conn, [upload])[0]
    deltas = new_deltas()
    _drop_upload(conn, upload, deltas)
    apply_usage(conn, deltas)
    return record


def _parts_total(conn: sa.Connection, upload: Any) -> int:
    total = conn.execute(
        sa.select(sa.func.sum(multipart_parts.c.size)).where(
            multipart_parts.c.upload_ref == upload.id
        )
    ).scalar()
    return int(total or 0)


def _drop_upload_copies(
    conn: sa.Connection, upload_id: str, backends: frozenset[str], delete_after: float
) -> AbandonedCopies:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        raise KeyError(upload_id)
    record = _records(conn, [upload])[0]
    dropped = [copy for copy in record.all_copies() if copy.backend in backends]
    kept = [copy for copy in record.all_copies() if copy.backend not in backends]
    if not dropped:
        return AbandonedCopies(record, {}, [])
    if not kept:
        raise ValueError(f"dropping every copy of upload {upload_id}")
    total = _parts_total(conn, upload)
    gone = {copy.backend for copy in dropped}
    if record.backend in gone:
        # The row's own backend goes: the first copy kept takes its place (its parts count on
        # it through the parts' backend from now on, no longer through its copy row).
        heir = kept[0]
        conn.execute(
            multipart_uploads.update()
            .where(multipart_uploads.c.id == upload.id)
            .values(backend=heir.backend, backend_upload_id=heir.backend_upload_id)
        )
        conn.execute(
            multipart_parts.update()
            .where(multipart_parts.c.upload_ref == upload.id)
            .values(backend=heir.backend)
        )
        gone.add(heir.backend)
    conn.execute(
        upload_copies.delete().where(
            upload_copies.c.upload_ref == upload.id, upload_copies.c.backend.in_(sorted(gone))
        )
    )
    deltas = new_deltas()
    for copy in dropped:
        deltas[copy.backend][0] -= total
    apply_usage(conn, deltas)
    queued = queue_upload_aborts(conn, record.real_key, dropped, delete_after)
    return AbandonedCopies(record, {copy.backend: total for copy in dropped}, queued)


def _abandon_upload(
    conn: sa.Connection, upload_id: str, delete_after: float
) -> AbandonedCopies | None:
    upload = _lock_upload(conn, upload_id)
    if upload is None:
        return None
    record = _records(conn, [upload])[0]
    total = _parts_total(conn, upload)
    deltas = new_deltas()
    _drop_upload(conn, upload, deltas)
    apply_usage(conn, deltas)
    queued = queue_upload_aborts(conn, record.real_key, record.all_copies(), delete_after)
    return AbandonedCopies(record, {name: total for name in record.backends}, queued)


def _list_uploads(
    conn: sa.Connection,
    bucket: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
) -> UploadPage:
    owner = require_bucket(conn, bucket)
    upper = prefix_upper_bound(multipart_uploads.c.key, prefix)

    def fetch(cursor: Cursor, limit: int) -> list[Any]:
        return list(
            conn.execute(
                sa.select(*_UPLOAD_COLUMNS)
                .where(
                    multipart_uploads.c.bucket_id == owner,
                    cursor.condition(multipart_uploads.c.key, multipart_uploads.c.upload_id),
                    upper,
                )
                .order_by(multipart_uploads.c.key, multipart_uploads.c.upload_id)
                .limit(limit)
            )
        )

    def cursor_after(row: Any) -> Cursor:
        return Cursor(after_key=row.key.encode("utf-8"), after_upload_id=row.upload_id.encode())

    # S3 ignores the upload id marker without a key marker.
    first = first_cursor(prefix, delimiter, key_marker, upload_id_marker if key_marker else "")
    entries, truncated = scan(fetch, cursor_after, prefix, delimiter, first, max_uploads)
    next_key_marker = next_upload_id_marker = None
    if truncated:
        last = entries[-1]
        if isinstance(last, str):
            next_key_marker = last
        else:
            next_key_marker, next_upload_id_marker = last.key, last.upload_id
    return UploadPage(
        uploads=_records(conn, [entry for entry in entries if not isinstance(entry, str)], bucket),
        common_prefixes=[entry for entry in entries if isinstance(entry, str)],
        is_truncated=truncated,
        next_key_marker=next_key_marker,
        next_upload_id_marker=next_upload_id_marker,
    )


def _uploads_initiated_before(conn: sa.Connection, when: float) -> list[UploadRecord]:
    rows = conn.execute(
        _SELECT_UPLOAD.where(multipart_uploads.c.initiated < when).order_by(
            multipart_uploads.c.initiated, multipart_uploads.c.id
        )
    )
    return _records(conn, list(rows))
