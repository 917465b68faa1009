"""Schema migrations (Alembic), driven from code: no ``alembic.ini`` needed.

The scripts live in the package, :mod:`s3balance.migrations` (a wheel ships them like any other
module); the repository's top-level ``alembic/`` holds only an ``alembic.ini`` pointing there, for
operators who want Alembic's own command line.  Alembic decides the head and the database's
revision (``ScriptDirectory``, ``MigrationContext``); the one shortcut is a database already at
:data:`s3balance.migrations.HEAD`, which a daemon recognises without importing Alembic.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from s3balance import migrations

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (with Mako) costs the daemon about 10 MiB of resident memory for good; it is imported
# only when a schema must actually change, and the daemon then upgrades in a child process.

#: The child process reads the database URL from here (never from argv, which ``ps`` shows).
URL_ENVIRONMENT = "S3BALANCE_MIGRATE_URL"


class SchemaOutdated(Exception):
    """The database schema is not the one this version of s3balance uses."""


#: How long a daemon waits for another one that is migrating the same database.
MIGRATION_LOCK_TIMEOUT = 300

#: Alembic loads env.py and the scripts as modules, which is not thread-safe: one run at a time.
#: Checks take it too: on SQLite a new connection's first statements (switching to WAL) fail with
#: "database is locked" while another thread of this process migrates.
_process_lock = threading.RLock()


def script_location() -> Path:
    """The migrations folder, :mod:`s3balance.migrations`."""
    return Path(migrations.__file__).resolve().parent


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for our scripts; ``env.py`` runs on ``connection`` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision of the scripts, as Alembic finds it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The database's schema revision; None for a database Alembic never touched."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def quick_current_revision(engine: sa.Engine) -> str | None:
    """The database's revision by a plain query of Alembic's table (None: no table, or not
    exactly one row, which :func:`check_schema` then leaves to Alembic)."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return rows[0][0] if len(rows) == 1 else None


def at_head(engine: sa.Engine) -> bool:
    """Whether the schema is at :data:`s3balance.migrations.HEAD`, decided without importing
    Alembic (false means: ask Alembic)."""
    return quick_current_revision(engine) == migrations.HEAD


def check_schema(engine: sa.Engine) -> None:
    """:raises SchemaOutdated: the database is not at :func:`head_revision`."""
    from alembic.script import ScriptDirectory

    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaOutdated(
            f"the database schema is at revision {current}, newer than this s3balance knows "
            f"(its latest is {head}): run a newer s3balance against this database"
        )
    where = "empty" if current is None else f"at revision {current}"
    raise SchemaOutdated(
        f"the database schema is {where} but this s3balance needs revision {head}: run with "
        "database.auto_migrate: true, or upgrade it with "
        "`S3BALANCE_MIGRATE_URL=<database URL> python -m s3balance.db.migrate upgrade`"
    )


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe while other daemons start on the same database
    (they wait on a database lock, then find nothing left to do)."""
    from alembic import command

    with _process_lock, engine.connect() as connection, _migration_lock(connection):
        command.upgrade(alembic_config(connection), revision)
        connection.commit()


def upgrade_in_child(engine: sa.Engine) -> None:
    """:func:`upgrade` run by ``python -m s3balance.db.migrate upgrade`` in a child process, so
    Alembic never enters the daemon's memory.

    :raises RuntimeError: the child failed (its output is in the message).
    """
    env = dict(os.environ)
    env[URL_ENVIRONMENT] = engine.url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-m", "s3balance.db.migrate", "upgrade"],
        env=env,
        capture_output=True,
        timeout=MIGRATION_LOCK_TIMEOUT + 60,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
        raise RuntimeError(f"upgrading the database schema failed: {output[-2000:]}")


def check_or_upgrade(engine: sa.Engine, auto_migrate: bool, in_child: bool = False) -> None:
    """What the daemon does on start: upgrade when allowed, else refuse an outdated schema.

    A schema already at head is recognised without Alembic.

    :param in_child: upgrade in a child process (the daemon); an in-memory SQLite database
        exists only in this process and is always upgraded here.
    """
    with _process_lock:
        if at_head(engine):
            return
        if auto_migrate:
            database = engine.url.database
            if in_child and engine.url.get_backend_name() != "sqlite" or (
                in_child and database not in (None, "", ":memory:")
            ):
                upgrade_in_child(engine)
            else:
                upgrade(engine)
            if at_head(engine):
                return
        check_schema(engine)


@contextlib.contextmanager
def _migration_lock(connection: sa.Connection) -> Iterator[None]:
    """Serialise migrations of one server database across processes (SQLite databases are not
    shared by several daemons; in one process :data:`_process_lock` serialises)."""
    name = connection.dialect.name
    if name == "postgresql":
        # A session lock, released explicitly: the migrations commit their own transactions.
        connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('s3balance-migrate'))"))
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('s3balance-migrate'))"))
            connection.commit()
    elif name in ("mysql", "mariadb"):
        got = connection.execute(
            sa.text("SELECT GET_LOCK('s3balance-migrate', :timeout)"),
            {"timeout": MIGRATION_LOCK_TIMEOUT},
        ).scalar()
        connection.commit()
        if got != 1:
            raise RuntimeError("timed out waiting for another s3balance migrating the database")
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(sa.text("SELECT RELEASE_LOCK('s3balance-migrate')"))
            connection.commit()
    else:
        yield


def main(argv: list[str] | None = None) -> int:
    """``python -m s3balance.db.migrate``: upgrade, inspect, or write the next migration.

    ``revision --autogenerate`` compares a database at head with the models and writes a new
    script into the migrations folder, to be reviewed (and usually edited) by hand.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m s3balance.db.migrate")
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENVIRONMENT),
        help=f"SQLAlchemy URL of the database (default: ${URL_ENVIRONMENT})",
    )
    parser.add_argument("--scripts", help="migrations folder (default: the package's)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="upgrade the schema to head")
    commands.add_parser("current", help="print the schema revision and the head")
    revision = commands.add_parser("revision", help="write a new migration script")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"--url or ${URL_ENVIRONMENT} is required")

    from alembic import command

    from s3balance.db.engine import create_engine

    engine = create_engine(args.url)
    try:
        if args.command == "upgrade":
            upgrade(engine)
        elif args.command == "current":
            print(f"current: {current_revision(engine)}  head: {head_revision()}")
        else:
            with engine.connect() as connection:
                config = alembic_config(connection)
                if args.scripts:
                    config.set_main_option("script_location", args.scripts)
                written = command.revision(
                    config, message=args.message, autogenerate=args.autogenerate
                )
            for script in written if isinstance(written, list) else [written]:
                if script is not None:
                    print(f"wrote {script.path}: its revision {script.revision!r} is the new HEAD")
                    print(f"(set HEAD in {Path(migrations.__file__)} when it ships)")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
