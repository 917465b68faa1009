"""Building the SQLAlchemy engine for one of the three supported databases.

Each database gets the settings that make the store's transactions behave the same everywhere:

- SQLite: WAL (readers never wait for the writer), a busy timeout, foreign keys enforced, and write
  transactions opened with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of one
  failing when it upgrades a read lock (SQLite has no ``SELECT ... FOR UPDATE``).
- MySQL/MariaDB: utf8mb4 and READ COMMITTED, which, like PostgreSQL's default, takes no gap locks
  on missing rows; insert-if-missing races then end in a duplicate-key error the store handles
  rather than a deadlock.
- Servers: ``pool_pre_ping`` so a restarted server costs a reconnect rather than a daemon
  restart; all: ``pool_recycle`` from ``conn_max_lifetime``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, pool
from sqlalchemy.engine import URL, Engine, make_url

from s3balance.config import DatabaseConfig
from s3balance.db.driver import execute_text

#: How long an SQLite connection waits for the database lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: Threads (hence connections) for SQLite: it has one writer at a time, more threads only queue.
SQLITE_MAX_THREADS = 4

#: Execution option marking a transaction that only reads (see :func:`_sqlite_begin`).
READ_ONLY_OPTION = "s3balance_read_only"

#: ``database.log_level`` (Go S3 Balance's gorm levels, plus ``debug``) -> level of our engine's
#: SQLAlchemy logger.  INFO logs every statement, DEBUG also the rows.
_LOG_LEVELS = {
    "silent": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

#: SQLAlchemy's engine logger name is ``sqlalchemy.engine.Engine.<logging_name>``.
ENGINE_LOGGING_NAME = "s3balance"
#: The logger of our engine's statements (``database.log_level``): statements run on the cursor
#: directly go through SQLAlchemy instead while it logs at INFO.
STATEMENT_LOG = logging.getLogger(f"sqlalchemy.engine.Engine.{ENGINE_LOGGING_NAME}")


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_memory_sqlite(url: str | URL) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def thread_count(url: str | URL, config: DatabaseConfig) -> int:
    """Threads for the database pool: one connection per thread, so ``max_open_conns`` of them."""
    wanted = max(1, config.max_open_conns)
    if is_memory_sqlite(url):
        return 1  # one shared connection: an in-memory database exists only inside it
    if is_sqlite(url):
        return min(wanted, SQLITE_MAX_THREADS)
    return wanted


def create_engine(url: str | URL, config: DatabaseConfig | None = None) -> Engine:
    """An engine for ``url`` configured from ``config`` (defaults when None).

    :param url: a SQLAlchemy URL (see :func:`s3balance.dsn.database_url`).
    """
    config = config or DatabaseConfig()
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {
        "pool_pre_ping": True,
        "logging_name": ENGINE_LOGGING_NAME,
    }
    if config.conn_max_lifetime > 0:
        kwargs["pool_recycle"] = int(config.conn_max_lifetime)
    threads = thread_count(parsed, config)

    if backend == "sqlite":
        # A local file cannot "restart" under us: the ping would be one more statement in
        # every transaction for nothing.
        kwargs["pool_pre_ping"] = False
        if is_memory_sqlite(parsed):
            kwargs["poolclass"] = pool.StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["connect_args"] = {
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "check_same_thread": False,
            }
            # One more connection than threads: the pool's writer thread (see DBThreadPool).
            kwargs.update(_queue_pool_sizes(config, threads + 1))
    else:
        kwargs.update(_queue_pool_sizes(config, threads))
        if backend in ("mysql", "mariadb"):
            if "charset" not in parsed.query:
                parsed = parsed.update_query_dict({"charset": "utf8mb4"})
            kwargs["isolation_level"] = "READ COMMITTED"

    engine = sa.create_engine(parsed, **kwargs)
    STATEMENT_LOG.setLevel(_LOG_LEVELS.get(config.log_level.lower(), logging.WARNING))
    if backend == "sqlite":
        if not is_memory_sqlite(parsed) and parsed.database:
            directory = os.path.dirname(os.path.abspath(parsed.database))
            event.listen(engine, "do_connect", lambda *_: os.makedirs(directory, exist_ok=True))
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _queue_pool_sizes(config: DatabaseConfig, threads: int) -> dict[str, int]:
    """Pool sizes so the pool never makes a thread wait: ``threads`` connections at most, of
    which ``max_idle_conns`` stay open when idle."""
    idle = max(1, min(config.max_idle_conns, threads))
    return {"pool_size": idle, "max_overflow": threads - idle, "pool_timeout": 60}


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Let SQLAlchemy (the "begin" listener) issue BEGIN, instead of pysqlite's own guesswork,
    # which does not open a transaction before a SELECT and breaks SAVEPOINT.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL: a power loss may lose the last commits but never corrupts the database.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    read_only = connection.get_execution_options().get(READ_ONLY_OPTION)
    sql = "BEGIN" if read_only else "BEGIN IMMEDIATE"
    if STATEMENT_LOG.isEnabledFor(logging.INFO):
        connection.exec_driver_sql(sql)
    else:
        execute_text(connection, sql)  # through SQLAlchemy, the call costs more than BEGIN
