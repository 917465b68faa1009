"""Multipart uploads of replicated buckets: an upload's other backend uploads, and aborting a
backend upload no row references through the deletion queue.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Written by hand to equal ``s3balance.db.model`` (a test compares them).  Existing uploads have one
backend and no row in ``upload_copies``; existing queued deletions are plain bytes (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_copies",
        sa.Column("upload_ref", sa.BigInteger(), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("backend_upload_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("upload_ref", "backend", name=op.f("pk_upload_copies")),
        sa.ForeignKeyConstraint(
            ["upload_ref"],
            ["multipart_uploads.id"],
            name=op.f("fk_upload_copies_upload_ref_multipart_uploads"),
            ondelete="CASCADE",
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(op.f("ix_upload_copies_backend"), "upload_copies", ["backend"])
    op.add_column("pending_deletions", sa.Column("backend_upload_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("pending_deletions", "backend_upload_id")
    op.drop_index(op.f("ix_upload_copies_backend"), table_name="upload_copies")
    op.drop_table("upload_copies")
