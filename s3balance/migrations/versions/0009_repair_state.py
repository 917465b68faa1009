"""Repair's state: the ``replicas`` each bucket was last fully repaired for, the queue of
objects to look at, and the incremental verification's cursors.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Written by hand to equal ``s3balance.db.model`` (a test compares them).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
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


def upgrade() -> None:
    op.create_table(
        "repair_buckets",
        sa.Column("bucket_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_id", name=op.f("pk_repair_buckets")),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["virtual_buckets.id"],
            name=op.f("fk_repair_buckets_bucket_id_virtual_buckets"),
            ondelete="CASCADE",
        ),
        **MYSQL,
    )
    op.create_table(
        "repair_queue",
        sa.Column("object_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("queued_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("object_id", name=op.f("pk_repair_queue")),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["objects.id"],
            name=op.f("fk_repair_queue_object_id_objects"),
            ondelete="CASCADE",
        ),
        **MYSQL,
    )
    op.create_table(
        "repair_cursors",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("bucket_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("after", utf8_bytes(1024), nullable=False),
        sa.Column("checked", sa.BigInteger(), nullable=False),
        sa.Column("last_total", sa.BigInteger(), nullable=True),
        sa.Column("cycles", sa.BigInteger(), nullable=False),
        sa.Column("sweep", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "bucket_id", name=op.f("pk_repair_cursors")),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["virtual_buckets.id"],
            name=op.f("fk_repair_cursors_bucket_id_virtual_buckets"),
            ondelete="CASCADE",
        ),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("repair_cursors")
    op.drop_table("repair_queue")
    op.drop_table("repair_buckets")
