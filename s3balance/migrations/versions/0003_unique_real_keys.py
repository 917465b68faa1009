"""One real key per write: the write intents go, replaced locations wait in
``pending_deletions`` until no GET can still be reading them, and completed uploads keep their
result for a repeated CompleteMultipartUpload.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Written by hand to equal ``s3balance.db.model`` (a test compares them).  Existing rows keep their
real keys ``<virtual bucket>/<key>``: they stay valid locations, only new writes get the suffixed
form.  The downgrade recreates the write intent tables empty.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def utf8_bytes(length: int) -> sa.types.TypeEngine:
    return sa.LargeBinary().with_variant(mysql.VARBINARY(length), "mysql", "mariadb")


def json_text() -> sa.types.TypeEngine:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def big_id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.drop_table("write_waiters")
    op.drop_index("ix_write_intents_token", table_name="write_intents")
    op.drop_table("write_intents")
    op.create_table(
        "pending_deletions",
        sa.Column("id", big_id(), autoincrement=True, nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("real_key", sa.Text(), nullable=False),
        sa.Column("delete_after", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pending_deletions"),
        **MYSQL,
    )
    op.create_index(
        "ix_pending_deletions_delete_after", "pending_deletions", ["delete_after"]
    )
    op.create_index("ix_pending_deletions_backend", "pending_deletions", ["backend"])
    op.create_table(
        "completed_uploads",
        sa.Column("upload_id", utf8_bytes(255), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("key", utf8_bytes(1024), nullable=False),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.Double(), nullable=False),
        sa.Column("checksums", json_text(), nullable=False),
        sa.PrimaryKeyConstraint("upload_id", name="pk_completed_uploads"),
        **MYSQL,
    )
    op.create_index(
        "ix_completed_uploads_completed_at", "completed_uploads", ["completed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_completed_uploads_completed_at", table_name="completed_uploads")
    op.drop_table("completed_uploads")
    op.drop_index("ix_pending_deletions_backend", table_name="pending_deletions")
    op.drop_index("ix_pending_deletions_delete_after", table_name="pending_deletions")
    op.drop_table("pending_deletions")
    op.create_table(
        "write_intents",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("real_key", utf8_bytes(1536), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("daemon", sa.String(255), nullable=False),
        sa.Column("claimed_at", sa.Double(), nullable=False),
        sa.Column("heartbeat_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "real_key", name="pk_write_intents"),
        **MYSQL,
    )
    op.create_index("ix_write_intents_token", "write_intents", ["token"])
    op.create_table(
        "write_waiters",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("real_key", utf8_bytes(1536), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "real_key", "token", name="pk_write_waiters"),
        **MYSQL,
    )
