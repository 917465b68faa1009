"""Tags and canned ACLs: a ``tags`` document and an ``acl`` name on objects, on multipart
uploads (applied at completion) and on virtual buckets.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Written by hand to equal ``s3balance.db.model`` (a test compares them).  The columns are nullable
so existing rows need no rewrite: NULL means no tags and the ``private`` ACL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def json_text() -> sa.types.TypeEngine:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    for table in ("objects", "multipart_uploads"):
        op.add_column(table, sa.Column("tags", json_text(), nullable=True))
        op.add_column(table, sa.Column("acl", sa.String(32), nullable=True))
    op.add_column("virtual_buckets", sa.Column("acl", sa.String(32), nullable=True))
    op.add_column("virtual_buckets", sa.Column("tags", json_text(), nullable=True))


def downgrade() -> None:
    op.drop_column("virtual_buckets", "tags")
    op.drop_column("virtual_buckets", "acl")
    for table in ("multipart_uploads", "objects"):
        op.drop_column(table, "acl")
        op.drop_column(table, "tags")
