"""The write path where bytes at a location never change (see :mod:`s3balance.gateway`).

Every test here is bounded to a few seconds:

- a backend that stalls after storing an overwrite (its answer held by a loopback proxy, with
  ``server.write_timeout`` at 1 s) leaves the previous object intact, readable, with its ETag;
- writers, deleters and readers of one key for 3 s: every GET body's MD5 is its ETag header;
- a GET streaming a location keeps it from being deleted until it is done;
- keys of 1017 to 1024 bytes work end to end (hashed real keys, the key in backend metadata);
- the real key format reads back;
- a daemon killed during CompleteMultipartUpload leaves the previous object, and the retry works.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.trial import unittest
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.config import BucketConfig, Config
from s3balance.realkeys import (
    KEY_METADATA,
    MAX_REAL_KEY_BYTES,
    key_from_metadata,
    new_real_key,
    new_write_id,
    parse_real_key,
)
from s3balance.web.objects import BytesBody
from test.support.bodies import IgnoresFlowControl
from test.support.daemon import DaemonTestCase, seaweed_buckets, without_write_ids
from test.support.seaweedfs import seaweed_or_skip
from test.support.stallproxy import StallProxy


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


class RealKeyFormatTests(unittest.TestCase):
    def test_plain_real_keys_read_back_and_order_by_time(self) -> None:
        # Later than any id this process made so far (ids only grow within a process).
        when = time.time() + 10_000
        first, extra = new_real_key("vb", "dir/a~w.txt", new_write_id(when))
        second, _ = new_real_key("vb", "dir/a~w.txt", new_write_id(when))
        self.assertEqual(extra, {})
        parsed = [parse_real_key(first), parse_real_key(second)]
        for item in parsed:
            assert item is not None
            self.assertEqual((item.bucket, item.key), ("vb", "dir/a~w.txt"))
        assert parsed[0] is not None and parsed[1] is not None
        self.assertLess(parsed[0].write_id, parsed[1].write_id)  # the newest id wins
        self.assertAlmostEqual(parsed[0].written_at or 0, when, places=3)
        legacy = parse_real_key("vb/old/key")
        assert legacy is not None
        self.assertEqual((legacy.key, legacy.write_id), ("old/key", ""))

    def test_keys_that_would_be_too_long_are_hashed_with_the_key_in_metadata(self) -> None:
        for length in (1017, 1020, 1024):
            key = "k" * (length - 2) + "é"  # multi-byte at the end
            self.assertEqual(len(key.encode()), length)
            real, extra = new_real_key("a-bucket-name", key, new_write_id(5.0))
            self.assertLessEqual(len(real.encode()), MAX_REAL_KEY_BYTES)
            parsed = parse_real_key(real)
            assert parsed is not None
            self.assertIsNone(parsed.key)
            self.assertEqual(parsed.key_hash, hashlib.sha256(key.encode()).hexdigest())
            self.assertEqual(key_from_metadata(extra), key)
            self.assertIn(KEY_METADATA, extra)


class ReaderProtectionTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """A location being read is deleted only after its last reader is done."""

    timeout = 30

    async def test_a_replaced_location_waits_for_its_reader(self) -> None:
        gateway = self.daemon.gateway
        first = await gateway.put_object("vb", "k", BytesBody(b"one"), 3, {}, {})
        (old,) = first.locations
        async with gateway.reading(first) as stream:
            await gateway.put_object("vb", "k", BytesBody(b"two"), 3, {}, {})
            self.assertIn(old.real_key, await self.daemon.real_keys(old.backend))
            stream.discard()
        for _ in range(100):  # the deletion runs once the reader left; bounded wait
            gone = old.real_key not in await self.daemon.real_keys(old.backend)
            if gone and not await self.daemon.store.due_deletions(1e18):
                break
            await _sleep(0.02)
        self.assertNotIn(old.real_key, await self.daemon.real_keys(old.backend))
        self.assertEqual(await self.daemon.store.due_deletions(1e18), [])


@implementer(IBodyProducer)
class _GatedBody(IgnoresFlowControl):
    """Sends half its bytes, then waits for :meth:`finish` (a slow client)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)
        self._consumer: Any = None
        self._done: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self._consumer = consumer
        consumer.write(self.data[: self.length // 2])
        return self._done

    def finish(self) -> None:
        self._consumer.write(self.data[self.length // 2 :])
        self._done.callback(None)


class NoQueueTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """Writers of one key never wait for each other, even on one backend; the last commit wins."""

    timeout = 30
    backend_names = ["r1"]

    async def test_a_slow_writer_does_not_hold_up_another_of_the_same_key(self) -> None:
        gateway = self.daemon.gateway
        slow_body = _GatedBody(b"s" * 100_000)
        slow = defer.ensureDeferred(
            gateway.put_object("vb", "k", slow_body, slow_body.length, {}, {})
        )
        for _ in range(100):  # bounded: until the slow write is under way
            if slow_body._consumer is not None:
                break
            await _sleep(0.01)
        fast = await gateway.put_object("vb", "k", BytesBody(b"fast"), 4, {}, {})
        self.assertFalse(slow.called)
        current = await gateway.get_object_record("vb", "k")
        self.assertEqual(current.etag, fast.etag)
        slow_body.finish()
        committed = await slow
        current = await gateway.get_object_record("vb", "k")
        self.assertEqual(current.etag, committed.etag)  # the last commit wins
        keys = [k for name in self.backend_names for k in await self.daemon.real_keys(name)]
        self.assertEqual(keys, [current.locations[0].real_key])


class GraceTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """With a grace, replaced bytes stay queued until a sweep after it."""

    timeout = 30

    def configure(self, config: Config) -> None:
        config.server.delete_grace = 3600.0

    async def test_replaced_bytes_wait_for_the_grace_then_the_sweep(self) -> None:
        gateway = self.daemon.gateway
        first = await gateway.put_object("vb", "k", BytesBody(b"one"), 3, {}, {})
        await gateway.put_object("vb", "k", BytesBody(b"two"), 3, {}, {})
        (old,) = first.locations
        self.assertIn(old.real_key, await self.daemon.real_keys(old.backend))
        self.assertEqual(await gateway.sweep_deletions(), 0)  # not due yet
        (pending,) = await self.daemon.store.due_deletions(1e18)
        self.assertEqual(pending.location, old)
        self.assertIn(old.real_key, await self.daemon.store.locations_on(old.backend))
        gateway.settings = type(gateway.settings)(delete_grace=0.0)
        due = await self.daemon.store.due_deletions(time.time() + 3601)
        self.assertEqual([d.location for d in due], [old])
        # A sweep after the grace (its clock moved on) deletes the bytes and the queue row.
        retirement = gateway.retirement
        original = retirement.clock
        retirement.clock = _Later(original, 3601)  # type: ignore[assignment]
        try:
            self.assertEqual(await gateway.sweep_deletions(), 1)
        finally:
            retirement.clock = original
        self.assertNotIn(old.real_key, await self.daemon.real_keys(old.backend))
        self.assertEqual(await self.daemon.store.due_deletions(1e18), [])


class _Later:
    def __init__(self, clock: Any, ahead: float) -> None:
        self._clock = clock
        self._ahead = ahead

    def seconds(self) -> float:
        return float(self._clock.seconds()) + self._ahead

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clock, name)


class StalledBackendTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """A backend that stores an overwrite and then stalls (its answer held by a proxy)."""

    timeout = 60
    client_options = {"request_checksum_calculation": "when_required"}

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        weed = seaweed_or_skip()
        self.weed = weed
        self.real_name = f"s3b-stall-{secrets.token_hex(4)}"
        (config,) = seaweed_buckets(weed, [self.real_name])
        target = urlsplit(weed.endpoint)
        self.proxy = StallProxy((target.hostname or "127.0.0.1", target.port or 80))
        self.addCleanup(self.proxy.close)
        config.endpoint = self.proxy.endpoint
        self.backend_names = [config.name]
        return [config]

    def configure(self, config: Config) -> None:
        config.server.write_timeout = 1.0  # the one stall limit, honoured by the backend

    async def test_a_stalled_overwrite_leaves_the_previous_object_intact(self) -> None:
        await self.daemon.health.probe_now()  # known healthy: one stall is not "never answered"
        old = secrets.token_bytes(50_000)
        put = await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=old)
        self.assertEqual(put["ETag"], md5_etag(old))
        self.proxy.hold()
        started = time.monotonic()
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=secrets.token_bytes(70_000)
        )
        self.assertEqual(status, 503, code)
        self.assertLess(time.monotonic() - started, 20)  # write_timeout, not a fixed 60 s
        self.assertGreater(self.proxy.held_bytes, 0)  # the backend did store it and answer
        self.proxy.release()
        # The stall counted as a failure of the backend; it answers its next probe.
        await self.daemon.health.probe_now()
        head = await self.call(self.s3.head_object, Bucket="vb", Key="k")
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k")
        body = got["Body"].read()
        self.assertEqual(body, old)
        self.assertEqual((head["ContentLength"], head["ETag"]), (len(old), md5_etag(old)))
        self.assertEqual(got["ETag"], md5_etag(body))
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual(
            [(o["Key"], o["Size"], o["ETag"]) for o in listed["Contents"]],
            [("k", len(old), md5_etag(old))],
        )


class TornReadTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """Writers, deleters and readers of one key at once, for a bounded time."""

    timeout = 90
    client_options = {"request_checksum_calculation": "when_required", "max_pool_connections": 20}
    SECONDS = 3.0

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        configs = seaweed_buckets(weed, [f"s3b-torn1-{suffix}", f"s3b-torn2-{suffix}"])
        self.backend_names = [c.name for c in configs]
        return configs

    async def test_every_get_body_matches_its_etag(self) -> None:
        deadline = time.monotonic() + self.SECONDS
        problems: list[str] = []
        reads = [0]
        lock = threading.Lock()

        def writer(n: int) -> None:
            round_ = 0
            while time.monotonic() < deadline:
                body = secrets.token_bytes(20_000 + 997 * n + round_ % 7)
                try:
                    self.s3.put_object(Bucket="vb", Key="hot", Body=body)
                except Exception as error:
                    with lock:
                        problems.append(f"writer {n}: {error!r}")
                round_ += 1

        def deleter() -> None:
            while time.monotonic() < deadline:
                try:
                    self.s3.delete_object(Bucket="vb", Key="hot")
                except Exception as error:
                    with lock:
                        problems.append(f"deleter: {error!r}")
                time.sleep(0.05)

        def reader() -> None:
            from botocore.exceptions import ClientError

            while time.monotonic() < deadline:
                try:
                    got = self.s3.get_object(Bucket="vb", Key="hot")
                    body = got["Body"].read()
                except ClientError as error:
                    if error.response["Error"]["Code"] != "NoSuchKey":
                        with lock:
                            problems.append(f"reader: {error!r}")
                    continue
                with lock:
                    reads[0] += 1
                    if md5_etag(body) != got["ETag"] or len(body) != got["ContentLength"]:
                        problems.append(
                            f"torn read: {len(body)} bytes, MD5 {md5_etag(body)}, "
                            f"headers {got['ContentLength']} {got['ETag']}"
                        )

        def run() -> None:
            threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
            threads += [threading.Thread(target=deleter) for _ in range(2)]
            threads += [threading.Thread(target=reader) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(self.SECONDS + 30)

        await self.call(run)
        self.assertEqual(problems, [])
        self.assertGreater(reads[0], 0)
        # Nothing is left behind but the last object, if the last word was a write.
        keys = await self.backend_keys()
        record = await self.daemon.store.get_object("vb", "hot")
        expected = [] if record is None else [record.locations[0].real_key]
        self.assertEqual(sorted(keys[self.backend_names[0]] + keys[self.backend_names[1]]),
                         expected)


class LongKeyTests(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """Every key S3 accepts works, up to 1024 bytes: on SeaweedFS and on local directories."""

    timeout = 90
    client_options = {"request_checksum_calculation": "when_required"}

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        weed = seaweed_or_skip()
        self.weed = weed
        self.real_name = f"s3b-long-{secrets.token_hex(4)}"
        (config,) = seaweed_buckets(weed, [self.real_name])
        from test.support.daemon import local_buckets

        (local,) = local_buckets(workdir, ["disk"])
        self.backend_names = [config.name, local.name]
        return [config, local]

    async def test_keys_of_1017_to_1024_bytes_end_to_end(self) -> None:
        keys = [f"{length:04d}/" + "x" * (length - 5) for length in (1017, 1020, 1023, 1024)]
        for key in keys:
            self.assertEqual(len(key.encode()), int(key[:4]))
            data = key.encode()[:64] * 10
            put = await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=data)
            self.assertEqual(put["ETag"], md5_etag(data))
            got = await self.call(self.s3.get_object, Bucket="vb", Key=key)
            self.assertEqual(got["Body"].read(), data)
            copy_key = key[:-1] + "c"
            await self.call(
                self.s3.copy_object, Bucket="vb", Key=copy_key, CopySource=f"vb/{key}"
            )
            got = await self.call(self.s3.get_object, Bucket="vb", Key=copy_key)
            self.assertEqual(got["Body"].read(), data)
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual(len(listed["Contents"]), 8)
        # On the backends: hashed real keys, the key kept in the metadata.
        for key in keys:
            record = await self.daemon.store.get_object("vb", key)
            assert record is not None
            (location,) = record.locations
            parsed = parse_real_key(location.real_key)
            assert parsed is not None
            self.assertIsNone(parsed.key)
            info = await self.daemon.backends[location.backend].head_object(location.real_key)
            self.assertEqual(key_from_metadata(info.metadata), key)
            head = await self.call(self.s3.head_object, Bucket="vb", Key=key)
            self.assertEqual(head["Metadata"], {})  # never shown to clients
        for key in keys:
            await self.call(self.s3.delete_object, Bucket="vb", Key=key)
            await self.call(self.s3.delete_object, Bucket="vb", Key=key[:-1] + "c")
        self.assertEqual(
            without_write_ids([k for keys_ in (await self.backend_keys()).values() for k in keys_]),
            [],
        )

    async def test_a_1025_byte_key_is_refused(self) -> None:
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k" * 1025, Body=b"x"
        )
        self.assertEqual((code, status), ("KeyTooLongError", 400))


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)




# -- a daemon killed during CompleteMultipartUpload ------------------------------------------


def test_daemon_killed_during_complete_keeps_the_old_object_and_the_retry_works(
    tmp_path: Path,
) -> None:
    """The backend assembles the upload (its answer held by a proxy), the daemon is killed before
    its commit: after a restart the previous object is intact and readable with its ETag, and
    the retried CompleteMultipartUpload succeeds at once (no SlowDown)."""
    from test.support.clients import boto3_client
    from test.support.process import DaemonProcess

    weed = seaweed_or_skip()
    bucket = f"s3b-kill-{secrets.token_hex(4)}"
    weed.create_bucket(bucket)
    target = urlsplit(weed.endpoint)
    direct = weed.boto3_client()
    with StallProxy((target.hostname or "127.0.0.1", target.port or 80)) as proxy:
        config: dict[str, Any] = {
            "buckets": [
                weed.bucket_entry("weed", bucket, endpoint=proxy.endpoint),
                {"name": "vbk", "virtual": True},
            ],
        }
        with DaemonProcess(tmp_path, config) as daemon:
            s3 = boto3_client(
                daemon.endpoint, read_timeout=20, request_checksum_calculation="when_required"
            )
            old = b"the previous object"
            s3.put_object(Bucket="vbk", Key="k", Body=old)
            upload = s3.create_multipart_upload(Bucket="vbk", Key="k")["UploadId"]
            first = secrets.token_bytes(5 * 1024 * 1024)
            parts = []
            for number, data in ((1, first), (2, b"tail")):
                etag = s3.upload_part(
                    Bucket="vbk", Key="k", UploadId=upload, PartNumber=number, Body=data
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            total = len(first) + 4

            proxy.hold()
            outcome: list[Any] = []

            def complete() -> None:
                try:
                    outcome.append(
                        s3.complete_multipart_upload(
                            Bucket="vbk", Key="k", UploadId=upload,
                            MultipartUpload={"Parts": parts},
                        )
                    )
                except Exception as error:  # the daemon dies under it
                    outcome.append(error)

            caller = threading.Thread(target=complete)
            caller.start()

            def assembled() -> bool:
                listed = direct.list_objects_v2(Bucket=bucket).get("Contents", [])
                return any(o["Size"] == total for o in listed)

            deadline = time.monotonic() + 10
            while not (assembled() and proxy.held_bytes):
                assert time.monotonic() < deadline, "the backend never assembled the upload"
                time.sleep(0.05)
            assert daemon.process is not None
            daemon.process.kill()
            daemon.process.wait(10)
            caller.join(30)
            assert outcome and isinstance(outcome[0], Exception), outcome
            proxy.release()

            daemon.start()
            head = s3.head_object(Bucket="vbk", Key="k")
            got = s3.get_object(Bucket="vbk", Key="k")
            body = got["Body"].read()
            assert body == old
            assert (head["ContentLength"], head["ETag"]) == (len(old), md5_etag(old))
            assert got["ETag"] == md5_etag(body)

            started = time.monotonic()
            done = s3.complete_multipart_upload(
                Bucket="vbk", Key="k", UploadId=upload, MultipartUpload={"Parts": parts}
            )
            assert time.monotonic() - started < 10
            assert done["ETag"].endswith('-2"')
            got = s3.get_object(Bucket="vbk", Key="k")
            assert got["Body"].read() == first + b"tail"
            assert got["ETag"] == done["ETag"]
            assert s3.list_multipart_uploads(Bucket="vbk").get("Uploads", []) == []


def test_delete_grace_configuration() -> None:
    """``server.delete_grace``: by database type unless given; read back; a bad value named."""
    import pytest

    from s3balance.configfile import ConfigError, config_to_dict, parse_config
    from s3balance.gateway import GatewaySettings

    buckets = [{"name": "disk", "path": "d"}, {"name": "vbk", "virtual": True}]
    default = parse_config({"buckets": buckets})
    assert default.server.delete_grace is None
    assert GatewaySettings.from_config(default).delete_grace == 0.0  # SQLite: one daemon
    shared = parse_config({"buckets": buckets, "database": {"type": "postgres", "dsn": "postgresql://u@h/db"}})
    assert GatewaySettings.from_config(shared).delete_grace == 60.0
    given = parse_config({"buckets": buckets, "server": {"delete_grace": "5s"}})
    assert GatewaySettings.from_config(given).delete_grace == 5.0
    assert config_to_dict(given)["server"]["delete_grace"] == "5s"
    assert parse_config(config_to_dict(given, mask_secrets=False)).server.delete_grace == 5.0
    with pytest.raises(ConfigError) as caught:
        parse_config({"buckets": buckets, "server": {"delete_grace": "soon"}})
    assert "server.delete_grace" in str(caught.value)
