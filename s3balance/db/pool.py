"""Running database work off the reactor thread, one transaction per call.

Like buildbot's ``DBThreadPool``: callers hand over a function ``fn(connection, *args)``; it runs
in a dedicated thread with its own connection inside a transaction, and the Deferred fires (in the
reactor thread) with whatever ``fn`` returned, which must be plain data (records), never a result
set or anything else still tied to the connection.

Transient failures (deadlocks, lock timeouts, a connection lost mid-transaction, SQLite's "database
is locked") roll back and run ``fn`` again, up to :data:`MAX_ATTEMPTS` times: ``fn`` must therefore
do nothing but database work.  A failure while committing is never retried, since whether the
commit happened is then unknown.

A failure that means the database is out of reach (a connection refused or lost, SQLAlchemy's
``OperationalError`` and ``InterfaceError``: the transient ones once their retries are used up)
reaches the caller as :class:`~s3balance.db.errors.MetadataUnavailable`, so that no code above the
store needs to know SQLAlchemy's exceptions.

Every call's duration, retries included, is observed in ``s3_balance_db_query_duration_seconds``
labelled with the store operation (the function's name without its leading underscore).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from s3balance.db.engine import READ_ONLY_OPTION, STATEMENT_LOG
from s3balance.db.errors import MetadataUnavailable, MetadataUnreachable
from s3balance.db.prepared import Direct
from s3balance.labelled import labelled
from s3balance.metrics import DB_QUERY_DURATION

T = TypeVar("T")

MAX_ATTEMPTS = 5

log = Logger()

#: PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock, lock not available.
_PG_TRANSIENT = {"40001", "40P01", "55P03"}
#: MySQL/MariaDB error numbers worth a retry: lock wait timeout, deadlock.
_MYSQL_TRANSIENT = {1205, 1213}


class DBPool(Protocol):
    """What :class:`~s3balance.db.store.MetadataStore` needs from a pool."""

    engine: sa.Engine

    def do(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``fn(connection, *args)`` in a read-write transaction."""
        ...

    def do_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``fn(connection, *args)`` in a transaction that only reads."""
        ...

    def do_single_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``fn(connection, *args)``, which issues exactly one read statement through
        :class:`~s3balance.db.prepared.Prepared`, with as little around it as the database
        allows; the same answer as :meth:`do_read`."""
        ...

    def do_with_engine(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``fn(engine, *args)``, outside any transaction (migrations)."""
        ...


def is_transient(error: BaseException) -> bool:
    """Whether running the same transaction again may well succeed."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    if getattr(orig, "pgcode", None) in _PG_TRANSIENT:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database table is locked" in message


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached or used right now."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError)


def operation_name(fn: Callable[..., Any]) -> str:
    """The metrics label of a store function: ``_put_object`` is ``put_object``."""
    return str(getattr(fn, "__name__", "unknown")).lstrip("_") or "unknown"


def run_transaction(
    engine: sa.Engine, fn: Callable[..., T], args: tuple[Any, ...], read_only: bool = False
) -> T:
    """Run ``fn(connection, *args)`` in a transaction in the calling thread, retrying transient
    failures (see the module docstring).

    :raises MetadataUnavailable: the database is out of reach.
    """
    started = time.monotonic()
    try:
        return _run_with_retries(engine, fn, args, read_only)
    except _NotConnected as failed:
        error = failed.error
        if is_unavailable(error):
            raise MetadataUnreachable(str(error.orig or error)) from error
        raise error from None
    except sa.exc.DBAPIError as error:
        if is_unavailable(error):
            raise MetadataUnavailable(str(error.orig or error)) from error
        raise
    finally:
        labelled(DB_QUERY_DURATION, operation_name(fn)).observe(time.monotonic() - started)


def _run_with_retries(
    engine: sa.Engine, fn: Callable[..., T], args: tuple[Any, ...], read_only: bool
) -> T:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            connecting = engine.connect()
        except sa.exc.DBAPIError as error:
            raise _NotConnected(error) from error
        with connecting as connection:
            if read_only:
                connection.execution_options(**{READ_ONLY_OPTION: True})
            transaction = connection.begin()
            try:
                result = fn(connection, *args)
            except Exception as error:
                try:
                    transaction.rollback()
                except sa.exc.DBAPIError:
                    pass  # the connection is gone; closing it below discards it
                if attempt < MAX_ATTEMPTS and is_transient(error):
                    log.info(
                        "retrying {fn} after transient database error: {error}",
                        fn=getattr(fn, "__name__", fn),
                        error=error,
                    )
                    time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
                    continue
                raise
            transaction.commit()
            return result
    raise AssertionError("unreachable")  # pragma: no cover


class _NotConnected(Exception):
    """No connection could be had (:class:`MetadataUnreachable`)."""

    def __init__(self, error: sa.exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


def run_single_read(engine: sa.Engine, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """Run ``fn(direct, *args)``, a function that issues one read statement through
    :class:`~s3balance.db.prepared.Prepared`, on a pooled DBAPI connection with no transaction
    of SQLAlchemy's around it (one statement is its own snapshot).  Any database error sends it
    down :func:`run_transaction` instead, which retries and maps the error as for every call.
    """
    started = time.monotonic()
    try:
        connection = engine.raw_connection()
    except (sa.exc.DBAPIError, engine.dialect.loaded_dbapi.Error):
        return run_transaction(engine, fn, args, True)
    try:
        result = fn(Direct(connection, engine.dialect), *args)
    except sa.exc.DBAPIError:
        connection.close()
        return run_transaction(engine, fn, args, True)
    except BaseException:
        connection.close()
        raise
    connection.close()
    labelled(DB_QUERY_DURATION, operation_name(fn)).observe(time.monotonic() - started)
    return result


def _single_reads_allowed() -> bool:
    """Statements logged (``database.log_level`` info or debug) go through SQLAlchemy."""
    return not STATEMENT_LOG.isEnabledFor(logging.INFO)


class Workers:
    """Threads that run calls and hand their results back to the reactor thread.

    What :func:`twisted.internet.threads.deferToThreadPool` on a Twisted ``ThreadPool`` does,
    for less CPU on both sides of every database call: a call is one ``SimpleQueue.put``
    (Twisted's pool goes through a coordinator, a context copy and two closures), and results
    that finish while the reactor is busy go back together, with one ``callFromThread`` (one
    write to the reactor's waker pipe, one wake-up) for all of them instead of one each.

    Threads start on demand, up to ``size``; calls queued before :meth:`start` run once it is
    called.  :meth:`stop` lets every queued call finish, then ends the threads.
    """

    def __init__(self, reactor: IReactorFromThreads, size: int, name: str) -> None:
        self.size = max(1, size)
        self._reactor = reactor
        self._name = name
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: Threads waiting for a call that no queued call has claimed yet.
        self._idle = 0
        #: Calls queued before start.
        self._waiting = 0
        self._started = False
        self._finished: list[tuple[defer.Deferred[Any], bool, Any]] = []

    def start(self) -> None:
        with self._lock:
            self._started = True
            # A thread spawned for a call is taken by it; one spawned for nothing waits idle.
            wanted, self._waiting = min(self.size, self._waiting), 0
            for _ in range(wanted):
                self._spawn()
            if not wanted:
                self._spawn()
                self._idle += 1

    def stop(self) -> None:
        """Wait for the queued calls to finish and end the threads (blocks the caller)."""
        with self._lock:
            self._started = False
            running, self._threads = self._threads, []
            self._idle = 0
        for _ in running:
            self._calls.put(None)
        for thread in running:
            thread.join()

    def submit(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        done: defer.Deferred[T] = defer.Deferred()
        with self._lock:
            if not self._started:
                self._waiting += 1
            elif self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                self._spawn()
        self._calls.put((done, fn, args))
        return done

    def _spawn(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        calls = self._calls
        while True:
            call = calls.get()
            if call is None:
                return
            done, fn, args = call
            try:
                outcome: tuple[defer.Deferred[Any], bool, Any] = (done, True, fn(*args))
            except BaseException:
                outcome = (done, False, Failure())
            self._finish([outcome])

    def _finish(self, outcomes: list[tuple[defer.Deferred[Any], bool, Any]]) -> None:
        with self._lock:
            first = not self._finished
            self._finished.extend(outcomes)
            self._idle += 1
        if first:
            self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """In the reactor thread: fire every call finished since the last delivery."""
        with self._lock:
            finished, self._finished = self._finished, []
        for done, succeeded, value in finished:
            if succeeded:
                done.callback(value)
            else:
                done.errback(value)


#: Write transactions one group may hold (see :class:`GroupedWriter`).
MAX_GROUP = 32


class GroupedWriter(Workers):
    """SQLite's one writer thread (see :class:`DBThreadPool`), running the write transactions
    queued while it was busy as one transaction: one ``BEGIN IMMEDIATE`` and one ``COMMIT`` for
    all of them, and one pass through the GIL and the scheduler instead of one per commit.
    Under a burst of small PUTs, commits otherwise waited in line for milliseconds each while
    taking a quarter of a millisecond to run.

    A group is the same as running its calls one after the other, each in its own transaction,
    in the order they were queued: each call sees what the ones before it wrote.  When any call
    of a group fails, the group is rolled back and every call runs again on its own
    (:func:`run_transaction`: retries, and each call's own outcome), so a failed condition, a
    missing bucket or a transient error reaches only its own caller.  A failure of the commit
    itself reaches every caller of the group, as a commit failure reaches its one caller.

    Its calls are store functions: :meth:`submit` ``(fn, *args)`` runs ``fn(connection, *args)``.
    """

    def __init__(
        self, reactor: IReactorFromThreads, engine: Callable[[], sa.Engine], name: str
    ) -> None:
        """:param engine: the pool's engine now (it is read at every group)."""
        super().__init__(reactor, 1, name)
        self._engine = engine

    def _work(self) -> None:
        calls = self._calls
        stopping = False
        while not stopping:
            call = calls.get()
            if call is None:
                return
            group = [call]
            while len(group) < MAX_GROUP:
                try:
                    more = calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True  # after this group: stop() queued one end per thread
                    break
                group.append(more)
            outcomes = run_group(self._engine(), [(fn, args) for _, fn, args in group])
            pairs = zip(group, outcomes, strict=True)
            self._finish([(done, ok, value) for (done, _, _), (ok, value) in pairs])


def run_group(
    engine: sa.Engine, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    """Run each ``fn(connection, *args)`` of ``calls`` in one write transaction (see
    :class:`GroupedWriter`); ``(True, result)`` or ``(False, failure)`` for each, in order."""
    if len(calls) > 1:
        started = time.monotonic()
        try:
            results = _group_transaction(engine, calls)
        except sa.exc.DBAPIError as error:
            # The commit failed: whether it happened is unknown, for every call of the group.
            failed: Exception = error
            if is_unavailable(error):
                failed = MetadataUnavailable(str(error.orig or error))
                failed.__cause__ = error
            return [(False, Failure(failed)) for _ in calls]
        if results is not None:
            duration = time.monotonic() - started
            for fn, _ in calls:
                labelled(DB_QUERY_DURATION, operation_name(fn)).observe(duration)
            return [(True, result) for result in results]
    outcomes: list[tuple[bool, Any]] = []
    for fn, args in calls:
        try:
            outcomes.append((True, run_transaction(engine, fn, args)))
        except BaseException:
            outcomes.append((False, Failure()))
    return outcomes


def _group_transaction(
    engine: sa.Engine, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[Any] | None:
    """The results of ``calls`` run in one transaction and committed, or None when one of them
    (or the transaction's start) failed and nothing was committed.

    :raises sa.exc.DBAPIError: the commit failed.
    """
    try:
        connection = engine.connect()
    except sa.exc.DBAPIError:
        return None
    with connection:
        try:
            transaction = connection.begin()
            results = [fn(connection, *args) for fn, args in calls]
        except Exception:
            try:
                connection.rollback()
            except sa.exc.DBAPIError:
                pass  # the connection is gone; closing it discards it
            return None
        transaction.commit()
        return results


class DBThreadPool:
    """Dedicated threads for database work (see the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        reactor: IReactorFromThreads,
        max_threads: int,
        name: str = "s3balance-db",
        one_writer: bool | None = None,
    ) -> None:
        """:param one_writer: run write transactions on one thread of their own, reads on the
            others; by default for SQLite only.  SQLite has one writer at a time: two threads
            that both begin a write make one sleep in SQLite's busy handler, in growing steps,
            and a burst of small PUTs then waits in those sleeps.  On one thread, the next write
            starts the moment the previous one commits, with no trip through the reactor, and
            reads still run beside it (WAL).  Never for a pool of one thread.
        """
        self.engine = engine
        self._threadpool = Workers(reactor, max_threads, name)
        if one_writer is None:
            # With one thread there is nothing to keep apart, and an in-memory database has one
            # shared connection that two threads must never use at once.
            one_writer = engine.dialect.name == "sqlite" and max_threads > 1
        self._writer: Workers = (
            GroupedWriter(reactor, lambda: self.engine, f"{name}-writer")
            if one_writer
            else self._threadpool
        )
        self.running = False

    @property
    def max_threads(self) -> int:
        return self._threadpool.size

    def start(self) -> None:
        if not self.running:
            self._threadpool.start()
            if self._writer is not self._threadpool:
                self._writer.start()
            self.running = True

    def stop(self) -> None:
        """Wait for calls in progress, end the threads and close every connection.

        Blocks the calling thread until running transactions end: call it at shutdown only.
        """
        if self.running:
            self.running = False
            if self._writer is not self._threadpool:
                self._writer.stop()
            self._threadpool.stop()
        self.engine.dispose()

    def do(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if isinstance(self._writer, GroupedWriter):
            return self._writer.submit(fn, *args)
        return self._writer.submit(run_transaction, self.engine, fn, args)

    def do_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return self._threadpool.submit(run_transaction, self.engine, fn, args, True)

    def do_single_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if not _single_reads_allowed():
            return self.do_read(fn, *args)
        return self._threadpool.submit(run_single_read, self.engine, fn, args)

    def do_with_engine(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return self._threadpool.submit(fn, self.engine, *args)


class InlineDBPool:
    """Runs each call synchronously in the calling thread; the Deferred has fired on return.

    For tests (no reactor needed, and several Python threads can race real transactions) and for
    offline tools.  Never use it in the daemon: it blocks the reactor.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def stop(self) -> None:
        self.engine.dispose()

    def do(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(run_transaction, self.engine, fn, args)

    def do_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(run_transaction, self.engine, fn, args, True)

    def do_single_read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if not _single_reads_allowed():
            return self.do_read(fn, *args)
        return defer.maybeDeferred(run_single_read, self.engine, fn, args)

    def do_with_engine(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(fn, self.engine, *args)
