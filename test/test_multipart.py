"""The multipart core with a real SQLite store and real local-directory backends.

What matters to a user: an upload assembles exactly the parts listed, with S3's ETag, on one
backend; every S3 error comes back with its code; aborting leaves nothing on any backend; and
GET ``partNumber`` finds each part's bytes.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.trial import unittest

from s3balance import errors
from s3balance.db.records import ObjectRecord
from s3balance.etags import multipart_etag
from s3balance.multipart import (
    MIN_PART_SIZE,
    MultipartUploads,
    parse_copy_range,
)
from s3balance.parts import parse_part_number, part_range, parts_count
from s3balance.web.objects import BytesBody
from test.support.bodies import BodyFailed, GeneratedBody, collect, generated_bytes
from test.support.daemon import InProcessDaemon

SMALL_MIN = 1024


def md5_etag(*chunks: bytes) -> str:
    joined = b"".join(hashlib.md5(c).digest() for c in chunks)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(chunks)}"'


class MultipartCoreCase(InProcessDaemon, unittest.TestCase):
    timeout = 60
    min_part_size = SMALL_MIN

    async def start(self) -> None:
        await super().start()
        self.uploads = MultipartUploads(self.gateway, min_part_size=self.min_part_size)

    async def part(self, upload_id: str, number: int, data: bytes, key: str = "k") -> str:
        record = await self.uploads.upload_part(
            "vb", key, upload_id, number, BytesBody(data), len(data)
        )
        return record.etag

    async def backend_files(self) -> dict[str, list[str]]:
        """Every file under each backend's objects/ and uploads/ trees."""
        found: dict[str, list[str]] = {}
        for name in self.backend_names:
            root = os.path.join(self.workdir, name)
            files = []
            for tree in ("objects", "uploads"):
                for directory, _, names in os.walk(os.path.join(root, tree)):
                    files.extend(os.path.join(directory, n) for n in names)
            found[name] = files
        return found

    async def read(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        record = await self.gateway.get_object_record("vb", key)
        async with self.gateway.reading(record, byte_range) as stream:
            return await collect(stream)

    async def assert_s3_error(self, code: str, coroutine: object) -> errors.S3Error:
        try:
            await coroutine  # type: ignore[misc]
        except errors.S3Error as error:
            self.assertEqual(error.code, code, error.message)
            return error
        self.fail(f"expected {code}")


class LifecycleTests(MultipartCoreCase):
    async def test_complete_assembles_the_listed_parts_with_s3s_etag(self) -> None:
        upload = await self.uploads.create(
            "vb", "k", {"content-type": "text/plain"}, {"colour": "blue"}
        )
        self.assertGreaterEqual(len(upload.upload_id), 32)
        self.assertNotEqual(upload.upload_id, upload.backend_upload_id)
        one, two, three = b"a" * 2000, b"b" * 3000, b"tail"
        etags = [
            await self.part(upload.upload_id, n, d) for n, d in [(1, one), (2, two), (3, three)]
        ]
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(1, etags[0]), (2, etags[1].strip('"')), (3, etags[2])]
        )
        self.assertEqual(record.etag, md5_etag(one, two, three))
        self.assertEqual(record.size, 5004)
        self.assertEqual(record.part_sizes, (2000, 3000, 4))
        self.assertEqual(await self.read("k"), one + two + three)
        stored = await self.store.get_object("vb", "k")
        assert stored is not None
        self.assertEqual(stored.etag, record.etag)
        self.assertEqual(stored.headers, {"content-type": "text/plain"})
        self.assertEqual(stored.metadata, {"colour": "blue"})
        self.assertIsNone(await self.store.get_upload(upload.upload_id))
        # The upload's directory is gone from the backend once complete.
        files = await self.backend_files()
        self.assertEqual([f for name in files for f in files[name] if "/uploads/" in f], [])

    async def test_only_listed_parts_count_and_a_reuploaded_part_replaces_the_old(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, b"x" * 2000)
        first = await self.part(upload.upload_id, 1, b"y" * 2000)
        await self.part(upload.upload_id, 2, b"never listed")
        last = await self.part(upload.upload_id, 3, b"z")
        record = await self.uploads.complete("vb", "k", upload.upload_id, [(1, first), (3, last)])
        self.assertEqual(await self.read("k"), b"y" * 2000 + b"z")
        self.assertEqual(record.part_sizes, (2000, 1))
        usage = await self.store.usage()
        # Unlisted part 2 no longer counts as used bytes; the object does.
        self.assertEqual(usage[upload.backend].used_bytes, 2001)

    async def test_parts_in_progress_count_as_used_bytes_until_abort(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, b"x" * 700)
        await self.part(upload.upload_id, 1, b"x" * 500)
        await self.part(upload.upload_id, 2, b"x" * 100)
        self.assertEqual((await self.store.usage())[upload.backend].used_bytes, 600)
        self.assertEqual(self.daemon.usage.usage(upload.backend).used_bytes, 600)
        await self.uploads.abort("vb", "k", upload.upload_id)
        self.assertEqual((await self.store.usage())[upload.backend].used_bytes, 0)
        self.assertEqual(self.daemon.usage.usage(upload.backend).used_bytes, 0)

    async def test_abort_leaves_nothing_on_the_backend(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.part(upload.upload_id, 1, b"x" * 5000)
        await self.part(upload.upload_id, 2, b"y" * 10)
        files = await self.backend_files()
        self.assertTrue(any("/uploads/" in f for f in files[upload.backend]))
        class_a = self.daemon.pool.operation_counts(upload.backend).class_a
        await self.uploads.abort("vb", "k", upload.upload_id)
        # AbortMultipartUpload is free (R2 bills it nothing): no class A operation counted.
        self.assertEqual(self.daemon.pool.operation_counts(upload.backend).class_a, class_a)
        self.assertEqual(await self.backend_files(), {name: [] for name in self.backend_names})
        self.assertIsNone(await self.store.get_upload(upload.upload_id))
        await self.assert_s3_error("NoSuchUpload", self.uploads.abort("vb", "k", upload.upload_id))
        await self.assert_s3_error("NoSuchUpload", self.part(upload.upload_id, 3, b"late"))

    async def test_create_only_completions_race_and_one_wins(self) -> None:
        from s3balance.db.store import ANY, Condition

        uploads = [await self.uploads.create("vb", "lock", {}, {}) for _ in range(2)]
        etags = [
            await self.part(u.upload_id, 1, bytes([65 + n]) * 10, key="lock")
            for n, u in enumerate(uploads)
        ]
        create_only = Condition(if_none_match=ANY)
        outcomes = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    self.uploads.complete(
                        "vb", "lock", u.upload_id, [(1, e)], condition=create_only
                    )
                ).addErrback(lambda failure: failure.value)
                for u, e in zip(uploads, etags, strict=True)
            ]
        )
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, errors.S3Error)]
        self.assertEqual((len(winners), len(losers)), (1, 1), outcomes)
        self.assertEqual(losers[0].code, "PreconditionFailed")
        record = await self.store.get_object("vb", "lock")
        assert record is not None
        objects = [k for name in self.backend_names for k in await self.daemon.real_keys(name)]
        self.assertEqual(objects, [record.locations[0].real_key])  # no assembled loser

    async def test_a_repeated_completion_answers_the_same_result(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        etag = await self.part(upload.upload_id, 1, b"data")
        first = await self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)])
        again = await self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)])
        self.assertEqual((again.etag, again.size), (first.etag, first.size))
        await self.assert_s3_error(
            "NoSuchUpload", self.uploads.complete("vb", "other", upload.upload_id, [(1, etag)])
        )

    async def test_completing_over_an_object_on_another_backend_deletes_the_old_bytes(
        self,
    ) -> None:
        old = await self.gateway.put_object("vb", "k", BytesBody(b"old"), 3, {}, {})
        upload = await self.uploads.create("vb", "k", {}, {})
        (old_location,) = old.locations
        self.assertNotEqual(old_location.backend, upload.backend)  # round-robin
        etag = await self.part(upload.upload_id, 1, b"new")
        await self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)])
        self.assertEqual(await self.read("k"), b"new")
        self.assertEqual(await self.daemon.real_keys(old_location.backend), [])
        self.assertEqual(await self.daemon.real_keys(upload.backend), [upload.real_key])
        self.assertTrue(upload.real_key.startswith("vb/k~w"))

    async def test_completing_over_an_object_on_the_same_backend_keeps_the_new_bytes(
        self,
    ) -> None:
        upload_first = await self.uploads.create("vb", "k", {}, {})
        etag = await self.part(upload_first.upload_id, 1, b"first")
        await self.uploads.complete("vb", "k", upload_first.upload_id, [(1, etag)])
        await self.gateway.put_object("vb", "other", BytesBody(b"o"), 1, {}, {})  # next turn
        upload = await self.uploads.create("vb", "k", {}, {})
        self.assertEqual(upload.backend, upload_first.backend)
        etag = await self.part(upload.upload_id, 1, b"second")
        await self.uploads.complete("vb", "k", upload.upload_id, [(1, etag)])
        self.assertEqual(await self.read("k"), b"second")

    async def test_upload_ids_are_bound_to_their_bucket_and_key(self) -> None:
        await self.store.create_bucket("other", 0)
        upload = await self.uploads.create("vb", "k", {}, {})
        await self.assert_s3_error("NoSuchUpload", self.part(upload.upload_id, 1, b"x", key="j"))
        await self.assert_s3_error(
            "NoSuchUpload",
            self.uploads.upload_part("other", "k", upload.upload_id, 1, BytesBody(b"x"), 1),
        )
        await self.assert_s3_error("NoSuchUpload", self.part(upload.backend_upload_id, 1, b"x"))
        await self.assert_s3_error("NoSuchUpload", self.uploads.abort("vb", "k", "made-up"))
        await self.assert_s3_error(
            "NoSuchBucket", self.uploads.list_parts("nobucket", "k", upload.upload_id, 0, 10)
        )

    async def test_create_in_a_missing_bucket(self) -> None:
        await self.assert_s3_error("NoSuchBucket", self.uploads.create("nope", "k", {}, {}))

    async def test_part_number_and_size_limits(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        for number in (0, 10001):
            await self.assert_s3_error("InvalidArgument", self.part(upload.upload_id, number, b"x"))
        body = GeneratedBody(0, length=5 * 1024**3 + 1)
        await self.assert_s3_error(
            "EntityTooLarge",
            self.uploads.upload_part("vb", "k", upload.upload_id, 1, body, 5 * 1024**3 + 1),
        )
        self.assertEqual(body.produced, 0)
        for raw in ("", "x", "0", "10001", "1.5"):
            with self.assertRaises(errors.S3Error) as raised:
                parse_part_number(raw)
            self.assertEqual(raised.exception.code, "InvalidArgument")
        self.assertEqual(parse_part_number("10000"), 10000)

    async def test_a_broken_part_fails_alone_and_the_upload_goes_on(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        good = await self.part(upload.upload_id, 1, b"g" * 2000)
        broken = GeneratedBody(300_000, fail_after=100_000)
        with self.assertRaises(BodyFailed):
            await self.uploads.upload_part("vb", "k", upload.upload_id, 2, broken, 300_000)
        _, parts, _ = await self.uploads.list_parts("vb", "k", upload.upload_id, 0, 1000)
        self.assertEqual([p.part_number for p in parts], [1])
        last = await self.part(upload.upload_id, 2, b"ok")
        await self.uploads.complete("vb", "k", upload.upload_id, [(1, good), (2, last)])
        self.assertEqual(await self.read("k"), b"g" * 2000 + b"ok")

    async def test_concurrent_parts(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        sizes = [150_000 + n for n in range(8)]
        etags = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    self.uploads.upload_part(
                        "vb", "k", upload.upload_id, n + 1, GeneratedBody(size, seed=n), size
                    )
                )
                for n, size in enumerate(sizes)
            ]
        )
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(p.part_number, p.etag) for p in etags]
        )
        expected = b"".join(generated_bytes(size, seed=n) for n, size in enumerate(sizes))
        self.assertEqual(await self.read("k"), expected)
        self.assertEqual(
            record.etag,
            md5_etag(*(generated_bytes(size, seed=n) for n, size in enumerate(sizes))),
        )


class CompleteErrorTests(MultipartCoreCase):
    async def _two_parts(self) -> tuple[str, str, str]:
        upload = await self.uploads.create("vb", "k", {}, {})
        one = await self.part(upload.upload_id, 1, b"a" * 2000)
        two = await self.part(upload.upload_id, 2, b"b" * 10)
        return upload.upload_id, one, two

    async def test_wrong_etag_is_invalid_part(self) -> None:
        upload_id, one, _ = await self._two_parts()
        await self.assert_s3_error(
            "InvalidPart",
            self.uploads.complete("vb", "k", upload_id, [(1, one), (2, '"' + "0" * 32 + '"')]),
        )

    async def test_missing_part_is_invalid_part(self) -> None:
        upload_id, one, two = await self._two_parts()
        await self.assert_s3_error(
            "InvalidPart", self.uploads.complete("vb", "k", upload_id, [(1, one), (3, two)])
        )

    async def test_order_and_duplicates(self) -> None:
        upload_id, one, two = await self._two_parts()
        await self.assert_s3_error(
            "InvalidPartOrder", self.uploads.complete("vb", "k", upload_id, [(2, two), (1, one)])
        )
        await self.assert_s3_error(
            "InvalidPartOrder", self.uploads.complete("vb", "k", upload_id, [(1, one), (1, one)])
        )

    async def test_small_part_that_is_not_last(self) -> None:
        upload_id, one, two = await self._two_parts()
        three = await self.part(upload_id, 3, b"c")
        error = await self.assert_s3_error(
            "EntityTooSmall",
            self.uploads.complete("vb", "k", upload_id, [(1, one), (2, two), (3, three)]),
        )
        self.assertEqual(error.extra["PartNumber"], "2")

    async def test_no_parts_is_malformed(self) -> None:
        upload_id, _, _ = await self._two_parts()
        await self.assert_s3_error("MalformedXML", self.uploads.complete("vb", "k", upload_id, []))

    async def test_a_failed_complete_leaves_the_upload_usable(self) -> None:
        upload_id, one, two = await self._two_parts()
        await self.assert_s3_error(
            "InvalidPartOrder", self.uploads.complete("vb", "k", upload_id, [(2, two), (1, one)])
        )
        await self.uploads.complete("vb", "k", upload_id, [(1, one), (2, two)])
        self.assertEqual(await self.read("k"), b"a" * 2000 + b"b" * 10)
        self.assertIsNone(await self.store.get_object("vb", "never"))


class RealMinimumPartSizeTests(MultipartCoreCase):
    min_part_size = MIN_PART_SIZE

    async def test_five_mib_parts_are_accepted_and_smaller_ones_refused(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        small = await self.part(upload.upload_id, 1, b"s" * (MIN_PART_SIZE - 1))
        exact = await self.uploads.upload_part(
            "vb", "k", upload.upload_id, 2, GeneratedBody(MIN_PART_SIZE, 2), MIN_PART_SIZE
        )
        last = await self.part(upload.upload_id, 3, b"end")
        await self.assert_s3_error(
            "EntityTooSmall",
            self.uploads.complete("vb", "k", upload.upload_id, [(1, small), (3, last)]),
        )
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(2, exact.etag), (3, last)]
        )
        self.assertEqual(record.size, MIN_PART_SIZE + 3)
        self.assertTrue(record.etag.endswith('-2"'))


class CopyPartTests(MultipartCoreCase):
    async def _copy(self, source_key: str, byte_range: tuple[int, int] | None) -> bytes:
        source = await self.gateway.get_object_record("vb", source_key)
        upload = await self.uploads.create("vb", "dest", {}, {})
        part = await self.uploads.upload_part_copy(
            "vb", "dest", upload.upload_id, 1, source, byte_range
        )
        await self.uploads.complete("vb", "dest", upload.upload_id, [(1, part.etag)])
        return await self.read("dest")

    async def test_copy_whole_and_ranges(self) -> None:
        data = generated_bytes(100_000, 5)
        await self.gateway.put_object("vb", "src", BytesBody(data), len(data), {}, {})
        self.assertEqual(await self._copy("src", (10, 20_009)), data[10:20_010])
        self.assertEqual(await self._copy("src", None), data)
        with self.assertRaises(errors.S3Error) as raised:
            await self._copy("src", (0, 100_000))
        self.assertEqual(raised.exception.code, "InvalidRange")

    def test_copy_range_parsing(self) -> None:
        self.assertEqual(parse_copy_range("bytes=0-9", 10), (0, 9))
        self.assertIsNone(parse_copy_range(None, 10))
        for malformed in ("bytes=5-2", "bytes=a-b", "0-9", "bytes=-5", "bytes=3-"):
            with self.assertRaises(errors.S3Error) as raised:
                parse_copy_range(malformed, 10)
            self.assertEqual(raised.exception.code, "InvalidArgument", malformed)
        with self.assertRaises(errors.S3Error) as raised:
            parse_copy_range("bytes=5-10", 10)
        self.assertEqual(raised.exception.code, "InvalidRange")


class CopyAcrossBackendsTests(MultipartCoreCase):
    async def test_streamed_and_server_side_copies_give_the_same_bytes(self) -> None:
        data = generated_bytes(300_000, 9)
        await self.gateway.put_object("vb", "src", BytesBody(data), len(data), {}, {})
        source = await self.gateway.get_object_record("vb", "src")
        source_backend = source.locations[0].backend
        results = {}
        for key in ("d1", "d2"):
            upload = await self.uploads.create("vb", key, {}, {})
            part = await self.uploads.upload_part_copy(
                "vb", key, upload.upload_id, 1, source, (1000, 250_999)
            )
            self.assertEqual(part.size, 250_000)
            await self.uploads.complete("vb", key, upload.upload_id, [(1, part.etag)])
            results[upload.backend == source_backend] = await self.read(key)
        # One copy was server-side, the other streamed between backends.
        self.assertEqual(set(results), {True, False})
        self.assertEqual(results[True], data[1000:251_000])
        self.assertEqual(results[False], data[1000:251_000])


class ListingTests(MultipartCoreCase):
    async def test_list_parts_pages(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        for number in range(1, 6):
            await self.part(upload.upload_id, number, b"p%d" % number)
        _, first, truncated = await self.uploads.list_parts("vb", "k", upload.upload_id, 0, 2)
        self.assertEqual([p.part_number for p in first], [1, 2])
        self.assertTrue(truncated)
        _, rest, truncated = await self.uploads.list_parts("vb", "k", upload.upload_id, 2, 10)
        self.assertEqual([p.part_number for p in rest], [3, 4, 5])
        self.assertFalse(truncated)
        self.assertEqual(rest[0].size, 2)

    async def test_list_uploads_with_prefix_and_delimiter(self) -> None:
        ids = {}
        for key in ("a/1", "a/2", "b", "c"):
            ids[key] = (await self.uploads.create("vb", key, {}, {})).upload_id
        page = await self.uploads.list_uploads("vb", delimiter="/")
        self.assertEqual([u.key for u in page.uploads], ["b", "c"])
        self.assertEqual(page.common_prefixes, ["a/"])
        page = await self.uploads.list_uploads("vb", prefix="a/", max_uploads=1)
        self.assertEqual([u.upload_id for u in page.uploads], [ids["a/1"]])
        self.assertTrue(page.is_truncated)
        page = await self.uploads.list_uploads(
            "vb",
            prefix="a/",
            key_marker=page.next_key_marker or "",
            upload_id_marker=page.next_upload_id_marker or "",
        )
        self.assertEqual([u.key for u in page.uploads], ["a/2"])


class PartRangeTests(unittest.TestCase):
    def record(self, size: int, part_sizes: tuple[int, ...] = ()) -> ObjectRecord:
        return ObjectRecord("vb", "k", size, '"x"', 0.0, part_sizes=part_sizes)

    def test_parts_of_a_multipart_object(self) -> None:
        record = self.record(12, (5, 5, 2))
        self.assertEqual(part_range(record, 1), (0, 4))
        self.assertEqual(part_range(record, 2), (5, 9))
        self.assertEqual(part_range(record, 3), (10, 11))
        self.assertEqual(parts_count(record), 3)
        with self.assertRaises(errors.S3Error) as raised:
            part_range(record, 4)
        self.assertEqual(
            (raised.exception.code, raised.exception.status), ("InvalidPartNumber", 416)
        )

    def test_a_plain_object_is_one_part(self) -> None:
        record = self.record(7)
        self.assertEqual(part_range(record, 1), (0, 6))
        self.assertIsNone(parts_count(record))
        with self.assertRaises(errors.S3Error) as raised:
            part_range(record, 2)
        self.assertEqual(raised.exception.code, "InvalidPartNumber")
        with self.assertRaises(errors.S3Error) as raised:
            part_range(record, 0)
        self.assertEqual(raised.exception.code, "InvalidArgument")

    def test_multipart_etag_of_known_parts(self) -> None:
        # The ETag S3 (and every S3 client's checks) compute for parts "a" and "b".
        self.assertEqual(
            multipart_etag(
                ['"0cc175b9c0f1b6a831c399e269772661"', "92eb5ffee6ae2fec3ad71c777531578f"]
            ),
            md5_etag(b"a", b"b"),
        )
        self.assertIsNone(multipart_etag(['"not-an-md5"']))


class GetPartNumberTests(MultipartCoreCase):
    async def test_part_ranges_read_each_parts_bytes(self) -> None:
        upload = await self.uploads.create("vb", "k", {}, {})
        chunks = [b"a" * 2000, b"b" * 1500, b"c" * 7]
        etags = [await self.part(upload.upload_id, n + 1, c) for n, c in enumerate(chunks)]
        record = await self.uploads.complete(
            "vb", "k", upload.upload_id, [(n + 1, e) for n, e in enumerate(etags)]
        )
        for number, chunk in enumerate(chunks, start=1):
            self.assertEqual(await self.read("k", part_range(record, number)), chunk)
