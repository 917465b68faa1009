"""The local-directory backend: the shared contract, plus what only a directory can promise
(nothing escapes the root, no temporary files left behind, the reactor never waits for the disk)."""

from __future__ import annotations

import os
import shutil
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import LoopingCall
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from s3balance.backends.interface import (
    BackendInvalidPart,
    BackendNoSuchUpload,
    BackendUnavailable,
    IBackend,
)
from s3balance.backends.local import LocalDirectoryBackend
from test.backend_contract import BackendContractMixin, MiB, _sleep
from test.support.bodies import (
    BodyFailed,
    BytesBody,
    GeneratedBody,
    collect,
    generated_md5,
    md5_of,
)

EDGE_KEYS = [
    "../escape",
    "a/../../b",
    "..",
    ".",
    "/leading",
    "double//slash",
    "with some  spaces ",
    "+&=%~",
    "unicode/ключ/日本語/é",
    "back\\slash\\..\\x",
    "k" * 1021 + "日",
    "a",
    "a/b",
    "/",
    "../../../../../../../../tmp/evil",
]


def _files_under(directory: str) -> list[str]:
    found: list[str] = []
    for parent, _, files in os.walk(directory):
        found.extend(os.path.join(parent, name) for name in files)
    return found


class LocalBackendTests(BackendContractMixin, TestCase):
    """The contract, against a fresh directory per test."""

    def make_backend(self) -> IBackend:
        backend = LocalDirectoryBackend("local-test", self.mktemp(), reactor)
        self.addCleanup(backend.close)
        return backend


class LocalOnlyTests(TestCase):
    timeout = 60

    def _make(self, root: str, threadpool: ThreadPool | None = None) -> LocalDirectoryBackend:
        backend = LocalDirectoryBackend("local-only", root, reactor, threadpool=threadpool)
        self.addCleanup(backend.close)
        return backend

    def _sandbox(self) -> tuple[str, str]:
        """A directory holding the root and nothing else, to see anything that lands beside it."""
        sandbox = os.path.abspath(self.mktemp())
        root = os.path.join(sandbox, "deep", "root")
        os.makedirs(root)
        return sandbox, root

    async def test_edge_case_keys_stay_inside_root(self) -> None:
        sandbox, root = self._sandbox()
        backend = self._make(root)
        for key in EDGE_KEYS:
            await backend.put_object(key, BytesBody(key.encode()), len(key.encode()), {}, {})
        upload_id = await backend.create_multipart_upload("../up", {}, {})
        await backend.upload_part("../up", upload_id, 1, BytesBody(b"p"), 1)
        outside = [path for path in _files_under(sandbox) if not path.startswith(root + os.sep)]
        self.assertEqual(outside, [])
        trees = {os.path.relpath(path, root).split(os.sep)[0] for path in _files_under(root)}
        self.assertEqual(trees, {"objects", "meta", "uploads"})
        listed = await backend.list_objects("")
        self.assertEqual(
            [o.key for o in listed], sorted(EDGE_KEYS, key=lambda key: key.encode("utf-8"))
        )
        for key in EDGE_KEYS:
            stream = await backend.get_object(key)
            self.assertEqual(await collect(stream), key.encode())

    async def test_upload_id_and_part_etag_cannot_name_paths(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        await self.assertFailure(
            backend.upload_part("k", "../../meta", 1, BytesBody(b"x"), 1), BackendNoSuchUpload
        )
        upload_id = await backend.create_multipart_upload("k", {}, {})
        await self.assertFailure(
            backend.complete_multipart_upload("k", upload_id, [(1, '"../../upload.json"')]),
            BackendInvalidPart,
        )
        await self.assertFailure(
            backend.list_parts("other-key", upload_id), BackendNoSuchUpload
        )

    async def test_failed_writes_leave_no_temporary_files(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        await self.assertFailure(
            backend.put_object("k", GeneratedBody(2 * MiB, fail_after=MiB), 2 * MiB, {}, {}),
            BodyFailed,
        )
        await self.assertFailure(
            backend.put_object("k", GeneratedBody(10, length=20), 20, {}, {}), Exception
        )
        await self.assertFailure(
            backend.put_object("k", GeneratedBody(3 * MiB, length=MiB), MiB, {}, {}), Exception
        )
        upload_id = await backend.create_multipart_upload("k", {}, {})
        await self.assertFailure(
            backend.upload_part("k", upload_id, 1, GeneratedBody(MiB, fail_after=10), MiB),
            BodyFailed,
        )
        await backend.upload_part("k", upload_id, 2, BytesBody(b"kept until abort"), 16)
        await backend.abort_multipart_upload("k", upload_id)
        self.assertEqual(_files_under(root), [])

    async def test_stale_temporary_files_removed_at_startup(self) -> None:
        _, root = self._sandbox()
        os.makedirs(os.path.join(root, "tmp", "aborted-dir"))
        stale = os.path.join(root, "tmp", "put-stale")
        fresh = os.path.join(root, "tmp", "put-fresh")
        for path in (stale, fresh):
            with open(path, "wb") as handle:
                handle.write(b"partial")
        two_hours_ago = time.time() - 7200
        os.utime(stale, (two_hours_ago, two_hours_ago))
        os.utime(os.path.join(root, "tmp", "aborted-dir"), (two_hours_ago, two_hours_ago))
        backend = self._make(root)
        await backend.capacity()  # runs after startup
        self.assertEqual(sorted(os.listdir(os.path.join(root, "tmp"))), ["put-fresh"])

    async def test_capacity_comes_from_statvfs(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        capacity = await backend.capacity()
        stats = os.statvfs(root)
        self.assertEqual(capacity.total_bytes, stats.f_blocks * stats.f_frsize)
        # Other processes write meanwhile; free space only needs to be close.
        assert capacity.free_bytes is not None
        self.assertLess(abs(capacity.free_bytes - stats.f_bavail * stats.f_frsize), 512 * MiB)

    async def test_probe_fails_when_root_removed(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        await backend.probe(5)
        shutil.rmtree(root)
        await self.assertFailure(backend.probe(5), BackendUnavailable)
        error: BackendUnavailable = await self.assertFailure(
            backend.put_object("k", BytesBody(b"x"), 1, {}, {}),  # type: ignore[arg-type]
            BackendUnavailable,
        )
        self.assertFalse(error.body_started, "nothing was read: the core may retry elsewhere")
        self.assertFalse(os.path.exists(root), "a vanished root must not be recreated")

    async def test_probe_fails_when_root_is_not_a_directory(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        await backend.capacity()
        shutil.rmtree(root)
        with open(root, "wb") as handle:
            handle.write(b"not a directory")
        await self.assertFailure(backend.probe(5), BackendUnavailable)

    async def test_probe_fails_when_root_is_read_only(self) -> None:
        if os.geteuid() == 0:
            self.skipTest("root ignores directory permissions")
        _, root = self._sandbox()
        backend = self._make(root)
        await backend.capacity()
        os.chmod(os.path.join(root, "tmp"), 0o500)
        self.addCleanup(os.chmod, os.path.join(root, "tmp"), 0o700)
        await self.assertFailure(backend.probe(5), BackendUnavailable)

    async def test_probe_times_out_when_disk_work_is_stuck(self) -> None:
        _, root = self._sandbox()
        pool = ThreadPool(minthreads=0, maxthreads=1)
        pool.start()
        self.addCleanup(pool.stop)
        backend = self._make(root, threadpool=pool)
        await backend.capacity()
        release = threading.Event()
        self.addCleanup(release.set)
        pool.callInThread(release.wait, 10)
        started = time.monotonic()
        await self.assertFailure(backend.probe(0.2), BackendUnavailable)
        self.assertLess(time.monotonic() - started, 2)

    async def test_write_pauses_producer_when_disk_falls_behind(self) -> None:
        _, root = self._sandbox()
        pool = ThreadPool(minthreads=0, maxthreads=1)
        pool.start()
        self.addCleanup(pool.stop)
        backend = self._make(root, threadpool=pool)
        size = 8 * MiB
        release = threading.Event()
        self.addCleanup(release.set)

        class StallingBody(GeneratedBody):
            def startProducing(self, consumer: IConsumer) -> Deferred[None]:
                pool.callInThread(release.wait, 10)  # the disk "stalls": no writer can run
                return super().startProducing(consumer)

        body = StallingBody(size, seed=7)
        putting = backend.put_object("slow-disk", body, size, {}, {})
        await _sleep(0.5)
        held = body.produced
        await _sleep(0.3)
        self.assertEqual(body.produced, held, "the producer kept going while the disk stalled")
        self.assertGreaterEqual(body.pause_count, 1)
        self.assertLess(held, 3 * MiB)
        release.set()
        result = await putting
        self.assertEqual(result.etag, f'"{generated_md5(size, seed=7)}"')

    async def test_large_write_does_not_block_reactor(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        await backend.capacity()
        ticks: list[float] = []
        looping = LoopingCall(lambda: ticks.append(time.monotonic()))
        looping.start(0.01)
        try:
            size = 32 * MiB
            await backend.put_object("big", GeneratedBody(size, seed=8), size, {}, {})
        finally:
            looping.stop()
        gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)]
        self.assertGreater(len(ticks), 5)
        self.assertLess(max(gaps), 1.0, "the reactor stalled during the write")

    async def test_get_streams_the_version_open_when_it_started(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        size = 2 * MiB
        await backend.put_object("v", GeneratedBody(size, seed=9), size, {}, {})
        stream = await backend.get_object("v")
        await backend.put_object("v", BytesBody(b"replacement"), 11, {}, {})
        await backend.delete_object("v")
        self.assertEqual(await md5_of(stream), generated_md5(size, seed=9))

    async def test_concurrent_puts_to_one_key_leave_one_whole_version(self) -> None:
        _, root = self._sandbox()
        backend = self._make(root)
        size = MiB
        puts = [
            backend.put_object(
                "race", GeneratedBody(size, seed=seed), size, {}, {"seed": str(seed)}
            )
            for seed in range(20, 25)
        ]
        for putting in puts:
            await putting
        info = await backend.head_object("race")
        seed = int(info.metadata["seed"])
        self.assertEqual(info.etag, f'"{generated_md5(size, seed=seed)}"')
        stream = await backend.get_object("race")
        self.assertEqual(await md5_of(stream), generated_md5(size, seed=seed))
        data_files = _files_under(os.path.join(root, "objects"))
        self.assertEqual(len(data_files), 1, "replaced versions must be removed")

    async def test_close_stops_own_threads(self) -> None:
        _, root = self._sandbox()
        backend = LocalDirectoryBackend("closing", root, reactor)
        await backend.capacity()
        before = threading.active_count()
        closed: Deferred[None] = backend.close()
        await closed
        self.assertLessEqual(threading.active_count(), before)
        self.assertFalse(
            [t for t in threading.enumerate() if t.name.startswith("s3balance-local-closing")]
        )
