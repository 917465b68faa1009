"""Replicated writes and reads at the gateway, over local directories: all copies or none, every
copy removed when a write does not complete, reads that skip a replica that lost its bytes."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from s3balance import errors
from s3balance.config import Config
from s3balance.db.store import Condition
from s3balance.net.bytesproducer import BytesProducer
from test.support.bodies import BodyFailed, GeneratedBody, collect, generated_md5
from test.support.daemon import Daemon, local_buckets, start_daemon
from test.test_gateway import HeldBody

BACKENDS = ["r1", "r2", "r3"]


class ReplicatedGatewayTests(unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        for bucket in config.virtual_buckets:
            bucket.replicas = 2

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-replicas-gw-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.daemon: Daemon = await start_daemon(
            self.workdir, local_buckets(self.workdir, BACKENDS), configure=self.configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.gateway = self.daemon.gateway

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def on_backends(self) -> dict[str, list[str]]:
        return {name: await self.daemon.real_keys(name) for name in BACKENDS}

    async def copies(self) -> int:
        return sum(len(keys) for keys in (await self.on_backends()).values())

    async def read(self, key: str) -> bytes:
        record = await self.gateway.get_object_record("vb", key)
        async with self.gateway.reading(record) as stream:
            return await collect(stream)

    async def test_a_write_makes_two_copies_on_two_backends(self) -> None:
        record = await self.gateway.put_object("vb", "k", BytesProducer(b"abc"), 3, {}, {})
        self.assertEqual(len({location.backend for location in record.locations}), 2)
        self.assertEqual(len({location.real_key for location in record.locations}), 1)
        self.assertEqual(await self.copies(), 2)
        self.assertEqual(await self.read("k"), b"abc")

    async def test_an_empty_object_gets_two_copies_too(self) -> None:
        record = await self.gateway.put_object("vb", "empty", BytesProducer(b""), 0, {}, {})
        self.assertEqual(len(record.locations), 2)
        self.assertEqual(await self.read("empty"), b"")

    async def test_a_body_failing_midway_leaves_no_copy_and_no_row(self) -> None:
        body = GeneratedBody(1 << 20, fail_after=300_000)
        with self.assertRaises(BodyFailed):
            await self.gateway.put_object("vb", "k", body, body.length, {}, {})
        self.assertIsNone(await self.daemon.store.get_object("vb", "k"))
        self.assertEqual(await self.copies(), 0)
        self.assertEqual(await self.daemon.store.due_deletions(1e12), [])

    async def test_a_commit_that_loses_its_condition_removes_both_copies(self) -> None:
        body = HeldBody(b"first")
        writing = defer.ensureDeferred(
            self.gateway.put_object(
                "vb", "k", body, body.length, {}, {}, condition=Condition(if_none_match="*")
            )
        )
        await body.written
        await self.gateway.put_object("vb", "k", BytesProducer(b"second"), 6, {}, {})
        body.release.callback(None)
        with self.assertRaises(errors.S3Error) as caught:
            await writing
        self.assertEqual(caught.exception.code, "PreconditionFailed")
        self.assertEqual(await self.copies(), 2)
        self.assertEqual(await self.read("k"), b"second")

    async def test_a_copy_into_a_replicated_bucket_makes_two_copies(self) -> None:
        size = 600_000
        await self.gateway.put_object("vb", "src", GeneratedBody(size, 5), size, {}, {})
        source = await self.gateway.get_object_record("vb", "src")
        copied = await self.gateway.copy_object(source, "vb", "dst", {}, {})
        self.assertEqual(len({location.backend for location in copied.locations}), 2)
        self.assertEqual(hashlib.md5(await self.read("dst")).hexdigest(), generated_md5(size, 5))
        self.assertEqual(await self.copies(), 4)

    async def test_a_replica_that_lost_its_bytes_is_skipped(self) -> None:
        record = await self.gateway.put_object("vb", "k", BytesProducer(b"kept"), 4, {}, {})
        lost = record.locations[0]
        await self.daemon.backends[lost.backend].delete_object(lost.real_key)
        for _ in range(3):  # whichever replica the read order tries first
            self.assertEqual(await self.read("k"), b"kept")

    async def test_fewer_healthy_backends_than_copies_refuses_the_write(self) -> None:
        self.daemon.health.mark_failure("r1", "down")
        self.daemon.health.mark_failure("r2", "down")
        with self.assertRaises(errors.S3Error) as caught:
            await self.gateway.put_object("vb", "k", BytesProducer(b"x"), 1, {}, {})
        self.assertEqual(
            (caught.exception.status, caught.exception.code), (503, "ServiceUnavailable")
        )
        self.assertIn("2 copies", str(caught.exception.message))
        self.assertEqual(await self.copies(), 0)

    async def test_deleting_removes_every_copy_and_its_usage(self) -> None:
        await self.gateway.put_object("vb", "k", BytesProducer(b"abc"), 3, {}, {})
        usage: Any = self.daemon.usage
        self.assertEqual(sum(usage.usage(name).used_bytes for name in BACKENDS), 6)
        await self.gateway.delete_object("vb", "k")
        self.assertEqual(await self.copies(), 0)
        self.assertEqual(sum(usage.usage(name).used_bytes for name in BACKENDS), 0)


class ReplicatedRebuildTests(unittest.TestCase):
    """A rebuild of a lost index gives each replicated write back all its copies; none is left
    for scrub as an orphan (which would silently bring the object down to one copy)."""

    timeout = 60

    async def test_rebuild_restores_every_copy_of_a_replicated_write(self) -> None:
        from s3balance.rebuild import Checkpoint, Rebuilder
        from s3balance.scrub import scrub
        from test import dbfixture
        from test.support.daemon import in_thread

        workdir = tempfile.mkdtemp(prefix="s3b-replicas-rebuild-")
        self.addCleanup(shutil.rmtree, workdir, True)

        def two_copies(config: Config) -> None:
            for bucket in config.virtual_buckets:
                bucket.replicas = 2

        daemon = await start_daemon(workdir, local_buckets(workdir, BACKENDS), configure=two_copies)
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        keys = [f"k{index}" for index in range(6)]
        for key in keys:
            data = key.encode() * 10
            await daemon.gateway.put_object("vb", key, BytesProducer(data), len(data), {}, {})
        before = {key: await daemon.store.get_object("vb", key) for key in keys}
        await in_thread(dbfixture.empty_all_tables, daemon.store.pool.engine)

        rebuilder = Rebuilder(daemon.store, daemon.backends, reactor)
        report = await rebuilder.rebuild(Checkpoint(None), ["vb"])
        self.assertEqual(report.failures, 0, report.summary())
        self.assertEqual(sum(b.adopted for b in report.backends.values()), len(keys))
        self.assertEqual(sum(b.replica_copies for b in report.backends.values()), len(keys))
        self.assertEqual(sum(b.superseded_count for b in report.backends.values()), 0)
        for key in keys:
            record = await daemon.store.get_object("vb", key)
            assert record is not None and before[key] is not None
            self.assertEqual(set(record.locations), set(before[key].locations), key)
        found = await scrub(daemon.store, daemon.backends, remove_orphans=False, grace=0)
        self.assertEqual([o for b in found.backends.values() for o in b.orphans], [])
        # A second run finds every copy indexed already.
        rebuilder = Rebuilder(daemon.store, daemon.backends, reactor)
        again = await rebuilder.rebuild(Checkpoint(None), ["vb"])
        self.assertEqual(sum(b.present for b in again.backends.values()), 2 * len(keys))
