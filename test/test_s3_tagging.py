"""Object and bucket tagging through a real daemon over moto buckets, with boto3: the three tagging
operations, ``x-amz-tagging`` on writes, ``x-amz-tagging-count``, S3's limits and errors."""

from __future__ import annotations

import http.client
from typing import Any

from twisted.trial import unittest

from s3balance import tagging
from test.support.daemon import in_thread
from test.support.objectmeta import MotoDaemonCase


def tag_set(tags: dict[str, str]) -> dict[str, Any]:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}


class TaggingTests(MotoDaemonCase, unittest.TestCase):
    timeout = 120

    async def tags_of(self, key: str) -> dict[str, str]:
        got = await self.call(self.s3.get_object_tagging, Bucket="vb", Key=key)
        return {tag["Key"]: tag["Value"] for tag in got["TagSet"]}

    async def test_put_get_delete_and_tag_count(self) -> None:
        await self.call(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x", Tagging="a=1&b=two%20words"
        )
        self.assertEqual(await self.tags_of("k"), {"a": "1", "b": "two words"})
        head = await self.call(self.s3.head_object, Bucket="vb", Key="k")
        self.assertEqual(head["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"], "2")
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["TagCount"], 2)
        await self.call(
            self.s3.put_object_tagging, Bucket="vb", Key="k",
            Tagging=tag_set({"é/ü": "x+y=z", "empty": ""}),
        )
        self.assertEqual(await self.tags_of("k"), {"é/ü": "x+y=z", "empty": ""})
        deleted = await self.call(self.s3.delete_object_tagging, Bucket="vb", Key="k")
        self.assertEqual(deleted["ResponseMetadata"]["HTTPStatusCode"], 204)
        self.assertEqual(await self.tags_of("k"), {})
        head = await self.call(self.s3.head_object, Bucket="vb", Key="k")
        self.assertNotIn("x-amz-tagging-count", head["ResponseMetadata"]["HTTPHeaders"])
        # The bytes were never touched.
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["Body"].read(), b"x")

    async def test_an_overwrite_without_tags_clears_them(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"1", Tagging="a=1")
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"2")
        self.assertEqual(await self.tags_of("k"), {})

    async def test_copy_keeps_or_replaces_tags(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="src", Body=b"x", Tagging="a=1")
        await self.call(self.s3.copy_object, Bucket="vb", Key="kept", CopySource="vb/src")
        self.assertEqual(await self.tags_of("kept"), {"a": "1"})
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="replaced", CopySource="vb/src",
            TaggingDirective="REPLACE", Tagging="b=2",
        )
        self.assertEqual(await self.tags_of("replaced"), {"b": "2"})
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="none", CopySource="vb/src",
            TaggingDirective="REPLACE",
        )
        self.assertEqual(await self.tags_of("none"), {})
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="bad", CopySource="vb/src",
            TaggingDirective="MERGE",
        )
        self.assertEqual((code, status), ("InvalidArgument", 400))

    async def test_multipart_tags_apply_at_completion(self) -> None:
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key="mp", Tagging="part=of&it=all"
        )
        part = await self.call(
            self.s3.upload_part, Bucket="vb", Key="mp", UploadId=created["UploadId"],
            PartNumber=1, Body=b"p" * 100,
        )
        await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp",
            UploadId=created["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        self.assertEqual(await self.tags_of("mp"), {"part": "of", "it": "all"})

    async def test_limits_and_errors(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x", Tagging="keep=me")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]}, "BadRequest"),
            (tag_set({"k" * 129: "v"}), "InvalidTag"),
            (tag_set({"k": "v" * 257}), "InvalidTag"),
            (tag_set({"a*b": "v"}), "InvalidTag"),
            (tag_set({"k": "v;"}), "InvalidTag"),
            (tag_set({"aws:reserved": "v"}), "InvalidTag"),
            ({"TagSet": [{"Key": "d", "Value": "1"}, {"Key": "d", "Value": "2"}]}, "InvalidTag"),
        ]
        for tags, expected in cases:
            code, status, _ = await self.error_of(
                self.s3.put_object_tagging, Bucket="vb", Key="k", Tagging=tags
            )
            self.assertEqual((code, status), (expected, 400), tags)
        # The longest key and value, in any script, are fine; so are ten tags.
        longest = {"é" * 128: "ü" * 256}
        await self.call(self.s3.put_object_tagging, Bucket="vb", Key="k", Tagging=tag_set(longest))
        self.assertEqual(await self.tags_of("k"), longest)
        ten = {f"k{i}": "v" for i in range(10)}
        await self.call(self.s3.put_object_tagging, Bucket="vb", Key="k", Tagging=tag_set(ten))
        self.assertEqual(await self.tags_of("k"), ten)
        # Header form: duplicates and bad encodings, and nothing is written.
        for header in ("a=1&a=2", "a=%ff", "k*=v"):
            code, status, _ = await self.error_of(
                self.s3.put_object, Bucket="vb", Key="new", Body=b"x", Tagging=header
            )
            self.assertIn(code, ("InvalidArgument", "InvalidTag"), header)
            self.assertEqual(status, 400)
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key="new")
        self.assertEqual(status, 404)
        code, status, _ = await self.error_of(
            self.s3.get_object_tagging, Bucket="vb", Key="missing"
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        code, status, _ = await self.error_of(
            self.s3.put_object_tagging, Bucket="vb", Key="missing", Tagging=tag_set({"a": "b"})
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        code, status, _ = await self.error_of(
            self.s3.get_object_tagging, Bucket="nobucket", Key="k"
        )
        self.assertEqual((code, status), ("NoSuchBucket", 404))

    async def test_a_malformed_document_is_malformed_xml(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x", Tagging="keep=me")
        port = self.daemon.port_number

        def put(body: bytes) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("PUT", "/vb/k?tagging", body=body)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        for body in (
            b"<Tagging><TagSet><Tag><Key>a</Key></Tag></TagSet></Tagging>",
            b"<Tagging><TagSet><Tag><Key>a</Key><Value>b</Value>",
            b"<Other/>",
            b"<Tagging><TagSet><Tag><Key></Key><Value>b</Value></Tag></TagSet></Tagging>",
            b"<Tagging><TagSet><Tag><Key>a</Key><Value>b</Value><X/></Tag></TagSet></Tagging>",
        ):
            status, answer = await in_thread(put, body)
            self.assertEqual(status, 400, body)
            expected = b"InvalidTag" if b"<Key></Key>" in body else b"MalformedXML"
            self.assertIn(b"<Code>" + expected + b"</Code>", answer)
        status, answer = await in_thread(put, b" " * (tagging.MAX_TAGGING_BODY + 1))
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>MaxMessageLengthExceeded</Code>", answer)
        self.assertEqual(await self.tags_of("k"), {"keep": "me"})

    async def test_bucket_tagging(self) -> None:
        code, status, _ = await self.error_of(self.s3.get_bucket_tagging, Bucket="vb")
        self.assertEqual((code, status), ("NoSuchTagSet", 404))
        fifty = {f"k{i}": f"v{i}" for i in range(50)}
        put = await self.call(self.s3.put_bucket_tagging, Bucket="vb", Tagging=tag_set(fifty))
        self.assertEqual(put["ResponseMetadata"]["HTTPStatusCode"], 204)
        got = await self.call(self.s3.get_bucket_tagging, Bucket="vb")
        self.assertEqual({t["Key"]: t["Value"] for t in got["TagSet"]}, fifty)
        too_many = {f"k{i}": "v" for i in range(51)}
        code, status, _ = await self.error_of(
            self.s3.put_bucket_tagging, Bucket="vb", Tagging=tag_set(too_many)
        )
        self.assertEqual((code, status), ("InvalidTag", 400))
        code, status, _ = await self.error_of(
            self.s3.put_bucket_tagging, Bucket="vb", Tagging=tag_set({"aws:x": "v"})
        )
        self.assertEqual((code, status), ("InvalidTag", 400))
        got = await self.call(self.s3.get_bucket_tagging, Bucket="vb")
        self.assertEqual(len(got["TagSet"]), 50)
        await self.call(self.s3.delete_bucket_tagging, Bucket="vb")
        code, status, _ = await self.error_of(self.s3.get_bucket_tagging, Bucket="vb")
        self.assertEqual((code, status), ("NoSuchTagSet", 404))
        code, status, _ = await self.error_of(
            self.s3.put_bucket_tagging, Bucket="nobucket", Tagging=tag_set({"a": "b"})
        )
        self.assertEqual((code, status), ("NoSuchBucket", 404))
