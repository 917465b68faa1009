"""Multipart uploads into a replicated bucket (``replicas: 2``), over in-memory backends.

What matters to a user: every part goes to both copies and the object gets both as its
locations, with one ETag; a backend failing a part costs a copy under ``write_quorum: 1`` and
fails the part (nothing lost, the part can be sent again) under the default quorum; a completion
short of the quorum leaves nothing visible; abort, expiry and failures leave no upload on any
backend, and used bytes count every copy exactly.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance import errors
from s3balance.backends.factory import MEMORY_PATH
from s3balance.backends.interface import BackendNoSuchUpload, BackendUnavailable, IBackend
from s3balance.config import BucketConfig, Config
from s3balance.db.records import Location, UploadCopy, UploadRecord
from s3balance.health import BackendHealth
from s3balance.housekeeping import UploadExpiry
from s3balance.multipart import MultipartUploads
from s3balance.web.objects import BytesBody
from test.support.bodies import BodyFailed, GeneratedBody, collect, generated_bytes
from test.support.daemon import Daemon, start_daemon

SMALL_MIN = 1024
ONE, TWO, TAIL = b"a" * 2000, b"b" * 3000, b"tail"


def md5_etag(*chunks: bytes) -> str:
    joined = b"".join(hashlib.md5(c).digest() for c in chunks)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(chunks)}"'


class Refusing:
    """Makes one operation of an in-memory backend fail as a backend that went away does (for
    ``only`` part numbers, when given), until :meth:`heal`."""

    def __init__(self, backend: IBackend, operation: str, only: set[int] | None = None) -> None:
        self.backend = backend
        self.operation = operation
        self.only = only
        self.original = getattr(backend, operation)
        self.refused = 0
        setattr(backend, operation, self.call)

    def call(self, *args: Any) -> defer.Deferred[Any]:
        number = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        if self.only is None or number in self.only:
            self.refused += 1
            return defer.fail(BackendUnavailable(self.backend.name, "connection refused"))
        result: defer.Deferred[Any] = self.original(*args)
        return result

    def heal(self) -> None:
        setattr(self.backend, self.operation, self.original)


@implementer(IConsumer)
class _Breaking:
    """A backend connection that breaks once the first bytes arrived: stops the body and fails
    the upload as a lost connection does."""

    def __init__(self, name: str, body: IBodyProducer, done: defer.Deferred[Any]) -> None:
        self.name, self.body, self.done = name, body, done
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if not self.done.called:
            self.body.stopProducing()
            self.done.errback(BackendUnavailable(self.name, "connection lost mid-body"))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class BreaksMidBody:
    """Makes an in-memory backend's UploadPart break after its first bytes."""

    def __init__(self, backend: IBackend) -> None:
        self.backend = backend
        self.original = backend.upload_part
        self.consumers: list[_Breaking] = []
        backend.upload_part = self.upload_part  # type: ignore[method-assign]

    def upload_part(
        self, key: str, upload_id: str, number: int, body: IBodyProducer, length: int
    ) -> defer.Deferred[Any]:
        done: defer.Deferred[Any] = defer.Deferred()
        consumer = _Breaking(self.backend.name, body, done)
        self.consumers.append(consumer)
        body.startProducing(consumer).addErrback(lambda _: None)
        return done

    def heal(self) -> None:
        self.backend.upload_part = self.original  # type: ignore[method-assign]


class ReplicatedMultipartCase(unittest.TestCase):
    timeout = 60
    backend_names = ["m1", "m2"]
    quorum = 0

    def configure(self, config: Config) -> None:
        for bucket in config.virtual_buckets:
            if bucket.name == "vb":
                bucket.replicas = 2
                bucket.write_quorum = self.quorum

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-mp-replicas-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        real = [BucketConfig(name=name, path=MEMORY_PATH) for name in self.backend_names]
        self.daemon: Daemon = await start_daemon(
            self.workdir, real, virtual_buckets=("vb", "plain"), configure=self.configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.gateway = self.daemon.gateway
        self.store = self.daemon.store
        self.uploads = MultipartUploads(self.gateway, min_part_size=SMALL_MIN)

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    def backend(self, name: str) -> IBackend:
        return self.daemon.backends[name]

    async def part(self, upload_id: str, number: int, data: bytes) -> str:
        record = await self.uploads.upload_part(
            "vb", "k", upload_id, number, BytesBody(data), len(data)
        )
        return record.etag

    async def alive(self, upload: UploadRecord, copy: UploadCopy) -> bool:
        """Whether ``copy``'s backend still has its upload."""
        try:
            await self.backend(copy.backend).list_parts(upload.real_key, copy.backend_upload_id)
        except BackendNoSuchUpload:
            return False
        return True

    async def stored(self, name: str) -> list[str]:
        return await self.daemon.real_keys(name)

    async def body_on(self, location: Location) -> bytes:
        return await collect(await self.backend(location.backend).get_object(location.real_key))

    async def used(self) -> dict[str, int]:
        usage = await self.store.usage()
        return {name: usage[name].used_bytes if name in usage else 0
                for name in self.backend_names}  # fmt: skip

    async def assert_scrub_finds_nothing(self) -> None:
        """Scrub agrees with the rows: no orphan, no dangling row, no mismatch anywhere."""
        from s3balance.scrub import scrub

        found = await scrub(self.store, self.daemon.backends, remove_orphans=False, grace=0)
        for name, scrubbed in found.backends.items():
            problems = (scrubbed.orphans, scrubbed.recent_orphans, scrubbed.dangling,
                        scrubbed.mismatched, scrubbed.error)  # fmt: skip
            self.assertEqual(problems, ([], [], [], [], None), name)

    async def assert_s3_error(self, code: str, call: Callable[[], Any]) -> errors.S3Error:
        try:
            await call()
        except errors.S3Error as error:
            self.assertEqual(error.code, code, error.message)
            return error
        self.fail(f"expected {code}")


class ReplicatedLifecycleTests(ReplicatedMultipartCase):
    async def test_parts_go_to_both_copies_and_the_object_gets_both(self) -> None:
        upload = await self.uploads.create("vb", "k", {"content-type": "text/plain"}, {"c": "1"})
        self.assertEqual(len(upload.copies), 1)
        self.assertEqual(sorted(upload.backends), ["m1", "m2"])
        stored = await self.store.get_upload(upload.upload_id)
        assert stored is not None
        self.assertEqual(stored.all_copies(), upload.all_copies())
        etags = [await self.part(upload.upload_id, n, d)
                 for n, d in [(1, ONE), (2, TWO), (3, TAIL)]]  # fmt: skip
        self.assertEqual(etags[0], f'"{hashlib.md5(ONE).hexdigest()}"')
        self.assertEqual(await self.used(), {"m1": 5004, "m2": 5004})
        for copy in upload.all_copies():  # every copy has every part
            parts = await self.backend(copy.backend).list_parts(
                upload.real_key, copy.backend_upload_id
            )
            self.assertEqual([p.size for p in parts], [2000, 3000, 4])
        await self.assert_scrub_finds_nothing()  # the upload in progress is no dangling row
        _, listed, _ = await self.uploads.list_parts("vb", "k", upload.upload_id, 0, 100)
        self.assertEqual([p.etag for p in listed], etags)
        page = await self.uploads.list_uploads("vb")
        self.assertEqual([u.upload_id for u in page.uploads], [upload.upload_id])

        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, list(zip([1, 2, 3], etags, strict=True))
        )
        self.assertEqual(record.etag, md5_etag(ONE, TWO, TAIL))
        self.assertEqual(sorted(loc.backend for loc in record.locations), ["m1", "m2"])
        self.assertEqual({loc.real_key for loc in record.locations}, {upload.real_key})
        for location in record.locations:  # byte-identical copies
            self.assertEqual(await self.body_on(location), ONE + TWO + TAIL)
            info = await self.backend(location.backend).head_object(location.real_key)
            self.assertEqual(info.etag.strip('"'), record.etag.strip('"'))
        self.assertEqual(await self.used(), {"m1": 5004, "m2": 5004})
        for copy in upload.all_copies():
            self.assertFalse(await self.alive(upload, copy))
        self.assertIsNone(await self.store.get_upload(upload.upload_id))
        await self.assert_scrub_finds_nothing()
        row = await self.store.get_object("vb", "k")
        assert row is not None
        self.assertEqual(row.part_sizes, (2000, 3000, 4))
        self.assertEqual(row.metadata, {"c": "1"})
        self.assertEqual(await self.store.queued_repairs(0, 10), [])  # every copy: not queued
        async with self.gateway.reading(row) as stream:
            self.assertEqual(await collect(stream), ONE + TWO + TAIL)

    async def test_abort_leaves_no_upload_and_no_usage_on_any_backend(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, ONE)
        await self.uploads.abort("vb", "k", upload.upload_id)
        for copy in upload.all_copies():
            self.assertFalse(await self.alive(upload, copy))
        self.assertIsNone(await self.store.get_upload(upload.upload_id))
        self.assertEqual(await self.used(), {"m1": 0, "m2": 0})
        self.assertEqual(await self.store.due_deletions(1e12), [])
        await self.assert_s3_error(
            "NoSuchUpload", lambda: self.uploads.abort("vb", "k", upload.upload_id)
        )

    async def test_expiry_aborts_every_copy(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, ONE)
        expiry = UploadExpiry(
            self.store, self.daemon.pool, self.gateway.clock, expiry=0.0, usage=self.daemon.usage
        )
        self.assertEqual(await expiry.run_once(), 1)
        for copy in upload.all_copies():
            self.assertFalse(await self.alive(upload, copy))
        self.assertEqual(await self.used(), {"m1": 0, "m2": 0})
        self.assertEqual(await self.store.due_deletions(1e12), [])

    async def test_an_abort_with_a_backend_down_is_finished_by_the_sweep(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, ONE)
        down = Refusing(self.backend("m2"), "abort_multipart_upload")
        await self.uploads.abort("vb", "k", upload.upload_id)  # answered at once all the same
        self.assertEqual(
            [(d.location.backend, d.backend_upload_id)
             for d in await self.store.due_deletions(1e12)],
            [("m2", dict((c.backend, c.backend_upload_id) for c in upload.all_copies())["m2"])],
        )  # fmt: skip
        down.heal()
        await self.gateway.sweep_deletions()
        for copy in upload.all_copies():
            self.assertFalse(await self.alive(upload, copy))
        self.assertEqual(await self.store.due_deletions(1e12), [])

    async def test_a_part_copied_from_objects_on_one_or_both_backends(self) -> None:
        await self.gateway.put_object("vb", "both", BytesBody(ONE), len(ONE), {}, {})
        await self.gateway.put_object("plain", "one", BytesBody(TWO), len(TWO), {}, {})
        upload = await self.uploads.create("vb", "k", {}, {})
        for number, (bucket, key) in enumerate([("vb", "both"), ("plain", "one")], start=1):
            source = await self.gateway.get_object_record(bucket, key)
            await self.uploads.upload_part_copy(
                "vb", "k", upload.upload_id, number, source, None
            )
        last = await self.part(upload.upload_id, 3, TAIL)
        parts = await self.store.list_parts(upload.upload_id)
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id,
            [(p.part_number, p.etag) for p in parts[:2]] + [(3, last)],
        )  # fmt: skip
        self.assertEqual(record.etag, md5_etag(ONE, TWO, TAIL))
        for location in record.locations:
            self.assertEqual(await self.body_on(location), ONE + TWO + TAIL)


class QuorumOfOneTests(ReplicatedMultipartCase):
    """``write_quorum: 1``: a copy that fails a part is dropped, the upload goes on."""

    quorum = 1

    async def test_a_backend_failing_a_part_is_dropped_and_its_upload_aborted(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        first = await self.part(upload.upload_id, 1, ONE)
        failing = upload.backend  # the row's own backend: another copy takes its place
        down = Refusing(self.backend(failing), "upload_part")
        second = await self.part(upload.upload_id, 2, TWO)
        self.assertEqual(down.refused, 1)
        kept = next(name for name in upload.backends if name != failing)
        now = await self.store.get_upload(upload.upload_id)
        assert now is not None
        self.assertEqual((now.backend, now.copies), (kept, ()))
        self.assertEqual(await self.used(), {failing: 0, kept: 5000})
        down.heal()
        third = await self.part(upload.upload_id, 3, TAIL)  # one copy now
        failed_copy = next(c for c in upload.all_copies() if c.backend == failing)
        self.assertTrue(await self.alive(upload, failed_copy))  # until the sweep
        await self.gateway.sweep_deletions()
        self.assertFalse(await self.alive(upload, failed_copy))
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(1, first), (2, second), (3, third)]
        )
        self.assertEqual([loc.backend for loc in record.locations], [kept])
        # Short of a copy: queued for repair by the completion's commit.
        self.assertEqual([q.key for q in await self.store.queued_repairs(0, 10)], ["k"])
        self.assertEqual(await self.stored(failing), [])
        self.assertEqual(await self.used(), {failing: 0, kept: 5004})
        self.assertEqual(await self.store.due_deletions(1e12), [])
        await self.assert_scrub_finds_nothing()

    async def test_a_backend_breaking_mid_part_is_dropped_while_the_other_goes_on(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        size = 300_000
        breaking = BreaksMidBody(self.backend(upload.copies[0].backend))
        body = GeneratedBody(size, seed=4)
        part = await self.uploads.upload_part("vb", "k", upload.upload_id, 1, body, size)
        self.assertGreater(breaking.consumers[0].received, 0)
        self.assertLess(breaking.consumers[0].received, size)
        self.assertEqual(part.size, size)
        now = await self.store.get_upload(upload.upload_id)
        assert now is not None
        self.assertEqual(now.backends, [upload.backend])
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(1, part.etag)]
        )
        self.assertEqual(await self.body_on(record.locations[0]), generated_bytes(size, seed=4))
        await self.gateway.sweep_deletions()
        self.assertFalse(await self.alive(upload, upload.copies[0]))

    async def test_a_completion_failing_on_one_copy_commits_the_other(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        etag = await self.part(upload.upload_id, 1, ONE)
        failing = upload.copies[0].backend
        Refusing(self.backend(failing), "complete_multipart_upload")
        record = await self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)])
        self.assertEqual([loc.backend for loc in record.locations], [upload.backend])
        self.assertEqual([q.key for q in await self.store.queued_repairs(0, 10)], ["k"])
        self.assertEqual(await self.used(), {upload.backend: 2000, failing: 0})
        await self.gateway.sweep_deletions()
        self.assertFalse(await self.alive(upload, upload.copies[0]))
        self.assertEqual(await self.stored(failing), [])


class QuorumOfAllTests(ReplicatedMultipartCase):
    """The default quorum (every copy): a part one copy fails is not recorded, and nothing is
    dropped; a completion one copy fails leaves nothing visible and nothing behind."""

    async def test_a_part_one_copy_fails_is_refused_and_can_be_sent_again(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        first = await self.part(upload.upload_id, 1, ONE)
        down = Refusing(self.backend(upload.copies[0].backend), "upload_part", only={2})
        error = await self.assert_s3_error(
            "ServiceUnavailable", lambda: self.part(upload.upload_id, 2, TWO)
        )
        self.assertEqual(error.status, 503)
        now = await self.store.get_upload(upload.upload_id)
        assert now is not None
        self.assertEqual(now.all_copies(), upload.all_copies())
        self.assertEqual([p.part_number for p in await self.store.list_parts(upload.upload_id)],
                         [1])  # fmt: skip
        self.assertEqual(await self.used(), {"m1": 2000, "m2": 2000})
        down.heal()
        self.assertFalse(self.daemon.health.state(down.backend.name).healthy)
        self.daemon.health.adopt(down.backend.name, BackendHealth(healthy=True, latency=0.001))
        second = await self.part(upload.upload_id, 2, TWO)
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(1, first), (2, second)]
        )
        self.assertEqual(sorted(loc.backend for loc in record.locations), ["m1", "m2"])
        for location in record.locations:
            self.assertEqual(await self.body_on(location), ONE + TWO)

    async def test_a_backend_breaking_mid_part_fails_the_part_on_both(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        BreaksMidBody(self.backend(upload.copies[0].backend))
        body = GeneratedBody(300_000, seed=5)
        await self.assert_s3_error(
            "ServiceUnavailable",
            lambda: self.uploads.upload_part("vb", "k", upload.upload_id, 1, body, 300_000),
        )
        self.assertLess(body.produced, 300_000)  # the body was stopped, not read to its end
        self.assertEqual(await self.store.list_parts(upload.upload_id), [])
        now = await self.store.get_upload(upload.upload_id)
        assert now is not None
        self.assertEqual(now.all_copies(), upload.all_copies())

    async def test_a_body_failing_midway_records_nothing_and_drops_no_copy(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        body = GeneratedBody(300_000, seed=6, fail_after=100_000)
        with self.assertRaises(BodyFailed):
            await self.uploads.upload_part("vb", "k", upload.upload_id, 1, body, 300_000)
        self.assertEqual(await self.store.list_parts(upload.upload_id), [])
        for copy in upload.all_copies():
            parts = await self.backend(copy.backend).list_parts(
                upload.real_key, copy.backend_upload_id
            )
            self.assertEqual(parts, [])
        self.assertEqual(await self.used(), {"m1": 0, "m2": 0})

    async def test_a_completion_short_of_the_quorum_leaves_nothing(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        etag = await self.part(upload.upload_id, 1, ONE)
        Refusing(self.backend(upload.copies[0].backend), "complete_multipart_upload")
        await self.assert_s3_error(
            "ServiceUnavailable",
            lambda: self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)]),
        )
        self.assertIsNone(await self.store.get_object("vb", "k"))
        self.assertIsNone(await self.store.get_upload(upload.upload_id))
        await self.gateway.sweep_deletions()
        for copy in upload.all_copies():
            self.assertFalse(await self.alive(upload, copy))
        self.assertEqual(await self.stored("m1"), [])
        self.assertEqual(await self.stored("m2"), [])
        self.assertEqual(await self.used(), {"m1": 0, "m2": 0})
        self.assertEqual(await self.store.due_deletions(1e12), [])


class CreationTests(ReplicatedMultipartCase):
    backend_names = ["m1", "m2", "m3"]

    async def test_a_backend_refusing_the_creation_is_replaced(self) -> None:
        down = Refusing(self.backend("m1"), "create_multipart_upload")
        for _ in range(3):  # the strategy takes turns: m1 is chosen at least once
            upload = await self.uploads.create("vb", "k", {}, {})
            self.assertEqual(sorted(upload.backends), ["m2", "m3"])
        self.assertGreaterEqual(down.refused, 1)
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(1, await self.part(upload.upload_id, 1, ONE))]
        )
        self.assertEqual(sorted(loc.backend for loc in record.locations), ["m2", "m3"])

    async def test_too_few_backends_refuse_with_503_and_leave_no_upload(self) -> None:
        for name in ("m1", "m2"):
            Refusing(self.backend(name), "create_multipart_upload")
        await self.assert_s3_error(
            "ServiceUnavailable", lambda: self.uploads.create("vb", "k", {}, {})
        )
        self.assertEqual((await self.store.list_uploads("vb")).uploads, [])
