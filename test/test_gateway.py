"""The gateway core with a real SQLite store and real local-directory backends.

What matters to a user here: objects spread over the real buckets, a refused write moves on to the
next backend, and whatever happens (overwrites, races, broken bodies, a bucket deleted during the
upload) the metadata and the bytes on the backends agree: no row without bytes, no orphan bytes.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance import errors
from s3balance.conditions import Preconditions
from s3balance.config import Config
from s3balance.reads import ReadRequest
from s3balance.realkeys import parse_real_key
from s3balance.web.objects import BytesBody
from test.support.bodies import (
    BodyFailed,
    GeneratedBody,
    IgnoresFlowControl,
    collect,
    generated_md5,
)
from test.support.daemon import InProcessDaemon
from test.test_pool import database_down


@implementer(IBodyProducer)
class HeldBody(IgnoresFlowControl):
    """Writes its bytes, then ends only when the test says so (to act in between)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)
        self.written: defer.Deferred[None] = defer.Deferred()
        self.release: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.data)
        self.written.callback(None)
        return self.release


class GatewayTestCase(InProcessDaemon, unittest.TestCase):
    timeout = 60

    async def put(self, key: str, data: bytes, bucket: str = "vb") -> Any:
        return await self.gateway.put_object(
            bucket, key, BytesBody(data), len(data), {"content-type": "text/plain"}, {}
        )

    async def everything_on_backends(self) -> dict[str, list[str]]:
        return {name: await self.daemon.real_keys(name) for name in self.backend_names}

    async def read(self, bucket: str, key: str) -> bytes:
        record = await self.gateway.get_object_record(bucket, key)
        async with self.gateway.reading(record) as stream:
            return await collect(stream)


def virtual(real: str) -> str:
    """``<bucket>/<key>`` of a real key (its write id dropped)."""
    parsed = parse_real_key(real)
    assert parsed is not None and parsed.key is not None and parsed.write_id, real
    return f"{parsed.bucket}/{parsed.key}"


class PlacementTests(GatewayTestCase):
    async def test_objects_spread_over_both_backends_and_rows_point_at_the_bytes(self) -> None:
        for index in range(6):
            await self.put(f"key{index}", b"data %d" % index)
        on_backends = await self.everything_on_backends()
        self.assertEqual(len(on_backends["r1"]), 3)
        self.assertEqual(len(on_backends["r2"]), 3)
        for index in range(6):
            record = await self.store.get_object("vb", f"key{index}")
            assert record is not None
            (location,) = record.locations
            parsed = parse_real_key(location.real_key)
            assert parsed is not None
            self.assertEqual((parsed.bucket, parsed.key), ("vb", f"key{index}"))
            self.assertIn(location.real_key, on_backends[location.backend])
            self.assertEqual(await self.read("vb", f"key{index}"), b"data %d" % index)

    async def test_etag_and_size_are_the_backends(self) -> None:
        record = await self.put("k", b"hello")
        self.assertEqual(record.etag, '"5d41402abc4b2a76b9719d911017c592"')
        self.assertEqual(record.size, 5)
        self.assertEqual(record.headers, {"content-type": "text/plain"})

    async def test_missing_bucket_is_refused_before_any_byte_goes_out(self) -> None:
        body = GeneratedBody(1000)
        with self.assertRaises(errors.S3Error) as raised:
            await self.gateway.put_object("nope", "k", body, 1000, {}, {})
        self.assertEqual(raised.exception.code, "NoSuchBucket")
        self.assertEqual(body.produced, 0)

    async def test_a_large_body_streams_through(self) -> None:
        size = 3 * 1024 * 1024 + 17
        record = await self.gateway.put_object("vb", "big", GeneratedBody(size, 7), size, {}, {})
        self.assertEqual(record.etag, f'"{generated_md5(size, 7)}"')


class RetryTests(GatewayTestCase):
    """The first backend refuses before reading the body: the next one takes the object."""

    async def start(self) -> None:
        await super().start()
        # Let the backend finish preparing its directory (its disk threads walk it), then pull
        # the disk away: the local backend answers BackendUnavailable before the body.
        await self.daemon.pool.get("r1").capacity()
        shutil.rmtree(os.path.join(self.workdir, "r1"))

    async def test_refused_writes_move_to_the_next_choice(self) -> None:
        for index in range(4):
            await self.put(f"k{index}", b"x%d" % index)
        self.assertEqual(len(await self.daemon.real_keys("r2")), 4)
        for index in range(4):
            record = await self.store.get_object("vb", f"k{index}")
            assert record is not None
            (location,) = record.locations
            self.assertEqual(location.backend, "r2")
            self.assertEqual(virtual(location.real_key), f"vb/k{index}")

    async def test_a_body_that_cannot_be_replayed_is_not_retried(self) -> None:
        # Round robin starts with r1 (the broken one) for the first key.
        body = GeneratedBody(100)
        with self.assertRaises(errors.S3Error) as raised:
            await self.gateway.put_object("vb", "k", body, 100, {}, {})
        self.assertEqual(
            (raised.exception.code, raised.exception.status), ("ServiceUnavailable", 503)
        )
        self.assertIsNone(await self.store.get_object("vb", "k"))


class NoRetryTests(RetryTests):
    def configure(self, config: Config) -> None:
        config.balancer.retry_attempts = 1

    async def test_refused_writes_move_to_the_next_choice(self) -> None:
        with self.assertRaises(errors.S3Error) as raised:
            await self.put("k0", b"x")
        self.assertEqual(raised.exception.status, 503)
        self.assertIsNone(await self.store.get_object("vb", "k0"))


class FullTests(GatewayTestCase):
    def configure(self, config: Config) -> None:
        for bucket in config.real_buckets:
            bucket.max_size = 10

    async def test_no_backend_with_room_is_insufficient_storage(self) -> None:
        await self.put("small", b"123456")
        with self.assertRaises(errors.S3Error) as raised:
            await self.put("large", b"x" * 11)
        self.assertEqual(raised.exception.status, 503)
        self.assertEqual(raised.exception.code, "ServiceUnavailable")
        self.assertIn("No backend", raised.exception.message)


class ConsistencyTests(GatewayTestCase):
    async def test_overwrite_on_another_backend_removes_the_old_bytes(self) -> None:
        await self.put("k", b"first")
        first = await self.store.get_object("vb", "k")
        await self.put("k", b"second")  # round robin: the other backend
        second = await self.store.get_object("vb", "k")
        assert first is not None and second is not None
        self.assertNotEqual(first.locations[0].backend, second.locations[0].backend)
        on_backends = await self.everything_on_backends()
        self.assertEqual(on_backends[first.locations[0].backend], [])
        self.assertEqual(on_backends[second.locations[0].backend], [second.locations[0].real_key])
        self.assertEqual(virtual(second.locations[0].real_key), "vb/k")
        self.assertEqual(await self.read("vb", "k"), b"second")
        usage = await self.store.usage()
        self.assertEqual(sum(u.used_bytes for u in usage.values()), len(b"second"))

    async def test_overwrite_on_the_same_backend_keeps_the_new_bytes(self) -> None:
        await self.put("k", b"one")
        await self.put("other", b"skip")  # moves round robin along
        await self.put("k", b"three")
        on_backends = await self.everything_on_backends()
        kept = sorted(on_backends["r1"] + on_backends["r2"])
        self.assertEqual([virtual(real) for real in kept], ["vb/k", "vb/other"])
        self.assertEqual(await self.read("vb", "k"), b"three")

    async def test_concurrent_overwrites_leave_one_object_and_no_orphan(self) -> None:
        puts = [
            defer.ensureDeferred(
                self.gateway.put_object(
                    "vb", "race", GeneratedBody(200_000 + i, seed=i), 200_000 + i, {}, {}
                )
            )
            for i in range(6)
        ]
        results = await defer.gatherResults(puts)
        self.assertEqual(len(results), 6)
        on_backends = await self.everything_on_backends()
        holders = [
            name
            for name, keys in on_backends.items()
            for real in keys
            if virtual(real) == "vb/race"
        ]
        self.assertEqual(len(holders), 1, on_backends)
        record = await self.store.get_object("vb", "race")
        assert record is not None
        self.assertEqual(record.locations[0].backend, holders[0])
        data = await self.read("vb", "race")
        self.assertEqual(len(data), record.size)
        seed = record.size - 200_000
        self.assertEqual(record.etag, f'"{generated_md5(record.size, seed)}"')
        usage = await self.store.usage()
        self.assertEqual(sum(u.used_bytes for u in usage.values()), record.size)
        self.assertEqual(sum(u.object_count for u in usage.values()), 1)

    async def test_a_failed_body_leaves_no_row_and_no_bytes(self) -> None:
        body = GeneratedBody(500_000, fail_after=300_000)
        with self.assertRaises(BodyFailed):
            await self.gateway.put_object("vb", "broken", body, 500_000, {}, {})
        self.assertIsNone(await self.store.get_object("vb", "broken"))
        self.assertEqual(await self.everything_on_backends(), {"r1": [], "r2": []})

    async def test_a_failed_overwrite_keeps_the_previous_object(self) -> None:
        await self.put("k", b"keep me")
        await self.put("pad", b"pad")  # the next write goes to the other backend... and back
        for _attempt in range(2):
            body = GeneratedBody(100_000, fail_after=50_000)
            with self.assertRaises(BodyFailed):
                await self.gateway.put_object("vb", "k", body, 100_000, {}, {})
        self.assertEqual(await self.read("vb", "k"), b"keep me")

    async def test_bucket_deleted_during_the_upload_removes_the_bytes(self) -> None:
        body = HeldBody(b"payload")
        put = defer.ensureDeferred(self.gateway.put_object("vb", "k", body, 7, {}, {}))
        await body.written
        await self.store.delete_bucket("vb")
        body.release.callback(None)
        with self.assertRaises(errors.S3Error) as raised:
            await put
        self.assertEqual(raised.exception.code, "NoSuchBucket")
        self.assertEqual(await self.everything_on_backends(), {"r1": [], "r2": []})

    async def test_small_puts_ask_the_database_for_their_bucket_once_a_second(self) -> None:
        asked: list[str] = []
        get_bucket = self.store.get_bucket

        def counting(name: str) -> Any:
            asked.append(name)
            return get_bucket(name)

        self.patch(self.store, "get_bucket", counting)
        for index in range(5):
            await self.put(f"k{index}", b"data")
        self.assertEqual(asked, ["vb"])

    async def test_a_bucket_deleted_elsewhere_still_refuses_the_next_put(self) -> None:
        # Another daemon (here: the store directly) deletes the bucket just after this one saw
        # it: the next PUT is still refused, and leaves neither a row nor bytes.
        await self.put("k", b"data")
        await self.gateway.delete_object("vb", "k")
        await self.store.delete_bucket("vb")
        with self.assertRaises(errors.S3Error) as raised:
            await self.put("k2", b"data")
        self.assertEqual(raised.exception.code, "NoSuchBucket")
        self.assertEqual(await self.everything_on_backends(), {"r1": [], "r2": []})
        self.assertIsNone(await self.store.get_object("vb", "k2"))

    async def test_a_bucket_deleted_here_refuses_before_any_byte(self) -> None:
        await self.put("k", b"data")
        await self.gateway.delete_object("vb", "k")
        await self.gateway.delete_bucket("vb")
        body = GeneratedBody(1000)
        with self.assertRaises(errors.S3Error) as raised:
            await self.gateway.put_object("vb", "k", body, 1000, {}, {})
        self.assertEqual(raised.exception.code, "NoSuchBucket")
        self.assertEqual(body.produced, 0)

    async def test_a_database_gone_at_the_commit_is_503_not_500(self) -> None:
        # The bucket check before the body passed; the database goes away while the bytes
        # travel: clients are told to retry (503), as for every other outage.
        await self.put("k", b"before")
        body = HeldBody(b"during")
        put = defer.ensureDeferred(self.gateway.put_object("vb", "k", body, 6, {}, {}))
        await body.written
        with database_down(self.store):
            body.release.callback(None)
            with self.assertRaises(errors.S3Error) as raised:
                await put
        error = raised.exception
        self.assertEqual((error.code, error.status), ("ServiceUnavailable", 503))
        self.assertEqual(await self.read("vb", "k"), b"before")
        # No connection was had, so nothing was committed: the new bytes are not kept.
        (before,) = (await self.store.get_object("vb", "k")).locations  # type: ignore[union-attr]
        on_backends = await self.everything_on_backends()
        self.assertEqual(sorted(sum(on_backends.values(), [])), [before.real_key])

    async def test_delete_removes_row_then_bytes_and_missing_keys_succeed(self) -> None:
        await self.put("k", b"data")
        await self.gateway.delete_object("vb", "k")
        self.assertIsNone(await self.store.get_object("vb", "k"))
        self.assertEqual(await self.everything_on_backends(), {"r1": [], "r2": []})
        await self.gateway.delete_object("vb", "k")
        with self.assertRaises(errors.S3Error) as raised:
            await self.gateway.delete_object("nope", "k")
        self.assertEqual(raised.exception.code, "NoSuchBucket")

    async def test_dangling_row_reads_as_no_such_key(self) -> None:
        record = await self.put("k", b"data")
        location = record.locations[0]
        await self.daemon.backends[location.backend].delete_object(location.real_key)
        with self.assertRaises(errors.S3Error) as raised:
            await self.read("vb", "k")
        self.assertEqual(raised.exception.code, "NoSuchKey")
        self.flushLoggedErrors()

    async def test_unavailable_backend_is_503_for_reads(self) -> None:
        record = await self.put("k", b"data")
        self.daemon.pool.set_enabled(record.locations[0].backend, False)
        with self.assertRaises(errors.S3Error) as raised:
            await self.read("vb", "k")
        self.assertEqual(
            (raised.exception.code, raised.exception.status), ("ServiceUnavailable", 503)
        )


class ReadTests(GatewayTestCase):
    async def test_the_plan_of_a_range_a_condition_and_a_head(self) -> None:
        record = await self.put("k", b"0123456789")
        plan = await self.gateway.read("vb", "k", ReadRequest(range_header="bytes=2-4"))
        async with plan:
            assert plan.stream is not None
            self.assertEqual(await collect(plan.stream), b"234")
        self.assertEqual((plan.status, plan.length, plan.content_range), (206, 3, "bytes 2-4/10"))
        unchanged = ReadRequest(preconditions=Preconditions(if_none_match=record.etag))
        plan = await self.gateway.read("vb", "k", unchanged)
        self.assertEqual((plan.status, plan.stream), (304, None))
        plan = await self.gateway.read("vb", "k", ReadRequest(with_body=False))
        self.assertEqual((plan.status, plan.length, plan.stream), (200, 10, None))
        self.assertEqual(self.gateway.readers_of(record.locations[0]), 0)

    async def test_an_object_overwritten_between_the_row_and_the_bytes_is_read_anew(self) -> None:
        await self.put("k", b"old")
        stale = await self.gateway.get_object_record("vb", "k")
        await self.put("k", b"new")  # no grace: the old bytes are gone now
        rows = [stale]
        current_row = self.gateway.get_object_record

        async def stale_row_first(bucket: str, key: str) -> Any:
            return rows.pop() if rows else await current_row(bucket, key)

        self.gateway.get_object_record = stale_row_first  # type: ignore[method-assign]
        plan = await self.gateway.read("vb", "k", ReadRequest())
        async with plan:
            assert plan.stream is not None
            self.assertEqual(await collect(plan.stream), b"new")
        self.assertEqual(rows, [])


class CopyTests(GatewayTestCase):
    async def test_copy_to_the_same_backend_and_to_the_other(self) -> None:
        size = 1_000_000
        await self.gateway.put_object("vb", "src", GeneratedBody(size, 3), size, {}, {"a": "1"})
        source = await self.gateway.get_object_record("vb", "src")
        copies = []
        for index in range(2):  # round robin: one copy lands on each backend
            copies.append(
                await self.gateway.copy_object(
                    source, "vb", f"copy{index}", {"content-type": "x/y"}, {"b": "2"}
                )
            )
        backends = {copy.locations[0].backend for copy in copies}
        self.assertEqual(backends, {"r1", "r2"})
        for copy in copies:
            self.assertEqual(copy.etag, f'"{generated_md5(size, 3)}"')
            self.assertEqual(copy.metadata, {"b": "2"})
            data = await self.read("vb", copy.key)
            self.assertEqual(len(data), size)


    async def test_a_source_deleted_under_the_copy_is_no_such_key_either_way(self) -> None:
        await self.put("src", b"source bytes")
        source = await self.gateway.get_object_record("vb", "src")
        (location,) = source.locations
        # Its location is being deleted (replaced meanwhile): no read may start on it.
        self.gateway.retirement._deleting.add(location)
        for index in range(2):  # round robin: one copy server-side, the other streamed
            with self.assertRaises(errors.S3Error) as raised:
                await self.gateway.copy_object(source, "vb", f"copy{index}", {}, {})
            self.assertEqual(raised.exception.code, "NoSuchKey")
            self.assertIn("changed during the copy", raised.exception.message)


class ReadBudgetTests(GatewayTestCase):
    def configure(self, config: Config) -> None:
        for bucket in config.real_buckets:
            bucket.operation_limits.type_b = 1

    async def test_reads_past_the_class_b_budget_slow_down(self) -> None:
        await self.put("k", b"data")
        self.assertEqual(await self.read("vb", "k"), b"data")
        with self.assertRaises(errors.S3Error) as raised:
            await self.read("vb", "k")
        self.assertEqual((raised.exception.code, raised.exception.status), ("SlowDown", 503))
