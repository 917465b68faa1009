"""The expiry of abandoned multipart uploads, with a real SQLite store, real local backends and
an injected clock."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from s3balance.backends.interface import BackendUnavailable, IBackend
from s3balance.config import MultipartConfig
from s3balance.db.records import UploadRecord
from s3balance.housekeeping import DeletionSweeper, UploadExpiry
from s3balance.multipart import MultipartUploads
from s3balance.operations import Operation
from s3balance.web.objects import BytesBody
from test.support.daemon import Daemon, local_buckets, start_daemon

EXPIRY = 7 * 24 * 3600.0


class FlakyPool:
    """The daemon's pool, except that aborts on ``down`` fail as an unreachable backend's do."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.down: set[str] = set()

    def get(self, name: str) -> IBackend:
        backend = self.pool.get(name)
        if name not in self.down:
            return backend
        flaky = self

        class Down:
            def abort_multipart_upload(self, key: str, upload_id: str) -> Any:
                if name in flaky.down:
                    return defer.fail(BackendUnavailable(name, "connection refused"))
                return backend.abort_multipart_upload(key, upload_id)

        return Down()  # type: ignore[return-value]

    def record_operation(
        self, name: str, operation: Operation, bytes_in: int = 0, bytes_out: int = 0
    ) -> None:
        self.pool.record_operation(name, operation, bytes_in, bytes_out)


class ExpiryTests(unittest.TestCase):
    timeout = 60

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-hk-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.daemon: Daemon = await start_daemon(
            self.workdir, local_buckets(self.workdir, ["r1", "r2"])
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.store = self.daemon.store
        self.uploads = MultipartUploads(self.daemon.gateway, min_part_size=1)
        self.clock = task.Clock()
        self.pool = FlakyPool(self.daemon.pool)

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def upload_with_part(self, key: str, initiated: float) -> UploadRecord:
        """An upload with one part on its backend, recorded as initiated at ``initiated``."""
        upload = await self.uploads.create("vb", key, {}, {})
        await self.uploads.upload_part("vb", key, upload.upload_id, 1, BytesBody(b"x" * 100), 100)
        parts = await self.store.list_parts(upload.upload_id)
        # Re-record it with the wanted age (the store has no "set initiated").
        await self.store.abort_upload(upload.upload_id)
        aged = UploadRecord(
            upload.upload_id,
            upload.bucket,
            upload.key,
            upload.backend,
            upload.real_key,
            upload.backend_upload_id,
            initiated,
        )
        await self.store.create_upload(aged)
        for part in parts:
            await self.store.put_part(part)
        return aged

    def upload_dirs(self, backend: str) -> list[str]:
        path = os.path.join(self.workdir, backend, "uploads")
        return os.listdir(path) if os.path.isdir(path) else []

    def expiry(self, period: float = 3600.0) -> UploadExpiry:
        return UploadExpiry(self.store, self.pool, self.clock, EXPIRY, period)

    async def test_old_uploads_are_aborted_and_young_ones_stay(self) -> None:
        old = await self.upload_with_part("old", initiated=1000.0)
        young = await self.upload_with_part("young", initiated=1000.0 + EXPIRY)
        self.clock.advance(1000.0 + EXPIRY + 1)
        self.assertEqual(await self.expiry().run_once(), 1)
        self.assertIsNone(await self.store.get_upload(old.upload_id))
        self.assertIsNotNone(await self.store.get_upload(young.upload_id))
        self.assertNotIn(old.backend_upload_id, self.upload_dirs(old.backend))
        self.assertIn(young.backend_upload_id, self.upload_dirs(young.backend))
        # The old upload's part no longer counts as used; the young one's still does.
        usage = await self.store.usage()
        self.assertEqual(usage[old.backend].used_bytes, 0 if old.backend != young.backend else 100)
        self.assertEqual(usage[young.backend].used_bytes, 100)

    async def test_an_unavailable_backend_keeps_the_row_until_a_later_round(self) -> None:
        old = await self.upload_with_part("old", initiated=0.0)
        other = await self.upload_with_part("other", initiated=0.0)
        self.assertNotEqual(old.backend, other.backend)
        self.pool.down.add(old.backend)
        self.clock.advance(EXPIRY + 10)
        expiry = self.expiry()
        self.assertEqual(await expiry.run_once(), 1)
        self.assertIsNotNone(await self.store.get_upload(old.upload_id))
        self.assertIn(old.backend_upload_id, self.upload_dirs(old.backend))
        self.assertIsNone(await self.store.get_upload(other.upload_id))
        self.pool.down.clear()
        self.assertEqual(await expiry.run_once(), 1)
        self.assertIsNone(await self.store.get_upload(old.upload_id))
        self.assertEqual(self.upload_dirs(old.backend), [])

    async def test_the_loop_runs_every_period_and_survives_failures(self) -> None:
        calls: list[float] = []
        real = self.store.uploads_initiated_before

        def failing_once(when: float) -> Any:
            calls.append(when)
            if len(calls) == 1:
                return defer.fail(RuntimeError("database went away"))
            return real(when)

        self.store.uploads_initiated_before = failing_once  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store, "uploads_initiated_before", real)
        old = await self.upload_with_part("old", initiated=0.0)
        self.clock.advance(EXPIRY + 10)
        service = self.expiry(period=60.0)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(calls, [10.0])  # first round at start, and it failed (logged)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNotNone(await self.store.get_upload(old.upload_id))
        self.clock.advance(60.0)
        for _ in range(200):  # the round runs on the database thread: wait for it, bounded
            if service.aborted:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(calls, [10.0, 70.0])
        self.assertEqual(service.aborted, 1)
        self.assertIsNone(await self.store.get_upload(old.upload_id))

    def test_defaults_come_from_the_configuration(self) -> None:
        service = UploadExpiry.from_config(MultipartConfig(), None, None, task.Clock())  # type: ignore[arg-type]
        self.assertEqual((service.expiry, service.period), (7 * 24 * 3600.0, 3600.0))
        service = UploadExpiry(None, None, task.Clock())  # type: ignore[arg-type]
        self.assertEqual((service.expiry, service.period), (7 * 24 * 3600.0, 3600.0))


class _CountingGateway:
    """Stands in for the gateway's sweep: counts calls, fails the first one."""

    def __init__(self) -> None:
        self.calls = 0

    def sweep_deletions(self, limit: int = 1000) -> defer.Deferred[int]:
        self.calls += 1
        if self.calls == 1:
            return defer.fail(RuntimeError("database went away"))
        return defer.succeed(2)


class DeletionSweeperTests(unittest.TestCase):
    def test_sweeps_every_period_and_survives_failures(self) -> None:
        clock = task.Clock()
        gateway = _CountingGateway()
        sweeper = DeletionSweeper(gateway, clock, period=5.0)
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        self.assertEqual(gateway.calls, 1)  # at start, failed and logged
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(5.0)
        clock.advance(5.0)
        self.assertEqual((gateway.calls, sweeper.deleted), (3, 4))
        sweeper.stopService()
        clock.advance(50.0)
        self.assertEqual(gateway.calls, 3)
