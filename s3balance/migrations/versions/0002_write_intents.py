"""Write intents: claims on a (backend, real key) that serialise writes across daemons, and the
writers waiting for them (first come, first served).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Written by hand to equal ``s3balance.db.model.write_intents`` (a test compares them).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "write_intents",
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column(
            "real_key",
            sa.LargeBinary().with_variant(mysql.VARBINARY(1536), "mysql", "mariadb"),
            nullable=False,
        ),
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
        sa.Column(
            "real_key",
            sa.LargeBinary().with_variant(mysql.VARBINARY(1536), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "real_key", "token", name="pk_write_waiters"),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("write_waiters")
    op.drop_table("write_intents")
