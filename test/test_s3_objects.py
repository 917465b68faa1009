"""Object operations end to end: boto3 over a real socket to an in-process daemon.

boto3 runs with its defaults (aws-chunked uploads with a CRC32 trailer since 1.36), so the
front's aws-chunked decoding is exercised by every upload here; ``PlainBodyTests`` repeats the
essentials with ``request_checksum_calculation="when_required"`` (plain bodies).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import zlib

from twisted.trial import unittest

from test.support.daemon import DaemonTestCase, without_write_ids


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


class ObjectTests(DaemonTestCase, unittest.TestCase):
    timeout = 120

    async def test_put_get_head_delete_with_metadata(self) -> None:
        put = await self.call(
            self.s3.put_object,
            Bucket="vb",
            Key="dir/hello.txt",
            Body=b"hello world",
            ContentType="text/plain",
            ContentDisposition="attachment",
            CacheControl="max-age=60",
            ContentLanguage="en",
            Metadata={"colour": "blue", "Mixed": "x"},
        )
        self.assertEqual(put["ETag"], '"5eb63bbbe01eeed093cb22bb8f5acdc3"')
        got = await self.call(self.s3.get_object, Bucket="vb", Key="dir/hello.txt")
        self.assertEqual(got["Body"].read(), b"hello world")
        self.assertEqual(got["ContentType"], "text/plain")
        self.assertEqual(got["ContentDisposition"], "attachment")
        self.assertEqual(got["CacheControl"], "max-age=60")
        self.assertEqual(got["ContentLanguage"], "en")
        self.assertEqual(got["Metadata"], {"colour": "blue", "mixed": "x"})
        self.assertEqual(got["ETag"], put["ETag"])
        self.assertEqual(got["ContentLength"], 11)
        self.assertEqual(got["AcceptRanges"], "bytes")
        headers = got["ResponseMetadata"]["HTTPHeaders"]
        self.assertIn("x-amz-request-id", headers)
        self.assertIn("x-amz-id-2", headers)
        self.assertNotIn("x-amz-version-id", headers)
        self.assertNotIn("content-encoding", headers)  # aws-chunked is never stored
        head = await self.call(self.s3.head_object, Bucket="vb", Key="dir/hello.txt")
        self.assertEqual(head["ContentLength"], 11)
        self.assertEqual(head["Metadata"], {"colour": "blue", "mixed": "x"})
        modified = head["LastModified"]
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(abs((now - modified).total_seconds()), 30)
        deleted = await self.call(self.s3.delete_object, Bucket="vb", Key="dir/hello.txt")
        self.assertEqual(deleted["ResponseMetadata"]["HTTPStatusCode"], 204)
        code, status, _ = await self.error_of(self.s3.get_object, Bucket="vb", Key="dir/hello.txt")
        self.assertEqual((code, status), ("NoSuchKey", 404))
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})

    async def test_default_content_type_is_binary_octet_stream(self) -> None:
        raw = self.daemon.client(request_checksum_calculation="when_required")
        await self.call(raw.put_object, Bucket="vb", Key="k", Body=b"x")
        head = await self.call(self.s3.head_object, Bucket="vb", Key="k")
        self.assertEqual(head["ContentType"], "binary/octet-stream")

    async def test_empty_object(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="empty", Body=b"")
        got = await self.call(self.s3.get_object, Bucket="vb", Key="empty")
        self.assertEqual(got["Body"].read(), b"")
        self.assertEqual(got["ETag"], '"d41d8cd98f00b204e9800998ecf8427e"')

    async def test_unicode_and_odd_keys(self) -> None:
        keys = ["café/ñ.txt", "a b+c", "q?x=1&y", "percent%20", "trailing/", "x" * 1024]
        for key in keys:
            await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=key.encode())
        for key in keys:
            got = await self.call(self.s3.get_object, Bucket="vb", Key=key)
            self.assertEqual(got["Body"].read(), key.encode())
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual(sorted(o["Key"] for o in listed["Contents"]), sorted(keys))

    async def test_errors_for_missing_things_and_long_keys(self) -> None:
        code, status, response = await self.error_of(self.s3.get_object, Bucket="vb", Key="no")
        self.assertEqual((code, status), ("NoSuchKey", 404))
        self.assertTrue(
            response["Error"].get("RequestId") or response["ResponseMetadata"].get("RequestId")
        )
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key="no")
        self.assertEqual(status, 404)
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="nobucket", Key="k", Body=b"x"
        )
        self.assertEqual((code, status), ("NoSuchBucket", 404))
        code, status, _ = await self.error_of(self.s3.get_object, Bucket="nobucket", Key="k")
        self.assertEqual((code, status), ("NoSuchBucket", 404))
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="x" * 1025, Body=b"x"
        )
        self.assertEqual((code, status), ("KeyTooLongError", 400))

    async def test_ranges(self) -> None:
        data = bytes(range(256)) * 4
        await self.call(self.s3.put_object, Bucket="vb", Key="r", Body=data)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="r", Range="bytes=10-19")
        self.assertEqual(got["Body"].read(), data[10:20])
        self.assertEqual(got["ContentRange"], f"bytes 10-19/{len(data)}")
        self.assertEqual(got["ResponseMetadata"]["HTTPStatusCode"], 206)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="r", Range="bytes=-5")
        self.assertEqual(got["Body"].read(), data[-5:])
        got = await self.call(self.s3.get_object, Bucket="vb", Key="r", Range="bytes=1000-")
        self.assertEqual(got["Body"].read(), data[1000:])
        whole = await self.call(self.s3.get_object, Bucket="vb", Key="r", Range="bytes=0-1,5-6")
        self.assertEqual(whole["ResponseMetadata"]["HTTPStatusCode"], 200)
        self.assertEqual(whole["Body"].read(), data)
        head = await self.call(self.s3.head_object, Bucket="vb", Key="r", Range="bytes=0-9")
        self.assertEqual(head["ContentLength"], 10)
        code, status, response = await self.error_of(
            self.s3.get_object, Bucket="vb", Key="r", Range="bytes=5000-"
        )
        self.assertEqual((code, status), ("InvalidRange", 416))
        self.assertEqual(response["Error"]["ActualObjectSize"], str(len(data)))

    async def test_conditional_gets(self) -> None:
        put = await self.call(self.s3.put_object, Bucket="vb", Key="c", Body=b"abc")
        etag = put["ETag"]
        got = await self.call(self.s3.get_object, Bucket="vb", Key="c", IfMatch=etag)
        self.assertEqual(got["Body"].read(), b"abc")
        code, status, _ = await self.error_of(
            self.s3.get_object, Bucket="vb", Key="c", IfMatch='"nope"'
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        code, status, _ = await self.error_of(
            self.s3.get_object, Bucket="vb", Key="c", IfNoneMatch=etag
        )
        self.assertEqual(status, 304)
        future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        code, status, _ = await self.error_of(
            self.s3.get_object, Bucket="vb", Key="c", IfModifiedSince=future
        )
        self.assertEqual(status, 304)
        code, status, _ = await self.error_of(
            self.s3.get_object, Bucket="vb", Key="c", IfUnmodifiedSince=past
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        # S3's precedence: a holding If-Match beats a failing If-Unmodified-Since.
        got = await self.call(
            self.s3.get_object, Bucket="vb", Key="c", IfMatch=etag, IfUnmodifiedSince=past
        )
        self.assertEqual(got["Body"].read(), b"abc")
        code, status, _ = await self.error_of(
            self.s3.head_object, Bucket="vb", Key="c", IfMatch='"nope"'
        )
        self.assertEqual(status, 412)

    async def test_response_header_overrides(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="o", Body=b"x", ContentType="a/b")
        got = await self.call(
            self.s3.get_object,
            Bucket="vb",
            Key="o",
            ResponseContentType="text/csv",
            ResponseContentDisposition="inline",
            ResponseCacheControl="no-cache",
        )
        self.assertEqual(got["ContentType"], "text/csv")
        self.assertEqual(got["ContentDisposition"], "inline")
        self.assertEqual(got["CacheControl"], "no-cache")

    async def test_checksums_are_checked_kept_and_returned_on_request(self) -> None:
        data = b"checksummed body"
        put = await self.call(
            self.s3.put_object, Bucket="vb", Key="sum", Body=data, ChecksumAlgorithm="SHA256"
        )
        expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self.assertEqual(put.get("ChecksumSHA256"), expected)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="sum", ChecksumMode="ENABLED")
        self.assertEqual(got["Body"].read(), data)
        self.assertEqual(got.get("ChecksumSHA256"), expected)
        # boto3 asks for checksums by default; a client that does not ask gets none.
        quiet = self.daemon.client(response_checksum_validation="when_required")
        plain = await self.call(quiet.get_object, Bucket="vb", Key="sum")
        self.assertNotIn("x-amz-checksum-sha256", plain["ResponseMetadata"]["HTTPHeaders"])

    async def test_default_crc32_trailer_is_verified_and_kept(self) -> None:
        data = b"default boto3 upload"
        await self.call(self.s3.put_object, Bucket="vb", Key="crc", Body=data)
        got = await self.call(self.s3.head_object, Bucket="vb", Key="crc", ChecksumMode="ENABLED")
        self.assertEqual(got["ContentLength"], len(data))
        self.assertEqual(got.get("ChecksumCRC32"), crc32_b64(data))

    async def test_bad_content_md5_leaves_nothing(self) -> None:
        raw = self.daemon.client(request_checksum_calculation="when_required")
        wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        code, status, _ = await self.error_of(
            raw.put_object, Bucket="vb", Key="bad", Body=b"payload", ContentMD5=wrong
        )
        self.assertEqual((code, status), ("BadDigest", 400))
        code, status, _ = await self.error_of(
            raw.put_object, Bucket="vb", Key="bad", Body=b"payload", ContentMD5="!!notb64"
        )
        self.assertEqual((code, status), ("InvalidDigest", 400))
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key="bad")
        self.assertEqual(status, 404)
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})

    async def test_copy_object(self) -> None:
        await self.call(
            self.s3.put_object,
            Bucket="vb",
            Key="src",
            Body=b"copy me" * 1000,
            ContentType="text/plain",
            Metadata={"m": "1"},
        )
        for index in range(2):  # round robin: one copy on each real bucket
            result = await self.call(
                self.s3.copy_object, Bucket="vb", Key=f"dst{index}", CopySource="vb/src"
            )
            self.assertEqual(
                result["CopyObjectResult"]["ETag"],
                f'"{hashlib.md5(b"copy me" * 1000).hexdigest()}"',
            )
            got = await self.call(self.s3.get_object, Bucket="vb", Key=f"dst{index}")
            self.assertEqual(got["Body"].read(), b"copy me" * 1000)
            self.assertEqual(got["ContentType"], "text/plain")
            self.assertEqual(got["Metadata"], {"m": "1"})
        keys = await self.backend_keys()
        self.assertEqual(
            without_write_ids(keys["r1"] + keys["r2"]), ["vb/dst0", "vb/dst1", "vb/src"]
        )
        await self.call(
            self.s3.copy_object,
            Bucket="vb",
            Key="replaced",
            CopySource={"Bucket": "vb", "Key": "src"},
            MetadataDirective="REPLACE",
            ContentType="a/b",
            Metadata={"n": "2"},
        )
        head = await self.call(self.s3.head_object, Bucket="vb", Key="replaced")
        self.assertEqual((head["ContentType"], head["Metadata"]), ("a/b", {"n": "2"}))

    async def test_copy_object_errors_and_conditions(self) -> None:
        put = await self.call(self.s3.put_object, Bucket="vb", Key="src", Body=b"x")
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="src", CopySource="vb/src"
        )
        self.assertEqual((code, status), ("InvalidRequest", 400))
        # Onto itself with REPLACE: allowed, a metadata update.
        await self.call(
            self.s3.copy_object,
            Bucket="vb",
            Key="src",
            CopySource="vb/src",
            MetadataDirective="REPLACE",
            Metadata={"new": "yes"},
        )
        head = await self.call(self.s3.head_object, Bucket="vb", Key="src")
        self.assertEqual(head["Metadata"], {"new": "yes"})
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="d", CopySource="vb/missing"
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        code, status, _ = await self.error_of(
            self.s3.copy_object,
            Bucket="vb",
            Key="d",
            CopySource="vb/src",
            CopySourceIfMatch='"nope"',
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        code, status, _ = await self.error_of(
            self.s3.copy_object,
            Bucket="vb",
            Key="d",
            CopySource="vb/src",
            CopySourceIfNoneMatch=put["ETag"],
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        code, status, _ = await self.error_of(
            self.s3.copy_object,
            Bucket="vb",
            Key="d",
            CopySource="vb/src",
            MetadataDirective="MERGE",
        )
        self.assertEqual((code, status), ("InvalidArgument", 400))
        await self.call(
            self.s3.copy_object,
            Bucket="vb",
            Key="d",
            CopySource="vb/src",
            CopySourceIfMatch=put["ETag"],
        )

    async def test_delete_objects(self) -> None:
        for index in range(5):
            await self.call(self.s3.put_object, Bucket="vb", Key=f"d{index}", Body=b"x")
        result = await self.call(
            self.s3.delete_objects,
            Bucket="vb",
            Delete={"Objects": [{"Key": f"d{i}"} for i in range(3)] + [{"Key": "absent"}]},
        )
        self.assertEqual(sorted(d["Key"] for d in result["Deleted"]), ["absent", "d0", "d1", "d2"])
        quiet = await self.call(
            self.s3.delete_objects,
            Bucket="vb",
            Delete={"Objects": [{"Key": "d3"}, {"Key": "x" * 1025}], "Quiet": True},
        )
        self.assertNotIn("Deleted", quiet)
        self.assertEqual([e["Code"] for e in quiet["Errors"]], ["KeyTooLongError"])
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["d4"])
        keys = await self.backend_keys()
        self.assertEqual(without_write_ids(keys["r1"] + keys["r2"]), ["vb/d4"])
        code, status, _ = await self.error_of(
            self.s3.delete_objects,
            Bucket="vb",
            Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)]},
        )
        self.assertEqual((code, status), ("MalformedXML", 400))

    async def test_object_acl(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="a", Body=b"x", ACL="private")
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="a")
        self.assertEqual(acl["Grants"][0]["Permission"], "FULL_CONTROL")
        self.assertEqual(acl["Grants"][0]["Grantee"]["ID"], acl["Owner"]["ID"])
        await self.call(self.s3.put_object_acl, Bucket="vb", Key="a", ACL="private")
        code, status, _ = await self.error_of(
            self.s3.put_object_acl, Bucket="vb", Key="a", ACL="public-read-write"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="b", Body=b"x", ACL="public-read-write"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(self.s3.get_object_acl, Bucket="vb", Key="none")
        self.assertEqual((code, status), ("NoSuchKey", 404))

    async def test_unserved_subresources_touch_no_data(self) -> None:
        """The Go project turned ``PUT ?tagging`` into an overwrite and ``DELETE ?cors`` into a
        wipe of the bucket's index: here they are 501 and change nothing."""
        await self.call(self.s3.put_object, Bucket="vb", Key="keep", Body=b"precious")
        code, status, _ = await self.error_of(
            self.s3.put_bucket_lifecycle_configuration,
            Bucket="vb",
            LifecycleConfiguration={
                "Rules": [{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""},
                           "Expiration": {"Days": 1}}]
            },
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(self.s3.delete_bucket_cors, Bucket="vb")
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(self.s3.delete_bucket_lifecycle, Bucket="vb")
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(self.s3.get_bucket_policy, Bucket="vb")
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(
            self.s3.put_bucket_versioning,
            Bucket="vb",
            VersioningConfiguration={"Status": "Enabled"},
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="t", Body=b"x", WebsiteRedirectLocation="/x"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        got = await self.call(self.s3.get_object, Bucket="vb", Key="keep")
        self.assertEqual(got["Body"].read(), b"precious")
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["keep"])

    async def test_overwrite_on_the_other_backend_leaves_one_copy(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"one")
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"two")
        keys = await self.backend_keys()
        self.assertEqual(without_write_ids(keys["r1"] + keys["r2"]), ["vb/k"])
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["Body"].read(), b"two")


class PlainBodyTests(DaemonTestCase, unittest.TestCase):
    """Uploads without aws-chunked framing (``request_checksum_calculation=when_required``)."""

    timeout = 60
    client_options = {"request_checksum_calculation": "when_required"}

    async def test_put_and_get(self) -> None:
        data = b"plain" * 10_000
        put = await self.call(self.s3.put_object, Bucket="vb", Key="p", Body=data)
        self.assertEqual(put["ETag"], f'"{hashlib.md5(data).hexdigest()}"')
        got = await self.call(self.s3.get_object, Bucket="vb", Key="p")
        self.assertEqual(got["Body"].read(), data)

    async def test_delete_objects_requires_a_digest(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="d", Body=b"x")
        result = await self.call(
            self.s3.delete_objects, Bucket="vb", Delete={"Objects": [{"Key": "d"}]}
        )
        self.assertEqual([d["Key"] for d in result["Deleted"]], ["d"])
