"""Checksums of multipart uploads: each upload's algorithm and type, each part's checksums, and
each multipart object's part checksums (for GetObjectAttributes).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Written by hand to equal ``s3balance.db.model`` (a test compares them).  Every new column is
nullable: rows written before this revision have no checksums, which readers take as none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def json_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("multipart_uploads", sa.Column("checksum_algorithm", sa.String(16)))
    op.add_column("multipart_uploads", sa.Column("checksum_type", sa.String(16)))
    op.add_column("multipart_parts", sa.Column("checksums", json_text()))
    op.add_column("objects", sa.Column("part_checksums", json_text()))


def downgrade() -> None:
    op.drop_column("objects", "part_checksums")
    op.drop_column("multipart_parts", "checksums")
    op.drop_column("multipart_uploads", "checksum_type")
    op.drop_column("multipart_uploads", "checksum_algorithm")
