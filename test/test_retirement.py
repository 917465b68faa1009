"""Retirement's deletion of replaced bytes: queue rows forgotten in batches."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from twisted.internet import defer, reactor
from twisted.trial import unittest as twisted_unittest

from s3balance.backends.interface import IBackend
from s3balance.backends.memory import MemoryBackend
from s3balance.db import deletions, model
from s3balance.db import engine as db_engine
from s3balance.db.pool import DBThreadPool
from s3balance.db.records import Location
from s3balance.db.store import MetadataStore, Replacement
from s3balance.retirement import Retirement


class _Backends:
    def __init__(self, *backends: MemoryBackend) -> None:
        self._backends = {backend.name: backend for backend in backends}

    def get(self, name: str) -> IBackend:
        return self._backends[name]  # type: ignore[return-value]


class ForgetInBatchesTests(twisted_unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        self.engine = db_engine.create_engine(f"sqlite:///{directory}/retirement.db")
        model.metadata.create_all(self.engine)
        self.pool = DBThreadPool(self.engine, reactor, 2)  # type: ignore[arg-type]
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.store = MetadataStore(self.pool)
        self.commits = 0
        event.listen(self.engine, "commit", self._committed)

    def _committed(self, connection: sa.Connection) -> None:
        self.commits += 1

    async def test_rows_of_deletions_finished_meanwhile_go_in_one_transaction(self) -> None:
        """Five replacements retired at once (five PUTs overwriting five keys): the first row is
        forgotten at once, the four deleted while that transaction ran in one more."""
        backend = MemoryBackend("b", reactor)
        locations = [Location("b", f"old-{n}") for n in range(5)]
        ids = await self.store.queue_deletions(locations, 0.0)
        retirement = Retirement(self.store, _Backends(backend), reactor, lambda: 0.0)
        before = self.commits
        replacements = [
            Replacement(1, (location,), [location], (pending,))
            for location, pending in zip(locations, ids, strict=True)
        ]
        await defer.gatherResults(
            [defer.ensureDeferred(retirement.retire(each)) for each in replacements]
        )
        self.assertEqual(self.commits - before, 2)
        self.assertEqual(await self.store.due_deletions(1.0, 10), [])

    async def test_a_failed_batch_leaves_its_rows_for_the_sweep(self) -> None:
        backend = MemoryBackend("b", reactor)
        locations = [Location("b", f"old-{n}") for n in range(3)]
        ids = await self.store.queue_deletions(locations, 0.0)
        retirement = Retirement(self.store, _Backends(backend), reactor, lambda: 0.0)
        failing: list[Any] = []
        original_forget = deletions._forget_deletions

        def refuse(*_: Any) -> None:
            failing.append(1)
            raise sa.exc.OperationalError("DELETE", {}, Exception("disk I/O error"))

        # The forget runs on the DBAPI cursor (no SQLAlchemy event to hook): its statement fails.
        self.patch(deletions, "_forget_deletions", refuse)
        await defer.gatherResults(
            [
                defer.ensureDeferred(
                    retirement.retire(Replacement(1, (location,), [location], (pending,)))
                )
                for location, pending in zip(locations, ids, strict=True)
            ]
        )
        self.patch(deletions, "_forget_deletions", original_forget)
        self.assertTrue(failing)
        due = await self.store.due_deletions(1.0, 10)
        self.assertEqual(sorted(pending.id for pending in due), sorted(ids))
