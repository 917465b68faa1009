"""Server-side encryption headers through a real daemon, with boto3.

SSE-S3 (``AES256``) reaches the backend and is reported back as S3 reports it; a backend that
cannot or will not encrypt is never left holding the object; SSE-KMS and SSE-C are refused."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from s3balance.config import BucketConfig
from test.support.daemon import (
    DaemonTestCase,
    local_buckets,
    seaweed_buckets,
    without_write_ids,
)
from test.support.motoserver import shared_moto
from test.support.objectmeta import MotoDaemonCase, moto_buckets
from test.support.seaweedfs import seaweed_or_skip

SSE = "x-amz-server-side-encryption"


def _headers(response: dict[str, Any]) -> dict[str, str]:
    return response["ResponseMetadata"]["HTTPHeaders"]  # type: ignore[no-any-return]


class RefusedEncryption(DaemonTestCase):
    """SSE-KMS, DSSE and SSE-C are refused whatever the backends, and write nothing."""

    async def test_kms_and_customer_keys_are_refused(self) -> None:
        attempts: list[dict[str, Any]] = [
            {"ServerSideEncryption": "aws:kms"},
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key"},
            {"ServerSideEncryption": "aws:kms:dsse"},
            {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32},
        ]
        for extra in attempts:
            code, status, response = await self.error_of(
                self.s3.put_object, Bucket="vb", Key="k", Body=b"x", **extra
            )
            assert (code, status) == ("NotImplemented", 501), extra
            assert "encryption" in response["Error"]["Message"]
            code, status, _ = await self.error_of(
                self.s3.create_multipart_upload, Bucket="vb", Key="k", **extra
            )
            assert (code, status) == ("NotImplemented", 501), extra
        code, status, _ = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x", ServerSideEncryption="DES"
        )
        assert (code, status) == ("InvalidArgument", 400)
        code, status, _ = await self.error_of(
            self.s3.put_bucket_encryption,
            Bucket="vb",
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        assert (code, status) == ("NotImplemented", 501)
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        assert listed.get("Contents", []) == []
        uploads = await self.daemon.store.list_uploads("vb")
        assert uploads.uploads == []


class MotoEncryptionTests(MotoDaemonCase, RefusedEncryption, unittest.TestCase):
    """moto encrypts with SSE-S3 and says so, as S3 does."""

    timeout = 120

    async def real_head(self, key: str) -> dict[str, Any]:
        record = await self.daemon.store.get_object("vb", key)
        assert record is not None
        location = record.locations[0]
        backend = self.daemon.backends[location.backend]
        moto = shared_moto().boto3_client()
        bucket = backend.address.bucket  # type: ignore[attr-defined]
        return await self.call(moto.head_object, Bucket=bucket, Key=location.real_key)  # type: ignore[no-any-return]

    async def test_put_get_head_copy_report_and_store_sse_s3(self) -> None:
        put = await self.call(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"secret", ServerSideEncryption="AES256"
        )
        self.assertEqual(put["ServerSideEncryption"], "AES256")
        self.assertEqual((await self.real_head("k"))["ServerSideEncryption"], "AES256")
        head = await self.call(self.s3.head_object, Bucket="vb", Key="k")
        self.assertEqual(head["ServerSideEncryption"], "AES256")
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["ServerSideEncryption"], "AES256")
        self.assertEqual(got["Body"].read(), b"secret")
        # A copy is encrypted as its request says, not as its source was.
        plain = await self.call(self.s3.copy_object, Bucket="vb", Key="plain", CopySource="vb/k")
        self.assertNotIn("ServerSideEncryption", plain)
        self.assertNotIn("ServerSideEncryption", await self.real_head("plain"))
        head = await self.call(self.s3.head_object, Bucket="vb", Key="plain")
        self.assertNotIn(SSE, _headers(head))
        copied = await self.call(
            self.s3.copy_object, Bucket="vb", Key="enc", CopySource="vb/plain",
            ServerSideEncryption="AES256",
        )
        self.assertEqual(copied["ServerSideEncryption"], "AES256")
        self.assertEqual((await self.real_head("enc"))["ServerSideEncryption"], "AES256")
        # Encrypting an object in place is a copy onto itself that S3 allows.
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="plain", CopySource="vb/plain",
            ServerSideEncryption="AES256",
        )
        head = await self.call(self.s3.head_object, Bucket="vb", Key="plain")
        self.assertEqual(head["ServerSideEncryption"], "AES256")
        # A copy source with customer keys is refused.
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="x", CopySource="vb/k",
            CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey="k" * 32,
        )
        self.assertEqual((code, status), ("NotImplemented", 501))

    async def test_multipart_sse_s3(self) -> None:
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key="mp", ServerSideEncryption="AES256"
        )
        self.assertEqual(created["ServerSideEncryption"], "AES256")
        part = await self.call(
            self.s3.upload_part, Bucket="vb", Key="mp", UploadId=created["UploadId"],
            PartNumber=1, Body=b"p" * 100,
        )
        self.assertEqual(part["ServerSideEncryption"], "AES256")
        done = await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp",
            UploadId=created["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        self.assertEqual(done["ServerSideEncryption"], "AES256")
        head = await self.call(self.s3.head_object, Bucket="vb", Key="mp")
        self.assertEqual(head["ServerSideEncryption"], "AES256")
        self.assertEqual((await self.real_head("mp"))["ServerSideEncryption"], "AES256")


class LocalEncryptionTests(RefusedEncryption, unittest.TestCase):
    """Local directories do not encrypt: an SSE-S3 write is refused, never stored as if."""

    timeout = 60

    async def test_sse_s3_is_refused_and_nothing_is_stored(self) -> None:
        code, status, response = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x", ServerSideEncryption="AES256"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        self.assertIn("encrypt", response["Error"]["Message"])
        code, status, _ = await self.error_of(
            self.s3.create_multipart_upload, Bucket="vb", Key="k", ServerSideEncryption="AES256"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        await self.call(self.s3.put_object, Bucket="vb", Key="src", Body=b"x")
        code, status, _ = await self.error_of(
            self.s3.copy_object, Bucket="vb", Key="k", CopySource="vb/src",
            ServerSideEncryption="AES256",
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        keys = await self.backend_keys()
        self.assertEqual(without_write_ids(keys["r1"] + keys["r2"]), ["vb/src"])

    async def test_the_local_adapter_itself_refuses_before_reading(self) -> None:
        from s3balance.backends.interface import BackendCannotEncrypt
        from test.support.bodies import BytesBody

        backend = self.daemon.backends["r1"]
        body = BytesBody(b"never read")
        with self.assertRaises(BackendCannotEncrypt):
            await backend.put_object("vb/x", body, 10, {SSE: "AES256"}, {})
        with self.assertRaises(BackendCannotEncrypt):
            await backend.create_multipart_upload("vb/x", {SSE: "AES256"}, {})
        with self.assertRaises(BackendCannotEncrypt):
            await backend.copy_object("vb/src", "vb/x", {SSE: "AES256"}, {})
        self.assertEqual(await self.daemon.real_keys("r1"), [])


class MixedEncryptionTests(DaemonTestCase, unittest.TestCase):
    """A local directory and a moto bucket: encrypted writes always land on moto."""

    timeout = 60
    backend_names = ["local", "s3"]

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        return local_buckets(workdir, ["local"]) + moto_buckets(["s3"])

    async def test_encrypted_writes_go_where_encryption_is(self) -> None:
        for index in range(4):
            await self.call(
                self.s3.put_object, Bucket="vb", Key=f"k{index}", Body=b"x",
                ServerSideEncryption="AES256",
            )
        record_backends = set()
        for index in range(4):
            record = await self.daemon.store.get_object("vb", f"k{index}")
            assert record is not None
            record_backends.add(record.locations[0].backend)
        self.assertEqual(record_backends, {"s3"})
        self.assertEqual(await self.daemon.real_keys("local"), [])



class SeaweedRefusesEncryptionTests(DaemonTestCase, unittest.TestCase):
    """SeaweedFS without a key-encryption key configured answers an SSE-S3 write with an error:
    the client hears 501, nothing is left on the backend, and the backend stays healthy."""

    timeout = 120
    backend_names = ["w1", "w2"]

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        self.weed = seaweed_or_skip()
        import secrets

        suffix = secrets.token_hex(4)
        configs = seaweed_buckets(self.weed, [f"s3b-sse1-{suffix}", f"s3b-sse2-{suffix}"])
        for config, name in zip(configs, self.backend_names, strict=True):
            config.bucket = config.name
            config.name = name
        return configs

    async def test_refusal_is_501_and_leaves_nothing(self) -> None:
        code, status, response = await self.error_of(
            self.s3.put_object, Bucket="vb", Key="k", Body=b"x" * 1000,
            ServerSideEncryption="AES256",
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        self.assertIn("encryption", response["Error"]["Message"])
        code, status, _ = await self.error_of(
            self.s3.create_multipart_upload, Bucket="vb", Key="m", ServerSideEncryption="AES256"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        self.assertEqual(await self.backend_keys(), {"w1": [], "w2": []})
        for name in self.backend_names:
            self.assertTrue(self.daemon.health.is_healthy(name), name)
        # Plain writes still work.
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x")
