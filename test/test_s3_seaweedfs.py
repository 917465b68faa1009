"""Placement over two real S3 buckets (SeaweedFS), end to end with boto3 on both sides."""

from __future__ import annotations

import hashlib
import secrets

from twisted.trial import unittest

from s3balance.config import BucketConfig
from test.support.daemon import DaemonTestCase, seaweed_buckets, without_write_ids
from test.support.seaweedfs import seaweed_or_skip


class SeaweedPlacementTests(DaemonTestCase, unittest.TestCase):
    timeout = 180

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        self.weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        self.real_names = [f"s3b-one-{suffix}", f"s3b-two-{suffix}"]
        configs = seaweed_buckets(self.weed, self.real_names)
        self.backend_names = [c.name for c in configs]
        return configs

    def _real_keys(self, bucket: str) -> list[str]:
        listed = self.weed.boto3_client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    async def test_objects_spread_over_two_real_buckets_and_come_back(self) -> None:
        payloads = {f"obj{i}": secrets.token_bytes(100_000 + i) for i in range(4)}
        for key, data in payloads.items():
            put = await self.call(
                self.s3.put_object,
                Bucket="vb",
                Key=key,
                Body=data,
                ContentType="x/y",
                Metadata={"n": key},
            )
            self.assertEqual(put["ETag"], f'"{hashlib.md5(data).hexdigest()}"')
        one = await self.call(self._real_keys, self.real_names[0])
        two = await self.call(self._real_keys, self.real_names[1])
        self.assertEqual(len(one), 2)
        self.assertEqual(len(two), 2)
        self.assertEqual(without_write_ids(one + two), [f"vb/{key}" for key in sorted(payloads)])
        for key, data in payloads.items():
            got = await self.call(self.s3.get_object, Bucket="vb", Key=key)
            self.assertEqual(got["Body"].read(), data)
            self.assertEqual(got["ContentType"], "x/y")
            self.assertEqual(got["Metadata"], {"n": key})
            self.assertNotIn("x-amz-version-id", got["ResponseMetadata"]["HTTPHeaders"])
            ranged = await self.call(
                self.s3.get_object, Bucket="vb", Key=key, Range="bytes=100-199"
            )
            self.assertEqual(ranged["Body"].read(), data[100:200])
        # A copy across the two real buckets streams from one into the other.
        copy = await self.call(self.s3.copy_object, Bucket="vb", Key="copied", CopySource="vb/obj0")
        self.assertEqual(
            copy["CopyObjectResult"]["ETag"], f'"{hashlib.md5(payloads["obj0"]).hexdigest()}"'
        )
        got = await self.call(self.s3.get_object, Bucket="vb", Key="copied")
        self.assertEqual(got["Body"].read(), payloads["obj0"])
        for key in [*payloads, "copied"]:
            await self.call(self.s3.delete_object, Bucket="vb", Key=key)
        self.assertEqual(await self.call(self._real_keys, self.real_names[0]), [])
        self.assertEqual(await self.call(self._real_keys, self.real_names[1]), [])

    async def test_a_key_the_backend_refuses_is_a_client_error_and_leaves_nothing(self) -> None:
        """SeaweedFS cannot store a key with a ``.`` segment: the client hears 400, not 500."""
        from botocore.exceptions import ClientError

        try:
            await self.call(self.s3.put_object, Bucket="vb", Key="c/./d", Body=b"dot")
        except ClientError as error:
            self.assertEqual(error.response["Error"]["Code"], "InvalidArgument")
            self.assertEqual(error.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        else:
            self.fail("SeaweedFS stored a key with a '.' segment: this test needs another key")
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual(listed.get("Contents", []), [])
        for name in self.real_names:
            self.assertEqual(await self.call(self._real_keys, name), [])

    async def test_large_downloads_move_in_the_kernel_and_arrive_intact(self) -> None:
        """``server.zero_copy`` (on by default): boto3 reads a 10 MiB object and a 6 MiB range
        of it from SeaweedFS through the daemon, byte for byte, and the kernel moved most of it
        (``s3_balance_zero_copy_bytes_total``)."""
        from s3balance.metrics import ZERO_COPY_BYTES

        data = secrets.token_bytes(10 << 20)
        await self.call(self.s3.put_object, Bucket="vb", Key="large", Body=data)
        before = ZERO_COPY_BYTES._value.get()
        got = await self.call(self.s3.get_object, Bucket="vb", Key="large")
        self.assertEqual(hashlib.md5(got["Body"].read()).digest(), hashlib.md5(data).digest())
        ranged = await self.call(
            self.s3.get_object, Bucket="vb", Key="large", Range=f"bytes={1 << 20}-{(7 << 20) - 1}"
        )
        self.assertEqual(ranged["Body"].read(), data[1 << 20 : 7 << 20])
        self.assertEqual(ranged["ContentRange"], f"bytes {1 << 20}-{(7 << 20) - 1}/{10 << 20}")
        moved = ZERO_COPY_BYTES._value.get() - before
        self.assertGreater(moved, (16 << 20) - (4 << 20))
        # The client's connection is still good for the next request.
        small = await self.call(self.s3.head_object, Bucket="vb", Key="large")
        self.assertEqual(small["ContentLength"], 10 << 20)
