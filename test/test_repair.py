"""Repair at the gateway, over local directories: lost, missing and surplus copies of replicated
objects are brought back to the bucket's ``replicas``, byte-exact, and nothing is left behind
when the object changes under a repair."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from s3balance import errors, metrics
from s3balance.config import Config
from s3balance.db.records import Location, ObjectRecord
from s3balance.health import BackendHealth
from s3balance.net.bytesproducer import BytesProducer
from s3balance.repair import Repairer
from s3balance.scrub import scrub
from test.support import unique_bucket_name
from test.support.bodies import collect
from test.support.daemon import Daemon, local_buckets, server_buckets, start_daemon
from test.support.seaweedfs import shared_seaweedfs

BACKENDS = ["r1", "r2", "r3"]


def body_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 300 + key.encode()


class RepairBase(unittest.TestCase):
    """A daemon over local directories whose virtual bucket ``vb`` keeps ``replicas`` copies;
    repair takes a copy as lost as soon as its backend is unhealthy."""

    timeout = 60
    replicas = 2

    def configure(self, config: Config) -> None:
        for bucket in config.virtual_buckets:
            bucket.replicas = self.replicas
        config.repair.after = 0.0

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-repair-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.daemon: Daemon = await start_daemon(
            self.workdir, local_buckets(self.workdir, BACKENDS), configure=self.configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.gateway = self.daemon.gateway
        self.repairer: Repairer = self.daemon.components.repair

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def write(self, keys: list[str]) -> dict[str, ObjectRecord]:
        written = {}
        for key in keys:
            data = body_of(key)
            written[key] = await self.gateway.put_object(
                "vb", key, BytesProducer(data), len(data), {"content-type": "text/x-k"}, {"m": key}
            )
        return written

    def wipe(self, name: str) -> None:
        """Empty backend ``name``'s directory (as a storage server restarted empty)."""
        root = os.path.join(self.workdir, name)
        for entry in os.listdir(root):
            path = os.path.join(root, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    async def record(self, key: str) -> ObjectRecord:
        record = await self.daemon.store.get_object("vb", key)
        assert record is not None
        return record

    async def bytes_at(self, location: Location) -> bytes:
        stream = await self.daemon.backends[location.backend].get_object(location.real_key)
        return await collect(stream)

    async def assert_copies(self, key: str, count: int) -> ObjectRecord:
        """``key`` has ``count`` locations on distinct backends, each holding the exact body,
        and the backends hold nothing else of it."""
        record = await self.record(key)
        self.assertEqual(len(record.locations), count, record.locations)
        self.assertEqual(len({location.backend for location in record.locations}), count)
        for location in record.locations:
            self.assertEqual(await self.bytes_at(location), body_of(key), location)
        return record

    async def orphans(self) -> list[Any]:
        found = await scrub(self.daemon.store, self.daemon.backends, remove_orphans=False, grace=0)
        self.assertEqual(found.errors, [])
        return [orphan for b in found.backends.values() for orphan in b.orphans]



class RepairTests(RepairBase):
    async def test_a_wiped_copy_is_restored_where_it_was(self) -> None:
        keys = [f"k{index}" for index in range(5)]
        before = await self.write(keys)
        self.wipe("r1")  # the backend lost everything
        wiped = [key for key in keys if "r1" in {loc.backend for loc in before[key].locations}]
        self.assertTrue(wiped)
        copies_before = metrics.REPAIR_COPIES.labels("r1")._value.get()

        await self.repairer.run_once()

        for key in keys:
            record = await self.assert_copies(key, 2)
            self.assertEqual(set(record.locations), set(before[key].locations))
            info = await self.daemon.backends[record.locations[0].backend].head_object(
                record.locations[0].real_key
            )
            self.assertEqual(info.headers.get("content-type"), "text/x-k")
        last = self.repairer.last
        assert last is not None
        self.assertEqual((last.copies, last.backlog, last.failures), (len(wiped), 0, 0))
        self.assertEqual(last.bytes_copied, sum(len(body_of(key)) for key in wiped))
        self.assertEqual(metrics.REPAIR_COPIES.labels("r1")._value.get() - copies_before,
                         len(wiped))  # fmt: skip
        self.assertEqual(await self.orphans(), [])
        # A second pass has nothing to do.
        await self.repairer.run_once()
        assert self.repairer.last is not None
        self.assertEqual((self.repairer.last.copies, self.repairer.last.examined), (0, 0))

    async def test_copies_on_an_unhealthy_backend_move_elsewhere(self) -> None:
        keys = [f"k{index}" for index in range(6)]
        before = await self.write(keys)
        moved = [key for key in keys if "r1" in {loc.backend for loc in before[key].locations}]
        self.daemon.health.mark_failure("r1", "down")

        await self.repairer.run_once()

        for key in keys:
            record = await self.assert_copies(key, 2)
            self.assertNotIn("r1", {location.backend for location in record.locations})
        # The lost copies were dropped only after their replacements were committed: deleted
        # (the directory is still reachable here), nothing left on r1.
        self.assertEqual(await self.daemon.real_keys("r1"), [])
        assert self.repairer.last is not None
        self.assertEqual(self.repairer.last.dropped, len(moved))
        usage: Any = self.daemon.usage
        self.assertEqual(usage.usage("r1").used_bytes, 0)
        self.assertEqual(
            sum(usage.usage(name).used_bytes for name in BACKENDS),
            2 * sum(len(body_of(key)) for key in keys),
        )

    async def test_a_backend_unhealthy_for_less_than_after_is_left_alone(self) -> None:
        self.repairer.config.after = 3600.0
        before = await self.write(["k"])
        lost = before["k"].locations[0].backend
        self.daemon.health.mark_failure(lost, "down")
        await self.repairer.run_once()
        self.assertEqual((await self.record("k")).locations, before["k"].locations)

    async def test_a_backend_removed_from_the_configuration_is_replaced(self) -> None:
        before = await self.write(["k"])
        gone = before["k"].locations[0].backend
        new = copy.deepcopy(self.daemon.config)
        new.buckets = [bucket for bucket in new.buckets if bucket.name != gone]
        await self.daemon.components.reconfigurator.apply(new, close_grace=0)
        await self.repairer.run_once()
        record = await self.record("k")
        self.assertEqual(len(record.locations), 2)
        self.assertNotIn(gone, {location.backend for location in record.locations})
        for location in record.locations:
            self.assertEqual(await self.bytes_at(location), body_of("k"))

    async def test_raising_then_lowering_replicas_adds_then_drops_copies(self) -> None:
        await self.write(["a", "b"])
        raised = copy.deepcopy(self.daemon.config)
        for bucket in raised.virtual_buckets:
            bucket.replicas = 3
        await self.daemon.components.reconfigurator.apply(raised)
        await self.repairer.run_once()
        for key in ("a", "b"):
            await self.assert_copies(key, 3)

        lowered = copy.deepcopy(self.daemon.config)
        for bucket in lowered.virtual_buckets:
            bucket.replicas = 1
        await self.daemon.components.reconfigurator.apply(lowered)
        await self.repairer.run_once()
        for key in ("a", "b"):
            await self.assert_copies(key, 1)
        self.assertEqual(sum([len(await self.daemon.real_keys(name)) for name in BACKENDS]), 2)
        self.assertEqual(await self.orphans(), [])

    async def test_a_copy_with_same_size_other_bytes_is_found_by_etag_and_recopied(self) -> None:
        before = await self.write(["k", "other"])
        corrupt = before["k"].locations[0]
        data = body_of("k")
        bad = bytes(len(data))  # same size, other bytes
        backend = self.daemon.backends[corrupt.backend]
        info = await backend.head_object(corrupt.real_key)
        await backend.put_object(
            corrupt.real_key, BytesProducer(bad), len(bad), info.headers, info.metadata
        )

        await self.repairer.run_once()

        record = await self.assert_copies("k", 2)
        self.assertEqual(set(record.locations), set(before["k"].locations))
        self.assertEqual(await self.bytes_at(corrupt), data)
        last = self.repairer.last
        assert last is not None
        self.assertEqual((last.copies, last.failures, last.backlog), (1, 0, 0))
        self.assertEqual(await self.orphans(), [])

    async def test_an_object_changed_during_a_copy_keeps_its_new_row_and_no_orphan(self) -> None:
        before = await self.write(["k"])
        lost = before["k"].locations[0].backend
        self.daemon.health.mark_failure(lost, "down")
        copy_one = self.repairer.copier.copy

        async def copy_then_overwrite(*args: Any) -> int:
            size = await copy_one(*args)
            data = b"replaced meanwhile"
            await self.gateway.put_object("vb", "k", BytesProducer(data), len(data), {}, {})
            return size

        self.repairer.copier.copy = copy_then_overwrite  # type: ignore[method-assign]
        await self.repairer.run_once()

        record = await self.record("k")
        self.assertNotEqual(record.locations[0].real_key, before["k"].locations[0].real_key)
        self.assertNotIn(lost, {location.backend for location in record.locations})
        assert self.repairer.last is not None
        self.assertEqual(self.repairer.last.backlog, 1)
        self.assertEqual(await self.orphans(), [])
        for name in BACKENDS:
            self.assertEqual(
                [k for k in await self.daemon.real_keys(name)
                 if k == before["k"].locations[0].real_key],
                [],
                name,
            )  # fmt: skip

    async def test_an_object_claimed_by_another_daemon_is_skipped(self) -> None:
        before = await self.write(["k"])
        self.daemon.health.mark_failure(before["k"].locations[0].backend, "down")
        other = await self.daemon.store.repair_candidates("vb", 2, ["r9"], "", 10)
        self.assertEqual(len(other), 1)
        object_id = other[0][0]
        now = time.time()
        self.assertTrue(await self.daemon.store.claim_repair(object_id, "other", now, now + 60))
        await self.repairer.run_once()
        assert self.repairer.last is not None
        self.assertEqual((self.repairer.last.claimed_elsewhere, self.repairer.last.copies), (1, 0))
        self.assertEqual((await self.record("k")).locations, before["k"].locations)
        # Once the other daemon's claim has expired, it is taken over.
        self.assertTrue(
            await self.daemon.store.claim_repair(object_id, "other", now - 120, now - 60)
        )
        await self.repairer.run_once()
        self.assertEqual(self.repairer.last.copies, 1)
        await self.assert_copies("k", 2)

    async def test_objects_with_no_copy_left_stay_in_the_backlog(self) -> None:
        keys = ["a", "b", "c"]
        await self.write(keys)
        for name in BACKENDS:
            self.wipe(name)
        # Every copy is gone: nothing to copy from, every object in the backlog.
        await self.repairer.run_once()
        assert self.repairer.last is not None
        last = self.repairer.last
        self.assertEqual((last.backlog, last.no_source, last.copies), (3, 3, 0))

    async def test_copies_are_paced_by_max_bytes_per_second(self) -> None:
        """Copies of ~10 KB at 40 KB/s: each starts once those before it had their time."""
        keys = ["a", "b", "c"]
        await self.write(keys)
        self.repairer.config.max_bytes_per_second = 40_000
        self.repairer.config.max_concurrency = 3
        unhealthy = "r1"
        before = {key: await self.record(key) for key in keys}
        self.daemon.health.mark_failure(unhealthy, "down")
        moving = [k for k in keys if unhealthy in {loc.backend for loc in before[k].locations}]
        started = time.monotonic()
        await self.repairer.run_once()
        elapsed = time.monotonic() - started
        total = sum(len(body_of(key)) for key in moving)
        assert self.repairer.last is not None
        self.assertEqual(self.repairer.last.bytes_copied, total)
        # The first copy starts at once; the others wait for the bytes before them.
        floor = (total - max(len(body_of(key)) for key in moving)) / 40_000
        self.assertGreaterEqual(elapsed, floor * 0.9)


class TwoDaemonsRepairTests(unittest.TestCase):
    """Two daemons on one database and the same backends repair at the same time: each object
    is copied once."""

    timeout = 60

    async def test_each_object_is_copied_by_one_daemon(self) -> None:
        workdir = tempfile.mkdtemp(prefix="s3b-repair-two-")
        self.addCleanup(shutil.rmtree, workdir, True)

        def configure(config: Config) -> None:
            for bucket in config.virtual_buckets:
                bucket.replicas = 2
            config.repair.after = 0.0

        first = await start_daemon(workdir, local_buckets(workdir, BACKENDS), configure=configure)
        self.addCleanup(lambda: defer.ensureDeferred(first.stop()))
        second = await start_daemon(
            workdir, local_buckets(workdir, BACKENDS), configure=configure,
            database_url=first.database_url,
        )  # fmt: skip
        self.addCleanup(lambda: defer.ensureDeferred(second.stop()))
        keys = [f"k{index}" for index in range(8)]
        moved = 0
        for key in keys:
            data = body_of(key)
            record = await first.gateway.put_object(
                "vb", key, BytesProducer(data), len(data), {}, {}
            )
            moved += "r1" in {location.backend for location in record.locations}
        for daemon in (first, second):
            daemon.health.mark_failure("r1", "down")
        repairers = [first.components.repair, second.components.repair]
        await defer.gatherResults([repairer.run_once() for repairer in repairers])
        made = sum(repairer.last.copies for repairer in repairers if repairer.last is not None)
        self.assertEqual(made, moved)
        for key in keys:
            record = await first.store.get_object("vb", key)
            assert record is not None
            self.assertEqual(len(record.locations), 2)
            self.assertNotIn("r1", {location.backend for location in record.locations})
        found = await scrub(first.store, first.backends, remove_orphans=False, grace=0)
        self.assertEqual([o for b in found.backends.values() for o in b.orphans], [])


class SeaweedFSRepairTests(unittest.TestCase):
    """Three real buckets of one SeaweedFS: repair copies server-side (CopyObject from another
    bucket), no byte passing through the daemon, and finds a copy with other bytes by ETag."""

    timeout = 120

    async def test_lost_and_corrupt_copies_are_copied_server_side(self) -> None:
        workdir = tempfile.mkdtemp(prefix="s3b-repair-weed-")
        self.addCleanup(shutil.rmtree, workdir, True)
        weed = shared_seaweedfs()
        real = [unique_bucket_name(name) for name in BACKENDS]

        def configure(config: Config) -> None:
            for bucket in config.virtual_buckets:
                bucket.replicas = 2
            config.repair.after = 0.0

        daemon = await start_daemon(
            workdir, server_buckets(weed, BACKENDS, real), configure=configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        keys = [f"k{index}" for index in range(4)]
        before = {}
        for key in keys:
            data = body_of(key)
            before[key] = await daemon.gateway.put_object(
                "vb", key, BytesProducer(data), len(data), {"content-type": "text/x-k"}, {}
            )
        # A copy with other bytes, of an object whose other copy is not on r1 (lost below).
        spoilt = next(k for k in keys if "r1" not in {loc.backend for loc in before[k].locations})
        corrupt = before[spoilt].locations[1]
        backend = daemon.backends[corrupt.backend]
        info = await backend.head_object(corrupt.real_key)
        bad = bytes(len(body_of(spoilt)))
        await backend.put_object(
            corrupt.real_key, BytesProducer(bad), len(bad), info.headers, info.metadata
        )
        daemon.health.mark_failure("r1", "down")
        lost = [key for key in keys if "r1" in {loc.backend for loc in before[key].locations}]
        counts = {name: daemon.components.pool.operation_counts(name) for name in BACKENDS}

        await daemon.components.repair.run_once()

        last = daemon.components.repair.last
        assert last is not None
        self.assertEqual((last.failures, last.backlog), (0, 0))
        self.assertEqual(last.copies, len(lost) + 1)
        for key in keys:
            record = await daemon.store.get_object("vb", key)
            assert record is not None
            self.assertEqual(len(record.locations), 2)
            for location in record.locations:
                stream = await daemon.backends[location.backend].get_object(location.real_key)
                self.assertEqual(await collect(stream), body_of(key))
        self.assertEqual(await daemon.store.get_object("vb", spoilt), before[spoilt])
        for name in BACKENDS:
            after = daemon.components.pool.operation_counts(name)
            # Server-side: no GET on a source, no PUT body into a target.
            self.assertEqual(
                (after.bytes_out, after.bytes_in),
                (counts[name].bytes_out, counts[name].bytes_in),
                name,
            )


class RepairClaimTests(unittest.TestCase):
    timeout = 30

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-repair-claims-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.daemon = await start_daemon(self.workdir, local_buckets(self.workdir, BACKENDS))
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def test_one_owner_at_a_time_until_the_claim_expires(self) -> None:
        store = self.daemon.store
        self.assertTrue(await store.claim_repair(7, "a", 100.0, 110.0))
        self.assertFalse(await store.claim_repair(7, "b", 105.0, 115.0))
        self.assertTrue(await store.claim_repair(8, "b", 105.0, 115.0))
        self.assertTrue(await store.claim_repair(7, "a", 106.0, 116.0))  # renewed
        self.assertFalse(await store.claim_repair(7, "b", 115.0, 125.0))
        self.assertTrue(await store.claim_repair(7, "b", 117.0, 127.0))  # taken over
        await store.release_repair(7, "a")  # no longer a's: nothing happens
        self.assertFalse(await store.claim_repair(7, "a", 118.0, 128.0))
        await store.release_repair(7, "b")
        self.assertTrue(await store.claim_repair(7, "a", 118.0, 128.0))


class WriteQuorumTests(unittest.TestCase):
    """``write_quorum: 1`` of ``replicas: 2``: a write a backend fails is visible with one copy,
    and repair makes the other."""

    timeout = 60

    async def start_with_r1_broken(self, write_quorum: int) -> Daemon:
        """A daemon over r1 and r2 (``replicas: 2``) whose r1 cannot store anything: its
        directory is a file (put back by :meth:`mend_r1`)."""
        self.workdir = tempfile.mkdtemp(prefix="s3b-quorum-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

        def configure(config: Config) -> None:
            for bucket in config.virtual_buckets:
                bucket.replicas = 2
                bucket.write_quorum = write_quorum

        daemon = await start_daemon(
            self.workdir, local_buckets(self.workdir, ["r1", "r2"]), configure=configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        root = os.path.join(self.workdir, "r1")
        os.rename(root, root + ".away")
        with open(root, "wb"):
            pass
        return daemon

    def mend_r1(self) -> None:
        root = os.path.join(self.workdir, "r1")
        os.remove(root)
        os.rename(root + ".away", root)

    async def test_a_write_short_of_a_copy_is_visible_and_repaired_later(self) -> None:
        daemon = await self.start_with_r1_broken(write_quorum=1)
        repairer = daemon.components.repair
        await repairer.run_once()  # the bucket's every object looked at once: none
        data = body_of("k")
        record = await daemon.gateway.put_object("vb", "k", BytesProducer(data), len(data), {}, {})
        self.assertEqual([location.backend for location in record.locations], ["r2"])
        self.assertEqual(await collect_object(daemon, "k"), data)
        # The commit queued it: repair finds it without scanning for it.
        self.assertEqual([q.key for q in await daemon.store.queued_repairs(0, 10)], ["k"])

        self.mend_r1()
        daemon.health.adopt("r1", BackendHealth(healthy=True))
        await repairer.run_once()
        assert repairer.last is not None
        self.assertEqual((repairer.last.full_buckets, repairer.last.queued), ([], 1))
        self.assertEqual(await daemon.store.queued_repairs(0, 10), [])
        repaired = await daemon.store.get_object("vb", "k")
        assert repaired is not None
        self.assertEqual(sorted(location.backend for location in repaired.locations), ["r1", "r2"])
        for location in repaired.locations:
            stream = await daemon.backends[location.backend].get_object(location.real_key)
            self.assertEqual(await collect(stream), data)

    async def test_without_a_quorum_the_same_write_fails_and_leaves_nothing(self) -> None:
        daemon = await self.start_with_r1_broken(write_quorum=0)
        data = body_of("k")
        with self.assertRaises(errors.S3Error):
            await daemon.gateway.put_object("vb", "k", BytesProducer(data), len(data), {}, {})
        self.assertIsNone(await daemon.store.get_object("vb", "k"))
        self.assertEqual(await daemon.real_keys("r2"), [])


async def collect_object(daemon: Daemon, key: str) -> bytes:
    record = await daemon.gateway.get_object_record("vb", key)
    async with daemon.gateway.reading(record) as stream:
        return await collect(stream)
