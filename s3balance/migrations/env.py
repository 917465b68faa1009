"""Alembic environment for s3balance.

Normally run from :mod:`s3balance.db.migrate`, which passes an open connection in
``config.attributes["connection"]``.  Run by Alembic's command line (``alembic -c
alembic/alembic.ini``), it connects to ``-x url=<sqlalchemy url>``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from s3balance.db.engine import create_engine
from s3balance.db.model import metadata

config = context.config


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: let Alembic rebuild tables there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with -x url=<sqlalchemy url>")
    engine = create_engine(url)
    with engine.connect() as own_connection:
        run_migrations(own_connection)
        own_connection.commit()


if context.is_offline_mode():
    raise SystemExit("s3balance migrations need a database connection (no --sql mode)")
main()
