"""Replicated virtual buckets end to end: two SeaweedFS servers (two failure domains) and a local
directory behind a daemon, boto3 in front; servers killed before and during reads and writes,
one wiped and restarted empty (repair restores its copies), ``replicas`` changed live."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from s3balance import metrics
from s3balance.config import Config
from s3balance.health import BackendHealth
from test.support.bodies import generated_bytes, md5_of
from test.support.daemon import in_thread, local_buckets, server_buckets, start_daemon
from test.support.seaweedfs import SeaweedFS, weed_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BIG = 32 << 20
#: The local backend takes small objects only: big ones must go to the two servers.
LOCAL_LIMIT = 1 << 20
BUCKET = "mirrored"


def weed_bucket(backend: str) -> str:
    """The real bucket of backend ``w1`` or ``w2`` on its server."""
    return {"w1": "replica-one", "w2": "replica-two"}[backend]


class KillingBody(io.RawIOBase):
    """A request body that kills a server once ``kill_at`` bytes were read from it."""

    def __init__(self, data: bytes, kill_at: int, server: SeaweedFS) -> None:
        self.data = data
        self.kill_at = kill_at
        self.server = server
        self.position = 0
        self.killed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: len(self.data)}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.kill_at and not self.killed:
            self.killed = True
            self.server.kill()
        chunk = self.data[self.position : self.position + min(len(buffer), 256 << 10)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


class OnTwoServers(TestCase):
    """Two fresh SeaweedFS servers and a daemon for every test (tests kill and wipe servers).

    Its tests are split over two subclasses only so that parallel test workers can take one
    each (a class's tests run together on one worker).
    """

    timeout = 280

    def setUp(self) -> defer.Deferred[None]:
        try:
            weed_binary()
        except RuntimeError as error:
            if os.environ.get("CI"):
                raise
            self.skipTest(str(error))
        return defer.ensureDeferred(self.start())

    async def start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-replicas-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.servers = {}
        for name in ("w1", "w2"):
            server = SeaweedFS(os.path.join(self.workdir, name))
            await in_thread(server.start)
            self.addCleanup(server.kill)
            self.servers[name] = server
        real = [
            *server_buckets(self.servers["w1"], ["w1"], ["replica-one"], zone="zone-1"),
            *server_buckets(self.servers["w2"], ["w2"], ["replica-two"], zone="zone-2"),
            *local_buckets(self.workdir, ["disk"], max_size=LOCAL_LIMIT),
        ]

        def configure(config: Config) -> None:
            for bucket in config.virtual_buckets:
                bucket.replicas = 2

        self.daemon = await start_daemon(
            self.workdir, real, virtual_buckets=(BUCKET,), configure=configure
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.s3 = self.daemon.client(read_timeout=60)

    def prefer(self, first: str) -> None:
        """Make ``first`` the replica reads go to first (it answered probes fastest)."""
        for name in ("w1", "w2", "disk"):
            latency = 0.001 if name == first else 0.5
            self.daemon.health.adopt(name, BackendHealth(healthy=True, latency=latency))

    async def put_big(self, key: str) -> bytes:
        data = generated_bytes(BIG, seed=len(key))
        await in_thread(self.s3.put_object, Bucket=BUCKET, Key=key, Body=data)
        return data

    async def keys_on(self, backend: str) -> list[str]:
        return await self.daemon.real_keys(backend, BUCKET + "/")

    async def uploads_on(self, backend: str) -> list[Any]:
        """The multipart uploads in progress on server ``backend``, as it lists them."""
        client = self.servers[backend].boto3_client()
        listed = await in_thread(client.list_multipart_uploads, Bucket=weed_bucket(backend))
        return list(listed.get("Uploads", []))


class ReplicasOnTwoServers(OnTwoServers):
    """Writes, reads and deletes with a server down or killed."""

    async def test_a_write_lands_on_two_backends_and_counts_twice(self) -> None:
        data = await self.put_big("big")
        record = await self.daemon.store.get_object(BUCKET, "big")
        assert record is not None
        self.assertEqual(sorted(loc.backend for loc in record.locations), ["w1", "w2"])
        for name in ("w1", "w2"):
            self.assertEqual(len(await self.keys_on(name)), 1)
            self.assertEqual(self.daemon.usage.usage(name).used_bytes, BIG)
            self.assertEqual(self.daemon.usage.usage(name).object_count, 1)
        stored = await self.daemon.store.usage()
        self.assertEqual({n: stored[n].used_bytes for n in ("w1", "w2")}, {"w1": BIG, "w2": BIG})
        # Small objects spread over distinct zones, the local directory being one of them.
        for index in range(3):
            await in_thread(self.s3.put_object, Bucket=BUCKET, Key=f"s{index}", Body=b"x" * 100)
            small = await self.daemon.store.get_object(BUCKET, f"s{index}")
            assert small is not None
            self.assertEqual(len({loc.backend for loc in small.locations}), 2)
        await in_thread(self.s3.put_object, Bucket=BUCKET, Key="empty", Body=b"")
        empty = await self.daemon.store.get_object(BUCKET, "empty")
        assert empty is not None
        self.assertEqual(len({loc.backend for loc in empty.locations}), 2)
        head = await in_thread(self.s3.head_object, Bucket=BUCKET, Key="big")
        self.assertEqual(head["ETag"], f'"{hashlib.md5(data).hexdigest()}"')

    async def test_get_with_one_server_killed_before_the_read(self) -> None:
        data = await self.put_big("before")
        self.prefer("w1")
        await in_thread(self.servers["w1"].kill)
        before = metrics.REPLICA_FAILOVERS._value.get()
        got = await in_thread(
            lambda: self.s3.get_object(Bucket=BUCKET, Key="before")["Body"].read()
        )
        self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest())
        self.assertGreater(metrics.REPLICA_FAILOVERS._value.get(), before)

    async def test_get_with_the_serving_server_killed_mid_body(self) -> None:
        data = await self.put_big("during")
        self.prefer("w2")
        before = metrics.REPLICA_FAILOVERS._value.get()

        def read_and_kill() -> bytes:
            body = self.s3.get_object(Bucket=BUCKET, Key="during")["Body"]
            first = body.read(1 << 20)
            self.servers["w2"].kill()
            return first + body.read()

        got = await in_thread(read_and_kill)
        self.assertEqual(len(got), BIG)
        self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest())
        self.assertGreater(metrics.REPLICA_FAILOVERS._value.get(), before)

    async def test_a_server_killed_mid_put_fails_the_put_and_leaves_nothing(self) -> None:
        data = generated_bytes(BIG, seed=3)
        body = KillingBody(data, 4 << 20, self.servers["w2"])

        def put() -> str:
            try:
                self.s3.put_object(Bucket=BUCKET, Key="torn", Body=body, ContentLength=BIG)
            except Exception as error:
                return type(error).__name__
            return "succeeded"

        outcome = await in_thread(put)
        self.assertTrue(body.killed)
        self.assertNotEqual(outcome, "succeeded")
        self.assertIsNone(await self.daemon.store.get_object(BUCKET, "torn"))
        listed = await in_thread(self.s3.list_objects_v2, Bucket=BUCKET)
        self.assertEqual(listed.get("KeyCount"), 0)
        await self.daemon.gateway.sweep_deletions()
        self.assertEqual(await self.keys_on("w1"), [])
        self.assertEqual(await self.keys_on("disk"), [])
        await in_thread(self.servers["w2"].start)
        self.assertEqual(await self.keys_on("w2"), [])
        for name in ("w1", "w2", "disk"):
            self.assertEqual(self.daemon.usage.usage(name).used_bytes, 0)

    async def test_a_server_down_before_a_put_is_replaced_by_another_choice(self) -> None:
        await in_thread(self.servers["w2"].kill)
        # The pool has not noticed yet: the copy for w2 is refused at connect, before any body
        # byte, and goes to the other zone left (the local directory) instead.
        for index in range(2):
            await in_thread(self.s3.put_object, Bucket=BUCKET, Key=f"k{index}", Body=b"y" * 1000)
            record = await self.daemon.store.get_object(BUCKET, f"k{index}")
            assert record is not None
            self.assertEqual(sorted(loc.backend for loc in record.locations), ["disk", "w1"])
        # A big object fits nowhere but the two servers: refused, never stored once.
        error = await in_thread(self.put_error, "big", generated_bytes(BIG, seed=4))
        self.assertEqual(error, ("ServiceUnavailable", 503))
        self.assertIsNone(await self.daemon.store.get_object(BUCKET, "big"))

    def put_error(self, key: str, data: bytes) -> tuple[str, int]:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        except ClientError as error:
            response = error.response
            return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]
        raise AssertionError("the put succeeded")

    async def test_redirect_mode_presigns_a_healthy_replica(self) -> None:
        await self.put_big("linked")
        record = await self.daemon.store.get_object(BUCKET, "linked")
        assert record is not None
        await in_thread(self.servers["w1"].kill)
        self.daemon.health.mark_failure("w1", "killed")
        url = self.daemon.gateway.presigned_url(record, {})
        assert url is not None
        self.assertTrue(url.startswith(self.servers["w2"].endpoint), url)

    async def test_a_delete_removes_every_copy(self) -> None:
        await self.put_big("gone")
        await in_thread(self.s3.put_object, Bucket=BUCKET, Key="small", Body=b"tiny")
        await in_thread(self.s3.delete_object, Bucket=BUCKET, Key="gone")
        await in_thread(self.s3.delete_object, Bucket=BUCKET, Key="small")
        await self.daemon.gateway.sweep_deletions()
        for name in ("w1", "w2", "disk"):
            self.assertEqual(await self.keys_on(name), [])
            self.assertEqual(self.daemon.usage.usage(name).used_bytes, 0)

    async def test_a_multipart_upload_lands_on_both_servers_and_survives_one(self) -> None:
        """boto3's managed upload in 8 MiB parts: the object has a copy on each server, byte for
        byte, no upload is left on either; a rebuild of a lost index finds one object with two
        locations; with one server killed, GET reads the whole body from the other."""
        from boto3.s3.transfer import TransferConfig

        from s3balance.rebuild import Checkpoint, Rebuilder
        from test import dbfixture

        data = generated_bytes(3 * (8 << 20) + 12345, seed=7)
        transfer = TransferConfig(
            multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=2
        )
        await in_thread(
            self.s3.upload_fileobj, io.BytesIO(data), BUCKET, "parts", Config=transfer
        )
        store = self.daemon.store
        record = await store.get_object(BUCKET, "parts")
        assert record is not None
        self.assertEqual(sorted(loc.backend for loc in record.locations), ["w1", "w2"])
        self.assertEqual(len(record.part_sizes), 4)
        self.assertTrue(record.etag.endswith('-4"'), record.etag)
        head = await in_thread(self.s3.head_object, Bucket=BUCKET, Key="parts")
        self.assertEqual(head["ETag"], record.etag)
        for location in record.locations:  # byte-identical copies, the same multipart ETag
            backend = self.daemon.backends[location.backend]
            stream = await backend.get_object(location.real_key)
            self.assertEqual(await md5_of(stream), hashlib.md5(data).hexdigest())
            info = await backend.head_object(location.real_key)
            self.assertEqual(info.etag.strip('"'), record.etag.strip('"'))
            self.assertEqual(await self.keys_on(location.backend), [location.real_key])
            self.assertEqual(await self.uploads_on(location.backend), [])
            self.assertEqual(self.daemon.usage.usage(location.backend).used_bytes, len(data))
        self.assertEqual((await store.list_uploads(BUCKET)).uploads, [])
        self.assertEqual(await self.keys_on("disk"), [])

        await in_thread(dbfixture.empty_all_tables, store.pool.engine)
        report = await Rebuilder(store, self.daemon.backends, self.daemon.gateway.clock).rebuild(
            Checkpoint(None), [BUCKET]
        )
        self.assertEqual(report.failures, 0, report.summary())
        rebuilt = await store.get_object(BUCKET, "parts")
        assert rebuilt is not None
        self.assertEqual(set(rebuilt.locations), set(record.locations))
        self.assertEqual((rebuilt.size, rebuilt.etag), (record.size, record.etag))

        self.prefer("w1")
        await in_thread(self.servers["w1"].kill)
        got = await in_thread(
            lambda: self.s3.get_object(Bucket=BUCKET, Key="parts")["Body"].read()
        )
        self.assertEqual(len(got), len(data))
        self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest())

    async def test_an_aborted_multipart_upload_leaves_nothing_on_either_server(self) -> None:
        created = await in_thread(self.s3.create_multipart_upload, Bucket=BUCKET, Key="dropped")
        upload_id = created["UploadId"]
        await in_thread(
            self.s3.upload_part, Bucket=BUCKET, Key="dropped", UploadId=upload_id, PartNumber=1,
            Body=generated_bytes(6 << 20, seed=9),
        )  # fmt: skip
        upload = await self.daemon.store.get_upload(upload_id)
        assert upload is not None
        self.assertEqual(sorted(upload.backends), ["w1", "w2"])
        for name in upload.backends:
            self.assertEqual(self.daemon.usage.usage(name).used_bytes, 6 << 20)
            self.assertEqual(len(await self.uploads_on(name)), 1, name)
        await in_thread(self.s3.abort_multipart_upload, Bucket=BUCKET, Key="dropped",
                        UploadId=upload_id)  # fmt: skip
        for name in upload.backends:
            self.assertEqual(await self.uploads_on(name), [], name)
            self.assertEqual(self.daemon.usage.usage(name).used_bytes, 0)
        self.assertEqual(await self.daemon.store.due_deletions(1e12), [])


class ReplicasRepairedOnTwoServers(OnTwoServers):
    """Copies lost (a server wiped, killed mid-write, ``replicas`` changed) and repaired."""

    async def test_a_server_wiped_and_restarted_empty_gets_every_copy_back(self) -> None:
        written = {f"big{index}": generated_bytes(2 << 20, seed=index) for index in range(3)}
        written.update(
            {f"small{index}": generated_bytes(4096, seed=10 + index) for index in range(3)}
        )
        for key, data in written.items():
            await in_thread(self.s3.put_object, Bucket=BUCKET, Key=key, Body=data)
        before = {key: await self.daemon.store.get_object(BUCKET, key) for key in written}
        on_w1 = [
            key
            for key, record in before.items()
            if record is not None and "w1" in {loc.backend for loc in record.locations}
        ]
        self.assertTrue(on_w1)

        server = self.servers["w1"]
        await in_thread(server.kill)
        shutil.rmtree(server.data_dir)
        shutil.rmtree(server.master_dir)
        await in_thread(server.start)  # same ports, nothing on it
        await in_thread(server.create_bucket, "replica-one")
        self.assertEqual(await self.keys_on("w1"), [])

        repairer = self.daemon.components.repair
        await repairer.run_once()
        assert repairer.last is not None
        self.assertEqual((repairer.last.copies, repairer.last.backlog), (len(on_w1), 0))
        self.assertEqual(len(await self.keys_on("w1")), len(on_w1))
        for key in written:
            record = await self.daemon.store.get_object(BUCKET, key)
            assert record is not None and before[key] is not None
            self.assertEqual(set(record.locations), set(before[key].locations), key)
        # w2 down: every object still reads back whole, from w1 or the local directory.
        await in_thread(self.servers["w2"].kill)
        self.prefer("w1")
        for key, data in written.items():
            got = await in_thread(
                lambda k=key: self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            )
            self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest(), key)

    async def test_a_server_back_wiped_has_every_copy_verified_in_one_pass(self) -> None:
        """Repair verifies one object per backend and pass here (``repair.verify_batch: 1``),
        but a backend that was down and is back has all its copies checked at once."""
        repairer = self.daemon.components.repair
        repairer.config.verify_batch = 1
        written = {f"s{index}": generated_bytes(64 << 10, seed=30 + index) for index in range(8)}
        for key, data in written.items():
            await in_thread(self.s3.put_object, Bucket=BUCKET, Key=key, Body=data)
        before = {key: await self.daemon.store.get_object(BUCKET, key) for key in written}
        on_w1 = [
            key
            for key, record in before.items()
            if record is not None and "w1" in {loc.backend for loc in record.locations}
        ]
        self.assertGreater(len(on_w1), 2)
        await repairer.run_once()

        server = self.servers["w1"]
        await in_thread(server.kill)
        self.daemon.health.mark_failure("w1", "connection refused")  # what a probe would see
        await repairer.run_once()  # down for less than repair.after: its copies stay
        assert repairer.last is not None
        self.assertEqual(repairer.last.copies, 0)
        shutil.rmtree(server.data_dir)
        shutil.rmtree(server.master_dir)
        await in_thread(server.start)  # same ports, nothing on it
        await in_thread(server.create_bucket, "replica-one")
        self.prefer("w1")  # healthy again

        await repairer.run_once()
        self.assertEqual((repairer.last.copies, repairer.last.backlog), (len(on_w1), 0))
        self.assertEqual(len(await self.keys_on("w1")), len(on_w1))
        swept = repairer.progress[("w1", BUCKET)]
        self.assertEqual((swept.sweep, swept.after, swept.last_total), (False, "", len(on_w1)))
        self.assertLessEqual(repairer.progress[("w2", BUCKET)].checked, 3)
        await in_thread(self.servers["w2"].kill)
        for key, data in written.items():
            got = await in_thread(
                lambda k=key: self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            )
            self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest(), key)

    async def test_replicas_lowered_then_raised_live_are_applied_by_repair(self) -> None:
        written = {f"k{index}": generated_bytes(3 << 20, seed=20 + index) for index in range(3)}
        for key, data in written.items():
            await in_thread(self.s3.put_object, Bucket=BUCKET, Key=key, Body=data)
        repairer = self.daemon.components.repair
        for replicas in (1, 2):
            changed = copy.deepcopy(self.daemon.config)
            for bucket in changed.virtual_buckets:
                bucket.replicas = replicas
            await self.daemon.components.reconfigurator.apply(changed)
            await repairer.run_once()
            assert repairer.last is not None
            self.assertEqual(repairer.last.backlog, 0)
            copies = len(await self.keys_on("w1")) + len(await self.keys_on("w2"))
            self.assertEqual(copies, replicas * len(written))
            for key, data in written.items():
                record = await self.daemon.store.get_object(BUCKET, key)
                assert record is not None
                self.assertEqual(len(record.locations), replicas)
                got = await in_thread(
                    lambda k=key: self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
                )
                self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest())

    async def test_with_write_quorum_1_a_server_killed_mid_put_is_repaired_later(self) -> None:
        changed = copy.deepcopy(self.daemon.config)
        for bucket in changed.virtual_buckets:
            bucket.write_quorum = 1
        await self.daemon.components.reconfigurator.apply(changed)
        data = generated_bytes(BIG, seed=5)
        body = KillingBody(data, 4 << 20, self.servers["w2"])
        await in_thread(self.s3.put_object, Bucket=BUCKET, Key="torn", Body=body, ContentLength=BIG)
        self.assertTrue(body.killed)
        record = await self.daemon.store.get_object(BUCKET, "torn")
        assert record is not None
        self.assertEqual([location.backend for location in record.locations], ["w1"])

        await in_thread(self.servers["w2"].start)
        self.prefer("w2")  # healthy again (probes do not run in this test daemon)
        await self.daemon.components.repair.run_once()
        record = await self.daemon.store.get_object(BUCKET, "torn")
        assert record is not None
        self.assertEqual(sorted(location.backend for location in record.locations), ["w1", "w2"])
        await in_thread(self.servers["w1"].kill)
        got = await in_thread(lambda: self.s3.get_object(Bucket=BUCKET, Key="torn")["Body"].read())
        self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(data).hexdigest())

    async def test_with_write_quorum_1_a_server_killed_mid_part_costs_a_copy_until_repair(
        self,
    ) -> None:
        """A multipart upload under ``write_quorum: 1`` whose second part loses w2 mid-body:
        the part is stored on w1, w2's copy of the upload is dropped (and aborted once w2 is
        back), the object completes on w1 alone, and repair makes its second copy."""
        changed = copy.deepcopy(self.daemon.config)
        for bucket in changed.virtual_buckets:
            bucket.write_quorum = 1
        await self.daemon.components.reconfigurator.apply(changed)
        created = await in_thread(self.s3.create_multipart_upload, Bucket=BUCKET, Key="torn")
        upload_id = created["UploadId"]
        upload = await self.daemon.store.get_upload(upload_id)
        assert upload is not None
        self.assertEqual(sorted(upload.backends), ["w1", "w2"])
        first, second = generated_bytes(6 << 20, seed=30), generated_bytes(8 << 20, seed=31)
        one = await in_thread(
            self.s3.upload_part, Bucket=BUCKET, Key="torn", UploadId=upload_id, PartNumber=1,
            Body=first,
        )  # fmt: skip
        body = KillingBody(second, 4 << 20, self.servers["w2"])
        two = await in_thread(
            self.s3.upload_part, Bucket=BUCKET, Key="torn", UploadId=upload_id, PartNumber=2,
            Body=body, ContentLength=len(second),
        )  # fmt: skip
        self.assertTrue(body.killed)
        self.assertEqual(two["ETag"], f'"{hashlib.md5(second).hexdigest()}"')
        now = await self.daemon.store.get_upload(upload_id)
        assert now is not None
        self.assertEqual(now.backends, ["w1"])
        await in_thread(
            self.s3.complete_multipart_upload, Bucket=BUCKET, Key="torn", UploadId=upload_id,
            MultipartUpload={"Parts": [
                {"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]},
            ]},
        )  # fmt: skip
        record = await self.daemon.store.get_object(BUCKET, "torn")
        assert record is not None
        self.assertEqual([location.backend for location in record.locations], ["w1"])

        await in_thread(self.servers["w2"].start)
        self.prefer("w2")  # healthy again (probes do not run in this test daemon)
        await self.daemon.gateway.sweep_deletions()
        self.assertEqual(await self.uploads_on("w2"), [])
        self.assertEqual(await self.daemon.store.due_deletions(1e12), [])
        await self.daemon.components.repair.run_once()
        record = await self.daemon.store.get_object(BUCKET, "torn")
        assert record is not None
        self.assertEqual(sorted(location.backend for location in record.locations), ["w1", "w2"])
        await in_thread(self.servers["w1"].kill)
        got = await in_thread(lambda: self.s3.get_object(Bucket=BUCKET, Key="torn")["Body"].read())
        self.assertEqual(hashlib.md5(got).hexdigest(), hashlib.md5(first + second).hexdigest())
