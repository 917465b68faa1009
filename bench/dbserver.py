"""A fresh database on the local PostgreSQL or MariaDB server for one bench daemon.

Each run creates a database of its own, named uniquely, so that the figures start from an empty
schema like the SQLite rows do and nothing is left behind: the database is dropped when the bench
stops its servers (it is listed among them, before the daemon that uses it, so it is dropped
after that daemon has exited).
"""

from __future__ import annotations

import os
import uuid

import sqlalchemy as sa

#: The servers the bench uses (trust authentication, loopback only), without a database name.
POSTGRES_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
MARIADB_SERVER = "mysql+pymysql://root@127.0.0.1:3306"


class BenchDatabase:
    """A uniquely named database on ``server_url``, created by :meth:`create` and dropped by
    :meth:`stop` (the name the bench gives the call that stops its servers).

    :param server_url: :data:`POSTGRES_SERVER` or :data:`MARIADB_SERVER`.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.postgres = server_url.startswith("postgresql")
        self.name = f"s3balance_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._quoted = f'"{self.name}"' if self.postgres else f"`{self.name}`"
        # PostgreSQL needs a database to connect to; MariaDB connects to none.
        admin_url = f"{server_url}/postgres" if self.postgres else f"{server_url}/"
        self._admin = sa.create_engine(
            admin_url,
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": 5},
        )
        self.url: str | None = None

    def create(self) -> str:
        """Create the database and return its SQLAlchemy URL.

        :raises sqlalchemy.exc.SQLAlchemyError: the server is not reachable or refused.
        """
        options = (
            "ENCODING 'UTF8' TEMPLATE template0"
            if self.postgres
            else "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {self._quoted} {options}")
        self.url = f"{self.server_url}/{self.name}"
        return self.url

    def stop(self) -> None:
        """Drop the database (once; a no-op when it was never created)."""
        if self.url is None:
            return
        force = " WITH (FORCE)" if self.postgres else ""
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quoted}{force}")
        self.url = None
        self._admin.dispose()


def short_reason(error: BaseException) -> str:
    """The first line of a driver's error, enough to say why a server was not used."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]
