"""The schema, as SQLAlchemy Core tables.

This module is the reference the migrations in :mod:`s3balance.migrations` must reproduce: a test
compares a freshly migrated database with :data:`metadata` and fails on any difference.

Object keys (and upload ids, which are compared in listings) are stored as their UTF-8 BYTES in a
binary column (BLOB on SQLite, BYTEA on PostgreSQL, VARBINARY on MySQL/MariaDB), not as text.  S3
lists keys in UTF-8 byte order; a binary column compares with ``memcmp`` on every database, so
``ORDER BY`` and range scans are bytewise whatever the server's collation.  Text columns would need
``COLLATE "C"`` on PostgreSQL and a ``_bin`` collation on MySQL, and MySQL's ``utf8mb4_bin`` is a
PAD SPACE collation, which would make ``"a"`` and ``"a "`` the same key.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

#: Longest object key S3 accepts, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: MySQL table options: InnoDB for transactions and row locks, utf8mb4 for any text, and a binary
#: collation so names compare exactly (case-sensitively) as on the other databases.
#:
#: Every table gets them just before it is created on MySQL or MariaDB (see
#: :func:`_add_mysql_options`), not as ``sa.Table`` keywords: SQLAlchemy validates ``mysql_*``
#: keywords by importing its whole MySQL dialect, every driver module included, which cost each
#: SQLite or PostgreSQL daemon about 1 MiB of resident memory.  For the same reason the MySQL
#: column types below are imported only when a MySQL dialect asks for them.
_MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


class Utf8Bytes(sa.types.TypeDecorator[str]):
    """A string stored as its UTF-8 bytes, so it sorts and compares bytewise everywhere.

    Bound values may also be ``bytes``: range scans bound a prefix's byte successor, which is not
    always valid UTF-8.
    """

    impl = sa.LargeBinary
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            # BLOB cannot be indexed without a prefix length; VARBINARY can, and does not pad.
            return dialect.type_descriptor(mysql.VARBINARY(self.length))
        return dialect.type_descriptor(sa.LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        return str(value).encode("utf-8")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return bytes(value).decode("utf-8")


class JsonText(sa.types.TypeDecorator[Any]):
    """JSON kept in a plain text column.

    Plain text rather than the databases' JSON types: MariaDB's JSON is an alias of LONGTEXT that
    reflects differently from how it is declared, and nothing here queries inside the documents.
    MEDIUMTEXT on MySQL because the part sizes of a 10,000-part object exceed TEXT's 64 KiB.
    """

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.MEDIUMTEXT())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


#: Row ids: BIGINT where it matters, but INTEGER on SQLite, where only an INTEGER PRIMARY KEY is
#: the auto-incrementing rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

virtual_buckets = sa.Table(
    "virtual_buckets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("from_config", sa.Boolean, nullable=False),
    #: The bucket's canned ACL (:mod:`s3balance.acl`); NULL is ``private``.
    sa.Column("acl", sa.String(32), nullable=True),
    #: Bucket tags as ``{"key": "value"}``; NULL is no tag set.
    sa.Column("tags", JsonText, nullable=True),
    sa.UniqueConstraint("name"),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "bucket_id",
        sa.Integer,
        sa.ForeignKey("virtual_buckets.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    sa.Column("key", Utf8Bytes(MAX_KEY_BYTES), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(80), nullable=False),
    sa.Column("last_modified", sa.Double, nullable=False),
    sa.Column("headers", JsonText, nullable=False),
    sa.Column("user_metadata", JsonText, nullable=False),
    sa.Column("checksums", JsonText, nullable=False),
    sa.Column("part_sizes", JsonText, nullable=False),
    #: Base64 checksums of the parts of a multipart object, in order, in the object's checksum
    #: algorithm (GetObjectAttributes lists them); NULL for other objects.
    sa.Column("part_checksums", JsonText, nullable=True),
    #: Object tags as ``{"key": "value"}``; NULL is no tags.
    sa.Column("tags", JsonText, nullable=True),
    #: The object's canned ACL (:mod:`s3balance.acl`); NULL is ``private``.
    sa.Column("acl", sa.String(32), nullable=True),
    # (bucket_id, key) is both the identity of an object and the index listings range-scan.
    sa.UniqueConstraint("bucket_id", "key"),
)

object_locations = sa.Table(
    "object_locations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "object_id",
        sa.BigInteger,
        sa.ForeignKey("objects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    #: Order of the locations within the object (the first one is read first).
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("backend", sa.String(255), nullable=False),
    sa.Column("real_key", sa.Text, nullable=False),
    sa.Index(None, "object_id"),
    sa.Index(None, "backend"),
)

multipart_uploads = sa.Table(
    "multipart_uploads",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("upload_id", Utf8Bytes(255), nullable=False),
    sa.Column(
        "bucket_id",
        sa.Integer,
        sa.ForeignKey("virtual_buckets.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    sa.Column("key", Utf8Bytes(MAX_KEY_BYTES), nullable=False),
    sa.Column("backend", sa.String(255), nullable=False),
    sa.Column("real_key", sa.Text, nullable=False),
    sa.Column("backend_upload_id", sa.Text, nullable=False),
    sa.Column("initiated", sa.Double, nullable=False),
    sa.Column("headers", JsonText, nullable=False),
    sa.Column("user_metadata", JsonText, nullable=False),
    #: ``x-amz-checksum-algorithm`` and ``x-amz-checksum-type`` of the upload; NULL when none.
    sa.Column("checksum_algorithm", sa.String(16), nullable=True),
    sa.Column("checksum_type", sa.String(16), nullable=True),
    #: Tags and canned ACL the object gets at completion (as on ``objects``).
    sa.Column("tags", JsonText, nullable=True),
    sa.Column("acl", sa.String(32), nullable=True),
    sa.UniqueConstraint("upload_id"),
    # ListMultipartUploads orders by (key, upload id) within a bucket.
    sa.Index(None, "bucket_id", "key", "upload_id"),
    sa.Index(None, "initiated"),
    sa.Index(None, "backend"),
)

multipart_parts = sa.Table(
    "multipart_parts",
    metadata,
    sa.Column(
        "upload_ref",
        sa.BigInteger,
        sa.ForeignKey("multipart_uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("part_number", sa.Integer, primary_key=True, autoincrement=False),
    #: The backend holding the part's bytes, whose usage the part counts towards.
    sa.Column("backend", sa.String(255), nullable=False),
    sa.Column("etag", sa.String(80), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("last_modified", sa.Double, nullable=False),
    #: The part's ``x-amz-checksum-<algorithm>`` values (lower-case names); NULL when none.
    sa.Column("checksums", JsonText, nullable=True),
)

#: The other backends an upload of a replicated bucket (``replicas``) is stored on, beyond its
#: row's own ``backend``: one backend upload each, at the upload's ``real_key`` (one real key for
#: every copy, as for a replicated PUT).  A backend that failed a part is dropped from here (or,
#: for the row's own backend, replaced by one of these) and its backend upload queued in
#: ``pending_deletions`` to be aborted.  The parts' bytes count towards every copy's backend.
upload_copies = sa.Table(
    "upload_copies",
    metadata,
    sa.Column(
        "upload_ref",
        sa.BigInteger,
        sa.ForeignKey("multipart_uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("backend_upload_id", sa.Text, nullable=False),
    sa.Index(None, "backend"),
)

backend_usage = sa.Table(
    "backend_usage",
    metadata,
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("used_bytes", sa.BigInteger, nullable=False),
    sa.Column("object_count", sa.BigInteger, nullable=False),
)

operation_counters = sa.Table(
    "operation_counters",
    metadata,
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("class_a", sa.BigInteger, nullable=False),
    sa.Column("class_b", sa.BigInteger, nullable=False),
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    sa.Index(None, "month"),
)

#: Bytes no row references any more, to delete from their backend once ``delete_after`` has
#: passed: a replaced or deleted object's location, kept for a grace period so that GETs already
#: streaming it (in this daemon or in others sharing the database) can finish.  The row is written
#: in the transaction that unreferenced the location, so a crash before the deletion leaks
#: nothing: any daemon's housekeeping deletes it later.
pending_deletions = sa.Table(
    "pending_deletions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("backend", sa.String(255), nullable=False),
    sa.Column("real_key", sa.Text, nullable=False),
    sa.Column("delete_after", sa.Double, nullable=False),
    #: A backend's multipart upload at ``real_key`` that no row references any more (a copy of a
    #: replicated upload that failed, was aborted or expired): aborted, its key left alone; NULL
    #: for plain bytes to delete.
    sa.Column("backend_upload_id", sa.Text, nullable=True),
    sa.Index(None, "delete_after"),
    sa.Index(None, "backend"),
)

#: Results of completed multipart uploads, so that a CompleteMultipartUpload repeated after it
#: succeeded answers the same result (as S3 does for a while); dropped after
#: ``multipart.expiry`` by housekeeping.
completed_uploads = sa.Table(
    "completed_uploads",
    metadata,
    sa.Column("upload_id", Utf8Bytes(255), primary_key=True),
    sa.Column("bucket", sa.String(255), nullable=False),
    sa.Column("key", Utf8Bytes(MAX_KEY_BYTES), nullable=False),
    sa.Column("etag", sa.String(80), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("completed_at", sa.Double, nullable=False),
    sa.Column("checksums", JsonText, nullable=False),
    sa.Index(None, "completed_at"),
)


#: Objects a daemon is repairing (:mod:`s3balance.repair`), so that daemons sharing the database
#: never copy one object at once; a claim whose ``expires`` has passed (its daemon died) may be
#: taken over.  Keyed by the object row's id, which a replacing write keeps.
repair_claims = sa.Table(
    "repair_claims",
    metadata,
    sa.Column("object_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("expires", sa.Double, nullable=False),
)


#: For each virtual bucket, the ``replicas`` for which repair last finished looking at every
#: object (:mod:`s3balance.repair`): a pass looks at a bucket's every object only when its
#: ``replicas`` is no longer this one (a reload changed it, or no pass ever finished), so a
#: restarted daemon or another one sharing the database knows what is left to do.  NULL (or no
#: row) is never or no longer; ``generation`` grows each time it is forgotten, so that a pass
#: that began before records nothing (a reload changed it and back meanwhile).
repair_buckets = sa.Table(
    "repair_buckets",
    metadata,
    sa.Column(
        "bucket_id",
        sa.Integer,
        sa.ForeignKey("virtual_buckets.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("replicas", sa.Integer, nullable=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
)

#: Objects repair must look at without being found by a scan: a write that committed with fewer
#: copies than ``replicas`` (``write_quorum``), an object a pass left short or over.  Queued in
#: the transaction that made the object so; gone with the object.
repair_queue = sa.Table(
    "repair_queue",
    metadata,
    sa.Column(
        "object_id",
        sa.BigInteger,
        sa.ForeignKey("objects.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("queued_at", sa.Double, nullable=False),
)

#: Where repair's incremental verification of one backend's copies of one virtual bucket is: the
#: next pass checks the copies of the objects after key ``after`` (in key order).  ``checked``
#: counts the objects checked since the cycle began, ``last_total`` those of the last complete
#: cycle (their ratio is the progress shown), ``cycles`` the complete cycles; ``sweep`` asks for
#: the rest of the cycle at once (the backend came back from unavailable, maybe wiped).
repair_cursors = sa.Table(
    "repair_cursors",
    metadata,
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column(
        "bucket_id",
        sa.Integer,
        sa.ForeignKey("virtual_buckets.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("after", Utf8Bytes(MAX_KEY_BYTES), nullable=False),
    sa.Column("checked", sa.BigInteger, nullable=False),
    sa.Column("last_total", sa.BigInteger, nullable=True),
    sa.Column("cycles", sa.BigInteger, nullable=False),
    sa.Column("sweep", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)


#: Resumable background work (:mod:`s3balance.jobs`): a drain, a rebalance.  ``state`` is one
#: of ``queued``, ``running``, ``paused``, ``done``, ``failed``, ``cancelled``; a running job is
#: held by ``owner`` (a daemon) until ``expires``, renewed by its heartbeat, and taken over by
#: another daemon once expired.  ``cursor`` is where the job resumes (its kind's own position,
#: e.g. the last location id it finished).  ``objects_left`` and ``bytes_left`` are NULL while
#: unknown.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("params", JsonText, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("objects_done", sa.BigInteger, nullable=False),
    sa.Column("objects_left", sa.BigInteger, nullable=True),
    sa.Column("bytes_done", sa.BigInteger, nullable=False),
    sa.Column("bytes_left", sa.BigInteger, nullable=True),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("started", sa.Double, nullable=True),
    sa.Column("finished", sa.Double, nullable=True),
    sa.Column("updated", sa.Double, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("expires", sa.Double, nullable=True),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Index(None, "state"),
)

#: Real buckets being drained: placement gives them no new object, in every process and daemon
#: sharing the database (each reads this table with its operation counts, every few seconds).
#: ``job_id`` is the drain job moving their objects away; cancelling it removes the row.
drained_backends = sa.Table(
    "drained_backends",
    metadata,
    sa.Column("backend", sa.String(255), primary_key=True),
    sa.Column("since", sa.Double, nullable=False),
    sa.Column("job_id", sa.BigInteger, nullable=True),
)


def _add_mysql_options(table: sa.Table, connection: sa.Connection, **kw: Any) -> None:
    """``before_create``: give ``table`` the :data:`_MYSQL_TABLE` options on MySQL or MariaDB
    (whose dialect is loaded by then); other databases ignore them and never load it."""
    if connection.dialect.name in ("mysql", "mariadb"):
        table.dialect_kwargs.update(_MYSQL_TABLE)


for _table in metadata.tables.values():
    sa.event.listen(_table, "before_create", _add_mysql_options)


def stored_acl(acl: str) -> str | None:
    """An ``acl`` column's value for a canned ACL: NULL for the default, ``private``."""
    return None if acl == "private" else acl
