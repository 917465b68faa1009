"""Initial schema: virtual buckets, objects and their locations, multipart uploads, usage and
operation counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written by hand to equal ``s3balance.db.model`` at the time (a test compares them).  It spells
out its types instead of importing the model's, so later model changes cannot alter it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utf8_bytes(length: int) -> sa.types.TypeEngine:
    """UTF-8 bytes of a key, compared bytewise (see ``s3balance.db.model``)."""
    return sa.LargeBinary().with_variant(mysql.VARBINARY(length), "mysql", "mariadb")


def json_text() -> sa.types.TypeEngine:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def big_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "virtual_buckets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("from_config", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_virtual_buckets"),
        sa.UniqueConstraint("name", name="uq_virtual_buckets_name"),
        **MYSQL,
    )
    op.create_table(
        "objects",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("bucket_id", sa.Integer(), nullable=False),
        sa.Column("key", utf8_bytes(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("last_modified", sa.Double(), nullable=False),
        sa.Column("headers", json_text(), nullable=False),
        sa.Column("user_metadata", json_text(), nullable=False),
        sa.Column("checksums", json_text(), nullable=False),
        sa.Column("part_sizes", json_text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_objects"),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["virtual_buckets.id"],
            name="fk_objects_bucket_id_virtual_buckets",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("bucket_id", "key", name="uq_objects_bucket_id_key"),
        **MYSQL,
    )
    op.create_table(
        "object_locations",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("real_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_object_locations"),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["objects.id"],
            name="fk_object_locations_object_id_objects",
            ondelete="CASCADE",
        ),
        **MYSQL,
    )
    op.create_index("ix_object_locations_object_id", "object_locations", ["object_id"])
    op.create_index("ix_object_locations_backend", "object_locations", ["backend"])
    op.create_table(
        "multipart_uploads",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("upload_id", utf8_bytes(255), nullable=False),
        sa.Column("bucket_id", sa.Integer(), nullable=False),
        sa.Column("key", utf8_bytes(1024), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("real_key", sa.Text(), nullable=False),
        sa.Column("backend_upload_id", sa.Text(), nullable=False),
        sa.Column("initiated", sa.Double(), nullable=False),
        sa.Column("headers", json_text(), nullable=False),
        sa.Column("user_metadata", json_text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_multipart_uploads"),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["virtual_buckets.id"],
            name="fk_multipart_uploads_bucket_id_virtual_buckets",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("upload_id", name="uq_multipart_uploads_upload_id"),
        **MYSQL,
    )
    op.create_index(
        "ix_multipart_uploads_bucket_id_key_upload_id",
        "multipart_uploads",
        ["bucket_id", "key", "upload_id"],
    )
    op.create_index("ix_multipart_uploads_initiated", "multipart_uploads", ["initiated"])
    op.create_index("ix_multipart_uploads_backend", "multipart_uploads", ["backend"])
    op.create_table(
        "multipart_parts",
        sa.Column("upload_ref", sa.BigInteger(), nullable=False),
        sa.Column("part_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("upload_ref", "part_number", name="pk_multipart_parts"),
        sa.ForeignKeyConstraint(
            ["upload_ref"],
            ["multipart_uploads.id"],
            name="fk_multipart_parts_upload_ref_multipart_uploads",
            ondelete="CASCADE",
        ),
        **MYSQL,
    )
    op.create_table(
        "backend_usage",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("object_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("backend", name="pk_backend_usage"),
        **MYSQL,
    )
    op.create_table(
        "operation_counters",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("class_a", sa.BigInteger(), nullable=False),
        sa.Column("class_b", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "month", name="pk_operation_counters"),
        **MYSQL,
    )
    op.create_index("ix_operation_counters_month", "operation_counters", ["month"])


def downgrade() -> None:
    for table in (
        "operation_counters",
        "backend_usage",
        "multipart_parts",
        "multipart_uploads",
        "object_locations",
        "objects",
        "virtual_buckets",
    ):
        op.drop_table(table)
