"""The database as a Twisted service: engine, thread pool, schema check, and the store.

Starting the service starts the thread pool and checks (or, with ``database.auto_migrate``,
upgrades) the schema in a database thread.  The tap waits for :meth:`DBConnector.setup` before it
listens, so no request meets an unmigrated database; a refused schema fails that Deferred with
:class:`~s3balance.db.migrate.SchemaOutdated`.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

from s3balance.config import DatabaseConfig
from s3balance.db import engine as db_engine
from s3balance.db import migrate
from s3balance.db.pool import DBThreadPool
from s3balance.db.store import MetadataStore
from s3balance.logs import make_logger

log = make_logger()


class DBConnector(service.Service):
    """Owns the engine and thread pool; ``.store`` is usable once :meth:`setup` has fired.

    :param reactor: the reactor (it must provide ``IReactorFromThreads``; typed loosely because
        ``twisted.internet.reactor`` is typed as a plain module attribute).
    :param url: a SQLAlchemy URL to use instead of the one derived from ``config`` (tests).
    """

    name = "database"

    def __init__(
        self,
        config: DatabaseConfig,
        data_dir: str,
        reactor: Any,
        url: str | None = None,
    ) -> None:
        if url is None:
            from s3balance.dsn import database_url

            url = database_url(config.type, config.dsn, data_dir)
        self.config = config
        self.url = url
        self.engine = db_engine.create_engine(url, config)
        self.pool = DBThreadPool(self.engine, reactor, db_engine.thread_count(url, config))
        self.store = MetadataStore(self.pool)
        self._setup: defer.Deferred[None] | None = None
        self._outcome: Any = None  # None, or the setup's result / Failure once it is known
        self._done = False
        self._waiters: list[defer.Deferred[None]] = []

    def setup(self) -> defer.Deferred[None]:
        """Start the pool and check or upgrade the schema, once; every call fires (with None, or
        the failure) when that is done."""
        if self._setup is None:
            self.pool.start()
            self._setup = self.pool.do_with_engine(
                migrate.check_or_upgrade, self.config.auto_migrate, True
            )
            self._setup.addBoth(self._settled)
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._done:
            self._fire(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def _settled(self, outcome: Any) -> None:
        self._outcome = outcome
        self._done = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: defer.Deferred[None]) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(None)

    def startService(self) -> None:
        super().startService()
        self.setup().addErrback(lambda failure: log.failure("database setup failed", failure))

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.pool.stop()
        return None
