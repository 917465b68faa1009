"""ObjectCopier: one object's bytes from one backend location to another, server-side on one
service, streamed otherwise, multipart above the threshold, refusing a source that is not the
row's object; and TransferLimits, the pace and concurrency background copies share.

Over in-memory and local-directory backends here, and over real SeaweedFS buckets at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from s3balance.backends.interface import (
    BackendError,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    BackendUnavailable,
    IBackend,
    IObjectStream,
    PartResult,
    PutResult,
)
from s3balance.backends.local import LocalDirectoryBackend
from s3balance.backends.memory import MemoryBackend
from s3balance.backends.s3 import S3Backend
from s3balance.config import BucketConfig
from s3balance.copying import (
    MAX_PARTS,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    ObjectCopier,
    part_ranges,
)
from s3balance.db.records import BackendUsage, Location, ObjectRecord
from s3balance.etags import etag_agrees, is_multipart_etag
from s3balance.health import HealthMonitor
from s3balance.names import RESERVED_METADATA_PREFIX
from s3balance.pacing import TransferLimits
from s3balance.placement import make_strategy
from s3balance.pool import BackendPool
from s3balance.usage import UsageMonitor
from test.support import unique_bucket_name
from test.support.bodies import BytesBody, GeneratedBody, collect, generated_bytes
from test.support.seaweedfs import shared_seaweedfs

MiB = 1024**2
#: The smallest part S3 (and the test backends) take: the tests' multipart threshold.
PART = 5 * MiB
HEADERS = {"content-type": "application/x-test"}
METADATA = {"user": "meta", f"{RESERVED_METADATA_PREFIX}key": "the/virtual/key"}


class SpyMemory(MemoryBackend):
    """An in-memory backend that counts its calls, and fails the ones it is told to."""

    def __init__(self, name: str) -> None:
        super().__init__(name, reactor)
        self.calls: Counter[str] = Counter()
        self.upload_ids: list[str] = []
        #: ``(method, call number)``: that call fails (BackendUnavailable).
        self.failing: set[tuple[str, int]] = set()

    def _count(self, method: str) -> None:
        self.calls[method] += 1
        if (method, self.calls[method]) in self.failing:
            raise BackendUnavailable(self.name, f"{method} failed (test)")

    def get_object(self, key: str, byte_range: Any = None) -> defer.Deferred[IObjectStream]:
        self._count("get_object")
        return super().get_object(key, byte_range)

    def put_object(self, *args: Any, **kwargs: Any) -> defer.Deferred[PutResult]:
        self._count("put_object")
        return super().put_object(*args, **kwargs)

    def copy_object(self, *args: Any, **kwargs: Any) -> defer.Deferred[PutResult]:
        self._count("copy_object")
        return super().copy_object(*args, **kwargs)

    def upload_part(self, *args: Any, **kwargs: Any) -> defer.Deferred[PartResult]:
        self._count("upload_part")
        return super().upload_part(*args, **kwargs)

    def upload_part_copy(self, *args: Any, **kwargs: Any) -> defer.Deferred[PartResult]:
        self._count("upload_part_copy")
        return super().upload_part_copy(*args, **kwargs)

    async def _create(self, key: str, headers: Any, metadata: Any) -> str:
        upload_id: str = await super().create_multipart_upload(key, headers, metadata)
        self.upload_ids.append(upload_id)
        return upload_id

    def create_multipart_upload(self, key: str, headers: Any, metadata: Any) -> Any:
        self._count("create_multipart_upload")
        return defer.ensureDeferred(self._create(key, headers, metadata))


class LyingMemory(MemoryBackend):
    """An in-memory backend whose PUTs report the ETag of other bytes (a corrupt copy)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, reactor)

    async def _lie(self, written: defer.Deferred[PutResult]) -> PutResult:
        result = await written
        return dataclasses.replace(result, etag=f'"{_md5(b"other bytes")}"')

    def put_object(self, *args: Any, **kwargs: Any) -> defer.Deferred[PutResult]:
        return defer.ensureDeferred(self._lie(super().put_object(*args, **kwargs)))

    def copy_object(self, *args: Any, **kwargs: Any) -> defer.Deferred[PutResult]:
        return defer.ensureDeferred(self._lie(super().copy_object(*args, **kwargs)))


class _NoUsageRows:
    def usage(self) -> defer.Deferred[dict[str, BackendUsage]]:
        return defer.succeed({})


def make_pool(backends: dict[str, IBackend]) -> BackendPool:
    health = HealthMonitor(lambda: backends, reactor, 10.0, 1.0)
    usage = UsageMonitor(_NoUsageRows(), lambda: backends, reactor, 10.0)  # type: ignore[arg-type]
    configs = {name: BucketConfig(name) for name in backends}
    return BackendPool(dict(backends), configs, make_strategy("least-space"), health, usage)


@contextlib.asynccontextmanager
async def not_held(location: Location) -> AsyncIterator[None]:
    yield


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class CopierTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.memory_a = SpyMemory("mem-a")
        self.memory_b = SpyMemory("mem-b")
        self.local_a = LocalDirectoryBackend("local-a", self.mktemp(), reactor)
        self.local_b = LocalDirectoryBackend("local-b", self.mktemp(), reactor)
        for backend in (self.local_a, self.local_b):
            self.addCleanup(backend.close)
        self.backends: dict[str, IBackend] = {
            b.name: b for b in (self.memory_a, self.memory_b, self.local_a, self.local_b)
        }
        self.pool = make_pool(self.backends)

    def copier(self, threshold: int = MULTIPART_THRESHOLD) -> ObjectCopier:
        return ObjectCopier(self.pool, not_held, multipart_threshold=threshold)

    async def stored(self, backend: IBackend, key: str, data: bytes) -> ObjectRecord:
        result = await backend.put_object(key, BytesBody(data), len(data), HEADERS, METADATA)
        return ObjectRecord("vb", "k", result.size, result.etag, 0.0,
                            locations=(Location(backend.name, key),))  # fmt: skip

    async def stored_multipart(
        self, backend: IBackend, key: str, sizes: list[int]
    ) -> tuple[ObjectRecord, bytes]:
        upload_id = await backend.create_multipart_upload(key, HEADERS, METADATA)
        parts, chunks = [], []
        for number, size in enumerate(sizes, start=1):
            chunk = generated_bytes(size, seed=number)
            part = await backend.upload_part(key, upload_id, number, BytesBody(chunk), size)
            parts.append((number, part.etag))
            chunks.append(chunk)
        result = await backend.complete_multipart_upload(key, upload_id, parts)
        record = ObjectRecord("vb", "k", result.size, result.etag, 0.0, part_sizes=tuple(sizes),
                              locations=(Location(backend.name, key),))  # fmt: skip
        return record, b"".join(chunks)

    async def assert_copy(self, target: IBackend, key: str, data: bytes) -> None:
        self.assertEqual(await collect(await target.get_object(key)), data)
        info = await target.head_object(key)
        self.assertEqual(info.headers, HEADERS)
        self.assertEqual(info.metadata, METADATA)

    async def assert_absent(self, backend: IBackend, key: str) -> None:
        with self.assertRaises(BackendNoSuchKey):
            await backend.head_object(key)

    # -- one request or one stream ---------------------------------------------------------

    async def test_same_service_copies_server_side_without_get_or_put(self) -> None:
        data = generated_bytes(300_000, seed=1)
        record = await self.stored(self.memory_a, "src", data)
        copier = self.copier()
        self.assertTrue(copier.server_side(Location("mem-a", "src"), Location("mem-b", "dst")))

        written = await copier.copy(record, Location("mem-a", "src"), Location("mem-b", "dst"))

        self.assertEqual(written, len(data))
        await self.assert_copy(self.memory_b, "dst", data)
        self.assertEqual(self.memory_a.calls["get_object"], 0)
        self.assertEqual(self.memory_b.calls["put_object"], 0)
        self.assertEqual(self.memory_b.calls["copy_object"], 1)
        source, target = self.pool.operation_counts("mem-a"), self.pool.operation_counts("mem-b")
        # The source's HEAD; no byte read through the daemon.
        self.assertEqual((source.class_b, source.bytes_out), (1, 0))
        self.assertEqual((target.class_a, target.bytes_in), (1, 0))

    async def test_local_directories_copy_server_side(self) -> None:
        data = generated_bytes(200_000, seed=2)
        record = await self.stored(self.local_a, "src", data)
        await self.copier().copy(record, Location("local-a", "src"), Location("local-b", "dst"))
        await self.assert_copy(self.local_b, "dst", data)
        source, target = (
            self.pool.operation_counts("local-a"),
            self.pool.operation_counts("local-b"),
        )
        self.assertEqual((source.class_b, target.class_a, target.bytes_in), (1, 1, 0))

    async def test_another_service_is_streamed_and_counted(self) -> None:
        data = generated_bytes(400_000, seed=3)
        record = await self.stored(self.memory_a, "src", data)
        copier = self.copier()
        self.assertFalse(copier.server_side(Location("mem-a", "src"), Location("local-a", "dst")))

        written = await copier.copy(record, Location("mem-a", "src"), Location("local-a", "dst"))

        self.assertEqual(written, len(data))
        await self.assert_copy(self.local_a, "dst", data)
        self.assertEqual(self.memory_a.calls["get_object"], 1)
        source, target = self.pool.operation_counts("mem-a"), self.pool.operation_counts("local-a")
        # HEAD and GET
        self.assertEqual((source.class_b, source.bytes_out), (2, len(data)))
        self.assertEqual((target.class_a, target.bytes_in), (1, len(data)))
        self.assertEqual(self.pool.reserved("local-a"), 0)

    # -- refusals --------------------------------------------------------------------------

    async def test_a_source_of_another_size_is_refused(self) -> None:
        data = generated_bytes(1000, seed=4)
        record = await self.stored(self.memory_a, "src", data)
        short = ObjectRecord("vb", "k", 999, record.etag, 0.0)
        for target in ("mem-b", "local-a"):
            with self.assertRaises(BackendError) as raised:
                await self.copier().copy(short, Location("mem-a", "src"), Location(target, "dst"))
            self.assertEqual(raised.exception.backend, "mem-a")
            self.assertIn("999", str(raised.exception))
            await self.assert_absent(self.backends[target], "dst")

    async def test_a_source_with_same_size_other_bytes_is_refused_by_etag(self) -> None:
        record = await self.stored(self.memory_a, "src", b"x" * 5000)
        await self.memory_a.put_object("src", BytesBody(b"y" * 5000), 5000, HEADERS, METADATA)
        for target in ("mem-b", "local-a"):
            with self.assertRaises(BackendError) as raised:
                await self.copier().copy(record, Location("mem-a", "src"), Location(target, "dst"))
            self.assertEqual(raised.exception.backend, "mem-a")
            self.assertIn("ETag", str(raised.exception))
            await self.assert_absent(self.backends[target], "dst")

    # -- multipart -------------------------------------------------------------------------

    async def test_a_copy_with_another_etag_is_deleted_and_the_delete_is_free(self) -> None:
        data = generated_bytes(3000, seed=9)
        record = await self.stored(self.memory_a, "src", data)
        lying = LyingMemory("mem-c")
        self.backends["mem-c"] = lying
        self.pool = make_pool(self.backends)

        with self.assertRaises(BackendError) as raised:
            await self.copier().copy(record, Location("mem-a", "src"), Location("mem-c", "dst"))

        self.assertEqual(raised.exception.backend, "mem-c")
        await self.assert_absent(lying, "dst")
        # The PUT is class A; the delete of the bad copy is free, as in the README (and R2).
        self.assertEqual(self.pool.operation_counts("mem-c").class_a, 1)

    async def test_multipart_server_side_keeps_the_rows_layout_and_etag(self) -> None:
        record, data = await self.stored_multipart(self.memory_a, "src", [PART, PART, 1000])
        written = await self.copier(PART).copy(
            record, Location("mem-a", "src"), Location("mem-b", "dst")
        )
        self.assertEqual(written, len(data))
        await self.assert_copy(self.memory_b, "dst", data)
        self.assertEqual(self.memory_b.calls["upload_part_copy"], 3)
        self.assertEqual(self.memory_a.calls["get_object"], 0)
        self.assertEqual((await self.memory_b.head_object("dst")).etag, record.etag)
        # create, three part copies, complete
        self.assertEqual(self.pool.operation_counts("mem-b").class_a, 5)

    async def test_keep_parts_streams_a_multipart_object_with_its_own_parts(self) -> None:
        """What drain and rebalance ask for (they had their own copy loop for it): whatever
        the threshold and although both backends could copy server-side."""
        record, data = await self.stored_multipart(self.memory_a, "src", [PART, 1000])
        written = await self.copier().copy(
            record, Location("mem-a", "src"), Location("mem-b", "dst"), keep_parts=True
        )
        self.assertEqual(written, len(data))
        await self.assert_copy(self.memory_b, "dst", data)
        self.assertEqual(self.memory_b.calls["upload_part_copy"], 0)
        self.assertEqual(self.memory_a.calls["get_object"], 2)
        self.assertEqual((await self.memory_b.head_object("dst")).etag, record.etag)
        source, target = self.pool.operation_counts("mem-a"), self.pool.operation_counts("mem-b")
        # What a drain's move costs: the source's HEAD and a ranged GET per part (class B);
        # create, an UploadPart per part and complete on the target (class A).
        self.assertEqual((source.class_b, source.bytes_out), (3, len(data)))
        self.assertEqual((target.class_a, target.bytes_in), (4, len(data)))
        # A single-part object is copied as without keep_parts (server-side here).
        single = await self.stored(self.memory_a, "one", b"x" * 1000)
        await self.copier().copy(
            single, Location("mem-a", "one"), Location("mem-b", "one"), keep_parts=True
        )
        self.assertEqual(self.memory_b.calls["copy_object"], 1)

    async def test_multipart_streamed_from_ranged_gets(self) -> None:
        data = generated_bytes(2 * PART + 7, seed=5)
        record = await self.stored(self.memory_a, "src", data)
        written = await self.copier(PART).copy(
            record, Location("mem-a", "src"), Location("local-a", "dst")
        )
        self.assertEqual(written, len(data))
        await self.assert_copy(self.local_a, "dst", data)
        self.assertEqual(self.memory_a.calls["get_object"], 3)
        info = await self.local_a.head_object("dst")
        self.assertTrue(is_multipart_etag(info.etag), info.etag)
        source, target = self.pool.operation_counts("mem-a"), self.pool.operation_counts("local-a")
        self.assertEqual((source.class_b, source.bytes_out), (4, len(data)))
        self.assertEqual((target.class_a, target.bytes_in), (5, len(data)))

    async def test_a_failed_streamed_part_aborts_the_upload(self) -> None:
        data = generated_bytes(3 * PART, seed=6)
        record = await self.stored(self.local_a, "src", data)
        self.memory_b.failing.add(("upload_part", 2))
        with self.assertRaises(BackendUnavailable):
            await self.copier(PART).copy(
                record, Location("local-a", "src"), Location("mem-b", "dst")
            )
        self.assertEqual(len(self.memory_b.upload_ids), 1)
        with self.assertRaises(BackendNoSuchUpload):
            await self.memory_b.list_parts("dst", self.memory_b.upload_ids[0])
        await self.assert_absent(self.memory_b, "dst")
        self.assertEqual(self.pool.reserved("mem-b"), 0)
        # Create and part 1 are class A; the failed part is not counted; the abort is free.
        self.assertEqual(self.pool.operation_counts("mem-b").class_a, 2)

    async def test_a_failed_source_read_mid_multipart_aborts_the_upload(self) -> None:
        data = generated_bytes(3 * PART, seed=7)
        record = await self.stored(self.memory_a, "src", data)
        self.memory_a.failing.add(("get_object", 3))
        self.memory_b.failing.add(("upload_part_copy", 2))
        # Streamed (memory to local) fails on the third ranged GET; server-side (memory to
        # memory) on the second part copy: neither leaves an upload.
        with self.assertRaises(BackendUnavailable):
            await self.copier(PART).copy(record, Location("mem-a", "src"), Location("mem-b", "dst"))
        with self.assertRaises(BackendNoSuchUpload):
            await self.memory_b.list_parts("dst", self.memory_b.upload_ids[0])
        local_dst = Location("local-b", "dst")
        with self.assertRaises(BackendUnavailable):
            await self.copier(PART).copy(record, Location("mem-a", "src"), local_dst)
        self.assertEqual(self.memory_a.calls["get_object"], 3)
        await self.assert_absent(self.local_b, "dst")
        self.assertEqual(await self.local_b.list_objects(""), [])
        # The local directory keeps an upload as a directory under uploads/: none is left.
        self.assertEqual(os.listdir(os.path.join(self.local_b.root, "uploads")), [])


class PartsAndETagsTests(TestCase):
    def test_part_ranges_follow_the_rows_layout(self) -> None:
        record = ObjectRecord("b", "k", 2 * PART + 1, '"x-3"', 0.0, part_sizes=(PART, PART, 1))
        self.assertEqual(
            part_ranges(record, PART), [(0, PART - 1), (PART, 2 * PART - 1), (2 * PART, 2 * PART)]
        )

    def test_part_ranges_without_a_usable_layout(self) -> None:
        record = ObjectRecord("b", "k", 6 * 1024**3, '"x"', 0.0, part_sizes=(1, 2))
        ranges = part_ranges(record, MULTIPART_THRESHOLD)
        self.assertEqual(len(ranges), 12)
        self.assertEqual(ranges[0], (0, PART_SIZE - 1))
        self.assertEqual(ranges[-1][1], record.size - 1)
        huge = ObjectRecord("b", "k", 10 * 1024**4, '"x"', 0.0)
        ranges = part_ranges(huge, MULTIPART_THRESHOLD)
        self.assertLessEqual(len(ranges), MAX_PARTS)
        self.assertEqual(ranges[-1][1], huge.size - 1)
        self.assertTrue(all(b - a + 1 <= 5 * 1024**3 for a, b in ranges))

    def test_etags_are_compared_like_with_like(self) -> None:
        plain, other = f'"{_md5(b"a")}"', _md5(b"b")
        self.assertIs(etag_agrees(plain, plain.strip('"')), True)
        self.assertIs(etag_agrees(plain, other), False)
        # A multipart copy of a plain object, or any copy of a multipart one: unknown.
        self.assertIsNone(etag_agrees(plain, f'"{other}-2"'))
        self.assertIsNone(etag_agrees(f'"{other}-2"', plain))
        self.assertIsNone(etag_agrees(f'"{other}-2"', f'"{_md5(b"c")}-2"'))
        self.assertIs(etag_agrees(f'"{other}-2"', f'"{other}-2"'), True)
        self.assertIsNone(etag_agrees(plain, ""))

    def test_which_backends_copy_from_which(self) -> None:
        memory, local = (
            MemoryBackend("m", reactor),
            LocalDirectoryBackend("l", self.mktemp(), reactor),
        )
        self.addCleanup(local.close)

        def s3(endpoint: str, secret: str, bucket: str = "b") -> S3Backend:
            backend = S3Backend("s", endpoint, bucket, "us-east-1", "AK", secret, True, reactor)
            self.addCleanup(backend.close)
            return backend

        one = s3("http://127.0.0.1:9000", "secret", "one")
        self.assertTrue(one.can_copy_from(s3("http://127.0.0.1:9000", "secret", "two")))
        self.assertFalse(one.can_copy_from(s3("http://127.0.0.1:9001", "secret")))
        self.assertFalse(one.can_copy_from(s3("http://127.0.0.1:9000", "other")))
        for a, b in ((memory, local), (local, memory), (one, memory), (memory, one)):
            self.assertFalse(a.can_copy_from(b), (a, b))


class TransferLimitsTests(TestCase):
    def test_transfers_are_paced_by_bytes_per_second(self) -> None:
        clock = Clock()
        limits = TransferLimits(clock, 1000, 5)
        started: list[float] = []

        async def one(size: int) -> None:
            await limits.pace(size)
            started.append(clock.seconds())

        for size in (500, 1000, 2000):
            defer.ensureDeferred(one(size))
        clock.pump([0.25] * 20)
        self.assertEqual(started, [0.0, 0.5, 1.5])

    def test_at_most_max_concurrency_run_at_once(self) -> None:
        limits = TransferLimits(Clock(), None, 2)
        gates = [defer.Deferred[None]() for _ in range(4)]
        running: list[int] = []
        peak = [0]

        async def work(index: int) -> int:
            running.append(index)
            peak[0] = max(peak[0], len(running))
            await gates[index]
            running.remove(index)
            return index

        results = [limits.run(lambda i=i: work(i)) for i in range(4)]  # type: ignore[misc]
        self.assertEqual(running, [0, 1])
        gates[1].callback(None)
        self.assertEqual(running, [0, 2])
        for gate in (gates[0], gates[2], gates[3]):
            gate.callback(None)
        self.assertEqual([self.successResultOf(r) for r in results], [0, 1, 2, 3])
        self.assertEqual(peak[0], 2)


class SeaweedFSCopierTests(TestCase):
    """Through a real S3 service: server-side copies between two of its buckets, and streamed
    multipart copies between it and another service."""

    timeout = 120

    def backend(self, name: str) -> S3Backend:
        server = shared_seaweedfs()
        bucket = unique_bucket_name(name)
        server.create_bucket(bucket)
        backend = S3Backend(
            name, server.endpoint, bucket, server.region, server.access_key, server.secret_key,
            True, reactor,
        )  # fmt: skip
        self.addCleanup(backend.close)
        return backend

    def setUp(self) -> None:
        self.one, self.two = self.backend("weed-one"), self.backend("weed-two")
        self.memory = SpyMemory("mem")
        self.pool = make_pool({b.name: b for b in (self.one, self.two, self.memory)})

    async def test_server_side_copy_between_two_buckets(self) -> None:
        data = generated_bytes(700_000, seed=9)
        put = await self.one.put_object("src/a", BytesBody(data), len(data), HEADERS, METADATA)
        record = ObjectRecord("vb", "k", len(data), put.etag, 0.0)
        copier = ObjectCopier(self.pool, not_held)
        self.assertTrue(
            copier.server_side(Location("weed-one", "src/a"), Location("weed-two", "a"))
        )
        await copier.copy(record, Location("weed-one", "src/a"), Location("weed-two", "a"))
        self.assertEqual(await collect(await self.two.get_object("a")), data)
        info = await self.two.head_object("a")
        self.assertEqual(
            (info.headers.get("content-type"), info.metadata), (HEADERS["content-type"], METADATA)
        )
        source = self.pool.operation_counts("weed-one")
        self.assertEqual((source.class_b, source.bytes_out), (1, 0))  # the HEAD
        self.assertEqual(self.pool.operation_counts("weed-two").bytes_in, 0)

    async def test_server_side_multipart_between_two_buckets(self) -> None:
        size = 2 * PART + 100
        put = await self.one.put_object(
            "big", GeneratedBody(size, seed=10), size, HEADERS, METADATA
        )
        record = ObjectRecord("vb", "k", size, put.etag, 0.0)
        await ObjectCopier(self.pool, not_held, PART).copy(
            record, Location("weed-one", "big"), Location("weed-two", "big")
        )
        self.assertEqual(
            _md5(await collect(await self.two.get_object("big"))), _md5(generated_bytes(size, 10))
        )
        self.assertEqual(self.pool.operation_counts("weed-one").class_b, 1)  # the HEAD
        # create, three part copies, complete
        self.assertEqual(self.pool.operation_counts("weed-two").class_a, 5)

    async def test_streamed_multipart_to_and_from_another_service(self) -> None:
        size = 2 * PART + 100
        data = generated_bytes(size, seed=11)
        put = await self.memory.put_object("m", BytesBody(data), size, HEADERS, METADATA)
        record = ObjectRecord("vb", "k", size, put.etag, 0.0)
        copier = ObjectCopier(self.pool, not_held, PART)
        await copier.copy(record, Location("mem", "m"), Location("weed-one", "streamed"))
        self.assertEqual(self.memory.calls["get_object"], 3)
        self.assertEqual(await collect(await self.one.get_object("streamed")), data)
        info = await self.one.head_object("streamed")
        self.assertEqual(info.metadata, METADATA)
        # And back, from SeaweedFS's ranged GETs into the memory backend's parts.
        await copier.copy(record, Location("weed-one", "streamed"), Location("mem", "back"))
        self.assertEqual(self.memory.calls["upload_part"], 3)
        self.assertEqual(await collect(await self.memory.get_object("back")), data)
        self.assertEqual(self.pool.operation_counts("weed-one").bytes_out, size)

    async def test_a_failed_part_leaves_no_upload_on_seaweedfs(self) -> None:
        size = 3 * PART
        data = generated_bytes(size, seed=12)
        put = await self.memory.put_object("m", BytesBody(data), size, {}, {})
        record = ObjectRecord("vb", "k", size, put.etag, 0.0)
        self.memory.failing.add(("get_object", 2))
        with self.assertRaises(BackendUnavailable):
            await ObjectCopier(self.pool, not_held, PART).copy(
                record, Location("mem", "m"), Location("weed-one", "failed")
            )
        with self.assertRaises(BackendNoSuchKey):
            await self.one.head_object("failed")
        s3 = shared_seaweedfs().boto3_client()
        uploads = s3.list_multipart_uploads(Bucket=self.one.address.bucket).get("Uploads", [])
        self.assertEqual(uploads, [])
