"""Every S3 checksum end to end: boto3 (and hand-built aws-chunked trailers) over a real socket to
a daemon whose real buckets are on SeaweedFS.

Covers each algorithm as a header and as a trailer on PutObject, S3's default CRC64NVME, wrong
and malformed values (nothing is stored), multipart uploads with COMPOSITE and FULL_OBJECT
checksums (per-part checks at Complete, the object's value computed as S3 does), GET/HEAD with
``ChecksumMode=ENABLED`` (boto3 validates the body against it), ListParts, GetObjectAttributes and
DeleteObjects with an SDK's checksum header instead of Content-MD5.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import secrets
from typing import Any

from awscrt import checksums as crt
from twisted.trial import unittest

from s3balance.config import BucketConfig
from test.support.daemon import DaemonTestCase, in_thread, seaweed_buckets
from test.support.seaweedfs import seaweed_or_skip

ALL = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]
MiB = 1 << 20



def digest(name: str, data: bytes) -> bytes:
    """Computed independently of s3balance's catalogue."""
    crcs = {"CRC32": (crt.crc32, 4), "CRC32C": (crt.crc32c, 4), "CRC64NVME": (crt.crc64nvme, 8)}
    if name in crcs:
        function, size = crcs[name]
        return int(function(data)).to_bytes(size, "big")
    return hashlib.new(name.lower(), data).digest()


def value(name: str, data: bytes) -> str:
    return base64.b64encode(digest(name, data)).decode()


def trailer_body(payload: bytes, chunk: int, trailer: str) -> bytes:
    pieces = [
        f"{len(payload[i : i + chunk]):x}\r\n".encode() + payload[i : i + chunk] + b"\r\n"
        for i in range(0, len(payload), chunk)
    ]
    return b"".join(pieces) + f"0\r\n{trailer}\r\n\r\n".encode()


def raw_request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


class ChecksumTests(DaemonTestCase, unittest.TestCase):
    timeout = 240

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        self.weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        configs = seaweed_buckets(self.weed, [f"s3b-ck1-{suffix}", f"s3b-ck2-{suffix}"])
        self.backend_names = [c.name for c in configs]
        return configs

    async def assert_absent(self, key: str) -> None:
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key=key)
        self.assertEqual(status, 404)
        for name in self.backend_names:
            self.assertEqual(await self.daemon.real_keys(name, f"vb/{key}"), [])

    # -- PutObject -------------------------------------------------------------------------

    async def test_every_algorithm_on_put_and_validated_on_get(self) -> None:
        data = os.urandom(200_000)
        for name in ALL:
            key = f"put-{name}"
            put = await self.call(
                self.s3.put_object, Bucket="vb", Key=key, Body=data, ChecksumAlgorithm=name
            )
            self.assertEqual(put[f"Checksum{name}"], value(name, data), name)
            self.assertEqual(put.get("ChecksumType"), "FULL_OBJECT")
            got = await self.call(
                self.s3.get_object, Bucket="vb", Key=key, ChecksumMode="ENABLED"
            )
            self.assertEqual(got["Body"].read(), data)
            self.assertEqual(got[f"Checksum{name}"], value(name, data))
            self.assertEqual(got["ChecksumType"], "FULL_OBJECT")
            head = await self.call(
                self.s3.head_object, Bucket="vb", Key=key, ChecksumMode="ENABLED"
            )
            self.assertEqual(head[f"Checksum{name}"], value(name, data))

    async def test_sdk_default_crc32_and_no_checksum(self) -> None:
        data = b"default upload" * 1000
        # boto3's default (when_supported): a CRC32.
        put = await self.call(self.s3.put_object, Bucket="vb", Key="default", Body=data)
        self.assertEqual(put["ChecksumCRC32"], value("CRC32", data))
        head = await self.call(
            self.s3.head_object, Bucket="vb", Key="default", ChecksumMode="ENABLED"
        )
        self.assertEqual(head["ChecksumCRC32"], value("CRC32", data))
        self.assertEqual(head["ChecksumType"], "FULL_OBJECT")
        # No checksum at all: none is made up.
        plain = self.daemon.client(request_checksum_calculation="when_required")
        put = await self.call(plain.put_object, Bucket="vb", Key="none", Body=data)
        self.assertNotIn("ChecksumType", put)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="none", ChecksumMode="ENABLED")
        self.assertEqual(got["Body"].read(), data)

    async def test_wrong_and_malformed_header_values_store_nothing(self) -> None:
        data = b"payload" * 100
        plain = self.daemon.client(request_checksum_calculation="when_required")
        for name in ALL:
            wrong = value(name, b"something else")
            code, status, _ = await self.error_of(
                plain.put_object, Bucket="vb", Key="bad", Body=data, **{f"Checksum{name}": wrong}
            )
            self.assertEqual((code, status), ("BadDigest", 400), name)
            code, status, _ = await self.error_of(
                plain.put_object, Bucket="vb", Key="bad", Body=data,
                **{f"Checksum{name}": "not*base64"},
            )
            self.assertEqual((code, status), ("InvalidRequest", 400), name)
        await self.assert_absent("bad")

    async def test_raw_header_rules(self) -> None:
        port = self.daemon.port_number
        data = b"raw body"
        base = {"content-length": str(len(data))}
        status, _, body = await in_thread(
            raw_request, port, "PUT", "/vb/two", {
                **base,
                "x-amz-checksum-crc32": value("CRC32", data),
                "x-amz-checksum-sha1": value("SHA1", data),
            }, data,
        )
        self.assertEqual(status, 400)
        self.assertIn(b"Multiple checksum Types", body)
        status, _, body = await in_thread(
            raw_request, port, "PUT", "/vb/two", {
                **base,
                "x-amz-checksum-crc32": value("CRC32", data),
                "x-amz-sdk-checksum-algorithm": "CRC32C",
            }, data,
        )
        self.assertEqual(status, 400)
        self.assertIn(b"x-amz-sdk-checksum-algorithm", body)
        status, headers, _ = await in_thread(
            raw_request, port, "PUT", "/vb/two", {
                **base,
                "x-amz-checksum-crc64nvme": value("CRC64NVME", data),
                "x-amz-sdk-checksum-algorithm": "crc64nvme",
            }, data,
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers["x-amz-checksum-crc64nvme"], value("CRC64NVME", data))

    async def test_every_algorithm_as_an_aws_chunked_trailer(self) -> None:
        port = self.daemon.port_number
        data = os.urandom(150_000)
        for name in ALL:
            header = f"x-amz-checksum-{name.lower()}"
            headers = {
                "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                "content-encoding": "aws-chunked",
                "x-amz-trailer": header,
                "x-amz-sdk-checksum-algorithm": name,
                "x-amz-decoded-content-length": str(len(data)),
            }
            good = trailer_body(data, 65536, f"{header}:{value(name, data)}")
            status, answer, body = await in_thread(
                raw_request, port, "PUT", f"/vb/trailer-{name}",
                {**headers, "content-length": str(len(good))}, good,
            )
            self.assertEqual(status, 200, body)
            self.assertEqual(answer[header], value(name, data))
            head = await self.call(
                self.s3.head_object, Bucket="vb", Key=f"trailer-{name}", ChecksumMode="ENABLED"
            )
            self.assertEqual(head[f"Checksum{name}"], value(name, data))
            bad = trailer_body(data, 65536, f"{header}:{value(name, b'other')}")
            status, _, body = await in_thread(
                raw_request, port, "PUT", "/vb/bad-trailer",
                {**headers, "content-length": str(len(bad))}, bad,
            )
            self.assertEqual(status, 400)
            self.assertIn(b"<Code>BadDigest</Code>", body)
        await self.assert_absent("bad-trailer")

    # -- multipart -------------------------------------------------------------------------

    async def _multipart(
        self, key: str, name: str, checksum_type: str | None, parts: list[bytes],
        complete_extra: dict[str, Any] | None = None, with_part_checksums: bool = True,
    ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        extra = {"ChecksumType": checksum_type} if checksum_type else {}
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key=key, ChecksumAlgorithm=name,
            **extra,
        )
        self.assertEqual(created["ChecksumAlgorithm"], name)
        upload_id = created["UploadId"]
        listed: list[dict[str, Any]] = []
        for number, data in enumerate(parts, 1):
            part = await self.call(
                self.s3.upload_part, Bucket="vb", Key=key, UploadId=upload_id,
                PartNumber=number, Body=data, ChecksumAlgorithm=name,
            )
            self.assertEqual(part[f"Checksum{name}"], value(name, data))
            entry = {"PartNumber": number, "ETag": part["ETag"]}
            if with_part_checksums:
                entry[f"Checksum{name}"] = part[f"Checksum{name}"]
            listed.append(entry)
        return upload_id, listed, created

    async def test_multipart_composite_and_full_object_for_every_algorithm(self) -> None:
        parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
        whole = b"".join(parts)
        cases = [
            ("CRC32", None, "COMPOSITE"), ("CRC32", "FULL_OBJECT", "FULL_OBJECT"),
            ("CRC32C", "COMPOSITE", "COMPOSITE"), ("CRC32C", "FULL_OBJECT", "FULL_OBJECT"),
            ("CRC64NVME", None, "FULL_OBJECT"), ("SHA1", None, "COMPOSITE"),
            ("SHA256", "COMPOSITE", "COMPOSITE"),
        ]
        for name, asked, expected_type in cases:
            key = f"mp-{name}-{expected_type}"
            upload_id, listed, created = await self._multipart(key, name, asked, parts)
            self.assertEqual(created["ChecksumType"], expected_type)
            if expected_type == "COMPOSITE":
                digests = b"".join(digest(name, p) for p in parts)
                expected = f"{value(name, digests)}-{len(parts)}"
            else:
                expected = value(name, whole)
            page = await self.call(
                self.s3.list_parts, Bucket="vb", Key=key, UploadId=upload_id
            )
            self.assertEqual(page["ChecksumAlgorithm"], name)
            self.assertEqual(
                [p[f"Checksum{name}"] for p in page["Parts"]], [value(name, p) for p in parts]
            )
            complete_extra: dict[str, Any] = {}
            if expected_type == "FULL_OBJECT":
                complete_extra = {f"Checksum{name}": expected, "ChecksumType": "FULL_OBJECT"}
            done = await self.call(
                self.s3.complete_multipart_upload, Bucket="vb", Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": listed}, **complete_extra,
            )
            self.assertEqual(done[f"Checksum{name}"], expected, key)
            self.assertEqual(done["ChecksumType"], expected_type)
            got = await self.call(
                self.s3.get_object, Bucket="vb", Key=key, ChecksumMode="ENABLED"
            )
            self.assertEqual(got["Body"].read(), whole)
            self.assertEqual(got[f"Checksum{name}"], expected)
            self.assertEqual(got["ChecksumType"], expected_type)
            attributes = await self.call(
                self.s3.get_object_attributes, Bucket="vb", Key=key,
                ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass",
                                  "ObjectSize"],
                MaxParts=2,
            )
            self.assertEqual(attributes["ObjectSize"], len(whole))
            self.assertEqual(attributes["StorageClass"], "STANDARD")
            self.assertEqual(f'"{attributes["ETag"]}"', done["ETag"])
            # As on S3: a COMPOSITE value without its "-N", part checksums for COMPOSITE only.
            self.assertEqual(
                attributes["Checksum"][f"Checksum{name}"], expected.partition("-")[0]
            )
            self.assertEqual(attributes["Checksum"]["ChecksumType"], expected_type)
            object_parts = attributes["ObjectParts"]
            self.assertEqual(object_parts["TotalPartsCount"], 3)
            self.assertTrue(object_parts["IsTruncated"])
            self.assertEqual(
                [(p["PartNumber"], p["Size"], p.get(f"Checksum{name}"))
                 for p in object_parts["Parts"]],
                [(1, 5 * MiB, value(name, parts[0])), (2, 5 * MiB, value(name, parts[1]))]
                if expected_type == "COMPOSITE" else [(1, 5 * MiB, None), (2, 5 * MiB, None)],
            )
            # A part read: a COMPOSITE object's part has its own checksum (boto3 checks it).
            part_read = await self.call(
                self.s3.get_object, Bucket="vb", Key=key, PartNumber=3, ChecksumMode="ENABLED"
            )
            self.assertEqual(part_read["Body"].read(), parts[2])
            self.assertEqual(
                part_read.get(f"Checksum{name}"),
                value(name, parts[2]) if expected_type == "COMPOSITE" else None,
            )
            rest = await self.call(
                self.s3.get_object_attributes, Bucket="vb", Key=key,
                ObjectAttributes=["ObjectParts"], PartNumberMarker=2,
            )
            self.assertEqual([p["PartNumber"] for p in rest["ObjectParts"]["Parts"]], [3])
            self.assertFalse(rest["ObjectParts"]["IsTruncated"])

    async def test_upload_part_with_a_trailer(self) -> None:
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key="mp-trailer",
            ChecksumAlgorithm="CRC64NVME",
        )
        upload_id = created["UploadId"]
        data = os.urandom(300_000)
        header = "x-amz-checksum-crc64nvme"
        headers = {
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "content-encoding": "aws-chunked",
            "x-amz-trailer": header,
            "x-amz-decoded-content-length": str(len(data)),
        }
        body = trailer_body(data, 65536, f"{header}:{value('CRC64NVME', data)}")
        status, answer, reply = await in_thread(
            raw_request, self.daemon.port_number, "PUT",
            f"/vb/mp-trailer?partNumber=1&uploadId={upload_id}",
            {**headers, "content-length": str(len(body))}, body,
        )
        self.assertEqual(status, 200, reply)
        self.assertEqual(answer[header], value("CRC64NVME", data))
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-trailer", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": answer["etag"]}]},
            ChecksumCRC64NVME=value("CRC64NVME", data), ChecksumType="FULL_OBJECT",
        )
        self.assertEqual(done["ChecksumCRC64NVME"], value("CRC64NVME", data))

    async def test_multipart_checksum_errors_create_nothing(self) -> None:
        for name, checksum_type in [("SHA256", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE")]:
            code, status, response = await self.error_of(
                self.s3.create_multipart_upload, Bucket="vb", Key="x",
                ChecksumAlgorithm=name, ChecksumType=checksum_type,
            )
            self.assertEqual((code, status), ("InvalidRequest", 400))
            self.assertIn("cannot be used with", response["Error"]["Message"])
        parts = [os.urandom(5 * MiB), b"tail"]
        upload_id, listed, _ = await self._multipart("mp-bad", "CRC32", None, parts)
        # A part of another algorithm than the upload's.
        code, status, _ = await self.error_of(
            self.s3.upload_part, Bucket="vb", Key="mp-bad", UploadId=upload_id, PartNumber=3,
            Body=b"x", ChecksumAlgorithm="SHA256",
        )
        self.assertEqual((code, status), ("InvalidRequest", 400))
        # A wrong part checksum in the document.
        wrong = [dict(listed[0]), dict(listed[1])]
        wrong[1]["ChecksumCRC32"] = value("CRC32", b"not the part")
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-bad", UploadId=upload_id,
            MultipartUpload={"Parts": wrong},
        )
        self.assertEqual((code, status), ("InvalidPart", 400))
        # COMPOSITE needs every part's checksum in the document.
        bare = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-bad", UploadId=upload_id,
            MultipartUpload={"Parts": bare},
        )
        self.assertEqual((code, status), ("InvalidRequest", 400))
        # A malformed, then a wrong, object checksum header; then another mode.
        for extra, expected in [
            ({"ChecksumCRC32": "!!!"}, "InvalidRequest"),
            ({"ChecksumCRC32": value("CRC32", b"no") + "-2"}, "BadDigest"),
            ({"ChecksumType": "FULL_OBJECT"}, "InvalidRequest"),
        ]:
            code, status, _ = await self.error_of(
                self.s3.complete_multipart_upload, Bucket="vb", Key="mp-bad",
                UploadId=upload_id, MultipartUpload={"Parts": listed}, **extra,
            )
            self.assertEqual((code, status), (expected, 400), extra)
        await self.assert_absent("mp-bad")
        # The upload is intact: completing it properly works.
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-bad", UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )
        self.assertTrue(done["ChecksumCRC32"].endswith("-2"))

    async def test_multipart_without_algorithm_checks_what_parts_carried(self) -> None:
        parts = [os.urandom(5 * MiB), os.urandom(100)]
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="mp-none")
        self.assertNotIn("ChecksumAlgorithm", created)
        listed = []
        for number, data in enumerate(parts, 1):
            # boto3's default sends a CRC32 with each part: checked, kept and echoed.
            part = await self.call(
                self.s3.upload_part, Bucket="vb", Key="mp-none", UploadId=created["UploadId"],
                PartNumber=number, Body=data,
            )
            self.assertEqual(part["ChecksumCRC32"], value("CRC32", data))
            listed.append(
                {"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]}
            )
        wrong = [dict(listed[0]), {**listed[1], "ChecksumCRC32": value("CRC32", b"x")}]
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-none",
            UploadId=created["UploadId"], MultipartUpload={"Parts": wrong},
        )
        self.assertEqual((code, status), ("InvalidPart", 400))
        # An object checksum we could not compute is refused, not ignored.
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-none",
            UploadId=created["UploadId"], MultipartUpload={"Parts": listed},
            ChecksumCRC64NVME=value("CRC64NVME", b"".join(parts)),
        )
        self.assertEqual((code, status), ("InvalidRequest", 400))
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-none",
            UploadId=created["UploadId"], MultipartUpload={"Parts": listed},
        )
        self.assertNotIn("ChecksumType", done)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="mp-none")
        self.assertEqual(got["Body"].read(), b"".join(parts))

    async def test_copied_part_in_a_composite_upload(self) -> None:
        """A copied part has no checksum to repeat: Complete does not require one, and the
        object gets no checksum rather than a wrong one."""
        source = os.urandom(5 * MiB)
        await self.call(self.s3.put_object, Bucket="vb", Key="copy-src", Body=source)
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key="mp-copy", ChecksumAlgorithm="CRC32"
        )
        upload_id = created["UploadId"]
        copied = await self.call(
            self.s3.upload_part_copy, Bucket="vb", Key="mp-copy", UploadId=upload_id,
            PartNumber=1, CopySource={"Bucket": "vb", "Key": "copy-src"},
        )
        sent = await self.call(
            self.s3.upload_part, Bucket="vb", Key="mp-copy", UploadId=upload_id, PartNumber=2,
            Body=b"tail", ChecksumAlgorithm="CRC32",
        )
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp-copy", UploadId=upload_id,
            MultipartUpload={"Parts": [
                {"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": sent["ETag"], "ChecksumCRC32": sent["ChecksumCRC32"]},
            ]},
        )
        self.assertNotIn("ChecksumCRC32", done)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="mp-copy")
        self.assertEqual(got["Body"].read(), source + b"tail")

    async def test_copy_object_checksum_algorithm(self) -> None:
        data = b"copy source" * 100
        await self.call(
            self.s3.put_object, Bucket="vb", Key="c-src", Body=data, ChecksumAlgorithm="SHA256"
        )
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="c-same", CopySource="vb/c-src",
            ChecksumAlgorithm="SHA256",
        )
        head = await self.call(
            self.s3.head_object, Bucket="vb", Key="c-same", ChecksumMode="ENABLED"
        )
        self.assertEqual(head["ChecksumSHA256"], value("SHA256", data))
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="c-other", CopySource="vb/c-src",
            ChecksumAlgorithm="CRC64NVME",
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        await self.assert_absent("c-other")

    # -- GetObjectAttributes, DeleteObjects ---------------------------------------------------

    async def test_get_object_attributes_of_a_single_part_object(self) -> None:
        data = b"attributes" * 10
        put = await self.call(
            self.s3.put_object, Bucket="vb", Key="attr", Body=data, ChecksumAlgorithm="SHA256"
        )
        got = await self.call(
            self.s3.get_object_attributes, Bucket="vb", Key="attr",
            ObjectAttributes=["ETag", "Checksum", "ObjectParts", "ObjectSize"],
        )
        self.assertEqual(f'"{got["ETag"]}"', put["ETag"])
        self.assertEqual(got["Checksum"]["ChecksumSHA256"], value("SHA256", data))
        self.assertEqual(got["ObjectSize"], len(data))
        self.assertNotIn("ObjectParts", got)
        self.assertNotIn("StorageClass", got)
        code, status, _ = await self.error_of(
            self.s3.get_object_attributes, Bucket="vb", Key="missing", ObjectAttributes=["ETag"]
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        status, _, body = await in_thread(
            raw_request, self.daemon.port_number, "GET", "/vb/attr?attributes",
            {"x-amz-object-attributes": "ETag,Colour"}, b"",
        )
        self.assertEqual(status, 400)
        self.assertIn(b"InvalidArgument", body)

    async def test_delete_objects_with_sdk_checksums(self) -> None:
        for index in range(3):
            await self.call(self.s3.put_object, Bucket="vb", Key=f"del{index}", Body=b"x")
        # Current botocore sends a CRC32 (not Content-MD5) with DeleteObjects.
        deleted = await self.call(
            self.s3.delete_objects, Bucket="vb",
            Delete={"Objects": [{"Key": "del0"}, {"Key": "del1"}]},
        )
        self.assertEqual(sorted(d["Key"] for d in deleted["Deleted"]), ["del0", "del1"])
        body = (
            b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Object><Key>del2</Key></Object></Delete>"
        )
        port = self.daemon.port_number
        for name in ("CRC64NVME", "CRC32C"):
            status, _, answer = await in_thread(
                raw_request, port, "POST", "/vb?delete",
                {f"x-amz-checksum-{name.lower()}": value(name, b"other")}, body,
            )
            self.assertEqual(status, 400)
            self.assertIn(b"BadDigest", answer)
        await self.call(self.s3.head_object, Bucket="vb", Key="del2")
        status, _, answer = await in_thread(
            raw_request, port, "POST", "/vb?delete",
            {"x-amz-checksum-crc64nvme": value("CRC64NVME", body)}, body,
        )
        self.assertEqual(status, 200, answer)
        self.assertIn(b"<Key>del2</Key>", answer)
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key="del2")
        self.assertEqual(status, 404)


def test_value_helper_matches_base64() -> None:
    assert value("SHA1", b"") == base64.b64encode(bytes.fromhex(
        "da39a3ee5e6b4b0d3255bfef95601890afd80709")).decode()
