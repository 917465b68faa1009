"""Bucket operations where S3's answer is not the obvious one: DeleteBucket of a bucket holding
only uploads in progress, and CreateBucket of a bucket one owns already."""

from __future__ import annotations

from twisted.trial import unittest

from s3balance.config import Config
from test.support.objectmeta import MotoDaemonCase


class DeleteBucketWithUploadsTests(MotoDaemonCase, unittest.TestCase):
    timeout = 120

    async def test_uploads_in_progress_are_aborted_and_the_bucket_deleted(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="cleanup")
        uploads = []
        for key in ("a", "b/c"):
            created = await self.call(
                self.s3.create_multipart_upload, Bucket="cleanup", Key=key
            )
            await self.call(
                self.s3.upload_part, Bucket="cleanup", Key=key, UploadId=created["UploadId"],
                PartNumber=1, Body=b"p" * 1000,
            )
            uploads.append(created["UploadId"])
        deleted = await self.call(self.s3.delete_bucket, Bucket="cleanup")
        self.assertEqual(deleted["ResponseMetadata"]["HTTPStatusCode"], 204)
        code, status, _ = await self.error_of(self.s3.head_bucket, Bucket="cleanup")
        self.assertEqual(status, 404)
        # Aborted on the backends too, and no usage is left behind.
        for name in self.backend_names:
            backend = self.daemon.backends[name]
            listed = await self.call(
                backend_client(backend).list_multipart_uploads, Bucket=backend_bucket(backend)
            )
            self.assertEqual(listed.get("Uploads", []), [], name)
        usage = await self.daemon.store.usage()
        self.assertEqual(sum(entry.used_bytes for entry in usage.values()), 0)

    async def test_a_bucket_with_an_object_stays(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="keep")
        await self.call(self.s3.put_object, Bucket="keep", Key="k", Body=b"x")
        created = await self.call(self.s3.create_multipart_upload, Bucket="keep", Key="u")
        code, status, _ = await self.error_of(self.s3.delete_bucket, Bucket="keep")
        self.assertEqual((code, status), ("BucketNotEmpty", 409))
        # The upload was not touched.
        parts = await self.call(
            self.s3.list_parts, Bucket="keep", Key="u", UploadId=created["UploadId"]
        )
        self.assertEqual(parts.get("Parts", []), [])


def backend_client(backend: object) -> object:
    from test.support.motoserver import shared_moto

    return shared_moto().boto3_client()


def backend_bucket(backend: object) -> str:
    return backend.address.bucket  # type: ignore[attr-defined, no-any-return]


class CreateOwnedBucketTests(MotoDaemonCase, unittest.TestCase):
    timeout = 60

    async def test_us_east_1_answers_200_and_keeps_the_bucket(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="mine")
        await self.call(self.s3.put_object, Bucket="mine", Key="k", Body=b"x")
        again = await self.call(self.s3.create_bucket, Bucket="mine")
        self.assertEqual(again["ResponseMetadata"]["HTTPStatusCode"], 200)
        got = await self.call(self.s3.get_object, Bucket="mine", Key="k")
        self.assertEqual(got["Body"].read(), b"x")


class CreateOwnedBucketOtherRegionTests(MotoDaemonCase, unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.region = "eu-west-1"

    async def test_other_regions_answer_409(self) -> None:
        configuration = {"LocationConstraint": "eu-west-1"}
        await self.call(
            self.s3.create_bucket, Bucket="mine", CreateBucketConfiguration=configuration
        )
        code, status, _ = await self.error_of(
            self.s3.create_bucket, Bucket="mine", CreateBucketConfiguration=configuration
        )
        self.assertEqual((code, status), ("BucketAlreadyOwnedByYou", 409))
