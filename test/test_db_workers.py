"""The database pool's threads: every call runs once, results come back to the reactor thread
in batches, failures come back as failures, and stopping lets queued calls finish."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from twisted.python.failure import Failure

from s3balance.db import engine as db_engine
from s3balance.db import model
from s3balance.db.pool import DBThreadPool, Workers


class HeldReactor:
    """``callFromThread`` that keeps what it is given, to be run when the test says."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Callable[[], Any]] = []

    def callFromThread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self.calls.append(lambda: fn(*args, **kwargs))

    def run_calls(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for call in calls:
            call()
        return len(calls)


def results(deferreds: list[Any]) -> list[Any]:
    found: list[Any] = []
    for deferred in deferreds:
        deferred.addBoth(found.append)
    return found


def test_results_finished_together_wake_the_reactor_once() -> None:
    """Ten calls finishing while the reactor is busy: one ``callFromThread`` (one write to the
    reactor's waker) delivers all ten, where Twisted's ``deferToThreadPool`` made ten."""
    reactor = HeldReactor()
    workers = Workers(reactor, 4, "test")
    workers.start()
    gate = threading.Event()
    calls = [workers.submit(lambda n: gate.wait(10) and n * n, n) for n in range(10)]
    got = results(calls)
    gate.set()
    workers.stop()  # every queued call has finished
    assert got == []
    assert reactor.run_calls() == 1
    assert sorted(got) == [n * n for n in range(10)]


def test_the_database_pool_delivers_results_in_batches(tmp_path: Path) -> None:
    engine = db_engine.create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    model.metadata.create_all(engine)
    reactor = HeldReactor()
    pool = DBThreadPool(engine, reactor, 4)  # type: ignore[arg-type]
    pool.start()
    gate = threading.Event()
    reads = [pool.do_read(lambda connection: gate.wait(10)) for _ in range(8)]
    got = results(reads)
    gate.set()
    pool.stop()
    assert reactor.run_calls() == 1
    assert got == [True] * 8


def test_a_failing_call_fails_its_deferred_only() -> None:
    reactor = HeldReactor()
    workers = Workers(reactor, 2, "test")
    workers.start()

    def fail() -> None:
        raise KeyError("gone")

    got = results([workers.submit(fail), workers.submit(lambda: "fine")])
    workers.stop()
    reactor.run_calls()
    failure, fine = sorted(got, key=lambda value: isinstance(value, str))
    assert isinstance(failure, Failure) and failure.check(KeyError)
    assert fine == "fine"


def test_calls_made_before_start_run_after_it_on_at_most_size_threads() -> None:
    reactor = HeldReactor()
    workers = Workers(reactor, 3, "test")
    names: set[str] = set()
    lock = threading.Lock()
    gate = threading.Event()

    def note() -> None:
        gate.wait(10)
        with lock:
            names.add(threading.current_thread().name)

    got = results([workers.submit(note) for _ in range(20)])
    workers.start()
    gate.set()
    workers.stop()
    while reactor.run_calls():
        pass
    assert len(got) == 20
    assert 1 <= len(names) <= 3


@pytest.mark.parametrize("size", [1, 4])
def test_threads_start_on_demand(size: int) -> None:
    reactor = HeldReactor()
    workers = Workers(reactor, size, "test")
    workers.start()
    gate = threading.Event()
    running = threading.Semaphore(0)

    def hold() -> None:
        running.release()
        gate.wait(10)

    calls = [workers.submit(hold) for _ in range(size + 2)]
    for _ in range(size):
        assert running.acquire(timeout=10)  # every thread took a call: none waits for another
    assert not running.acquire(timeout=0.05)  # and no more than size of them run
    gate.set()
    workers.stop()
    while reactor.run_calls():
        pass
    assert len(results(calls)) == size + 2


class SQLiteWriter:
    """A file database, its pool on a held reactor, and a count of write transactions begun."""

    def __init__(self, tmp_path: Path) -> None:
        self.engine = db_engine.create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
        model.metadata.create_all(self.engine)
        self.reactor = HeldReactor()
        self.pool = DBThreadPool(self.engine, self.reactor, 4)  # type: ignore[arg-type]
        self.begun = 0
        event.listen(self.engine, "begin", self._begin)
        self.gate = threading.Event()

    def _begin(self, connection: sa.Connection) -> None:
        if not connection.get_execution_options().get(db_engine.READ_ONLY_OPTION):
            self.begun += 1

    def hold(self, connection: sa.Connection) -> None:
        self.gate.wait(10)

    def run(self, writes: list[Callable[..., Any]]) -> list[Any]:
        """Hold the writer, queue ``writes``, let it go; what each call came back with."""
        self.pool.start()
        got = results([self.pool.do(self.hold)] + [self.pool.do(write) for write in writes])
        self.gate.set()
        self.pool.stop()
        while self.reactor.run_calls():
            pass
        return got[1:] if got and got[0] is None else got


def put_usage(name: str, used: int) -> Callable[[sa.Connection], str]:
    def write(connection: sa.Connection) -> str:
        table = model.backend_usage
        updated = connection.execute(
            table.update().where(table.c.backend == name).values(used_bytes=used)
        ).rowcount
        if not updated:
            connection.execute(
                table.insert().values(backend=name, used_bytes=used, object_count=0)
            )
        return name

    return write


def usage_rows(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        table = model.backend_usage
        return dict(connection.execute(sa.select(table.c.backend, table.c.used_bytes)).all())


def test_sqlite_writes_queued_together_commit_as_one_transaction(tmp_path: Path) -> None:
    """Twenty writes queued behind a busy writer: one BEGIN IMMEDIATE and one COMMIT for all
    (there was one each), in queue order, every caller told its own result."""
    writer = SQLiteWriter(tmp_path)
    writes = [put_usage(f"b{n % 5}", n) for n in range(20)]
    got = writer.run(writes)
    assert sorted(got) == sorted(f"b{n % 5}" for n in range(20))
    assert writer.begun <= 3  # the held call, then the queued ones in one group
    assert usage_rows(writer.engine) == {f"b{n}": 15 + n for n in range(5)}  # the last wins


def test_a_failing_write_of_a_group_fails_alone(tmp_path: Path) -> None:
    writer = SQLiteWriter(tmp_path)

    def refused(connection: sa.Connection) -> None:
        put_usage("refused", 1)(connection)
        raise KeyError("refused")

    got = writer.run([put_usage("a", 1), refused, put_usage("b", 2)])
    assert [value for value in got if isinstance(value, str)] == ["a", "b"]
    (failure,) = [value for value in got if isinstance(value, Failure)]
    assert failure.check(KeyError)
    assert usage_rows(writer.engine) == {"a": 1, "b": 2}  # nothing of the refused one
