"""Service- and bucket-level operations and listings, end to end with boto3."""

from __future__ import annotations

import urllib.error
import urllib.request

from twisted.trial import unittest

from s3balance.config import Config
from test.support.daemon import DaemonTestCase, without_write_ids


class BucketTests(DaemonTestCase, unittest.TestCase):
    timeout = 120

    async def test_list_buckets_shows_only_virtual_buckets(self) -> None:
        result = await self.call(self.s3.list_buckets)
        self.assertEqual([b["Name"] for b in result["Buckets"]], ["vb"])
        self.assertTrue(result["Owner"]["ID"])
        # Real buckets are not reachable either.
        code, status, _ = await self.error_of(self.s3.head_bucket, Bucket="r1")
        self.assertEqual(status, 404)
        code, status, _ = await self.error_of(self.s3.list_objects_v2, Bucket="r1")
        self.assertEqual((code, status), ("NoSuchBucket", 404))

    async def test_list_buckets_honours_its_parameters(self) -> None:
        """The routing table accepted ``max-buckets``, ``prefix``... while they were ignored."""
        for name in ("photos-a", "photos-b", "photos-c", "zzz"):
            await self.call(self.s3.create_bucket, Bucket=name)
        names = lambda result: [b["Name"] for b in result["Buckets"]]  # noqa: E731
        result = await self.call(self.s3.list_buckets, Prefix="photos-")
        self.assertEqual(names(result), ["photos-a", "photos-b", "photos-c"])
        self.assertEqual(result["Prefix"], "photos-")
        first = await self.call(self.s3.list_buckets, Prefix="photos-", MaxBuckets=2)
        self.assertEqual(names(first), ["photos-a", "photos-b"])
        rest = await self.call(
            self.s3.list_buckets, Prefix="photos-", MaxBuckets=2,
            ContinuationToken=first["ContinuationToken"],
        )  # fmt: skip
        self.assertEqual(names(rest), ["photos-c"])
        self.assertNotIn("ContinuationToken", rest)
        paged = [
            name
            for page in await self.call(
                lambda: list(self.s3.get_paginator("list_buckets").paginate(
                    PaginationConfig={"PageSize": 1}
                ))
            )
            for name in names(page)
        ]  # fmt: skip
        self.assertEqual(paged, ["photos-a", "photos-b", "photos-c", "vb", "zzz"])
        here = await self.call(self.s3.list_buckets, BucketRegion="us-east-1")
        self.assertEqual(len(names(here)), 5)
        elsewhere = await self.call(self.s3.list_buckets, BucketRegion="eu-west-3")
        self.assertEqual(names(elsewhere), [])
        code, status, _ = await self.error_of(self.s3.list_buckets, MaxBuckets=10001)
        self.assertEqual((code, status), ("InvalidArgument", 400))

    async def test_create_head_locate_and_delete(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="new-bucket")
        head = await self.call(self.s3.head_bucket, Bucket="new-bucket")
        self.assertEqual(head["ResponseMetadata"]["HTTPStatusCode"], 200)
        location = await self.call(self.s3.get_bucket_location, Bucket="new-bucket")
        self.assertIsNone(location["LocationConstraint"])
        versioning = await self.call(self.s3.get_bucket_versioning, Bucket="new-bucket")
        self.assertNotIn("Status", versioning)
        acl = await self.call(self.s3.get_bucket_acl, Bucket="new-bucket")
        self.assertEqual(acl["Grants"][0]["Permission"], "FULL_CONTROL")
        await self.call(self.s3.put_bucket_acl, Bucket="new-bucket", ACL="private")
        code, status, _ = await self.error_of(
            self.s3.put_bucket_acl, Bucket="new-bucket", ACL="public-read-write"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        # us-east-1: S3 answers 200 to creating a bucket one owns already.
        again = await self.call(self.s3.create_bucket, Bucket="new-bucket")
        self.assertEqual(again["ResponseMetadata"]["HTTPStatusCode"], 200)
        await self.call(self.s3.put_object, Bucket="new-bucket", Key="k", Body=b"x")
        code, status, _ = await self.error_of(self.s3.delete_bucket, Bucket="new-bucket")
        self.assertEqual((code, status), ("BucketNotEmpty", 409))
        await self.call(self.s3.delete_object, Bucket="new-bucket", Key="k")
        deleted = await self.call(self.s3.delete_bucket, Bucket="new-bucket")
        self.assertEqual(deleted["ResponseMetadata"]["HTTPStatusCode"], 204)
        code, status, _ = await self.error_of(self.s3.head_bucket, Bucket="new-bucket")
        self.assertEqual(status, 404)
        code, status, _ = await self.error_of(self.s3.delete_bucket, Bucket="new-bucket")
        self.assertEqual((code, status), ("NoSuchBucket", 404))

    async def test_invalid_and_reserved_bucket_names(self) -> None:
        # "api" is reserved; this daemon has no admin API, so the name reaches the S3 rules.
        for name in ("ab", "Upper", "under_score", "192.168.1.1", "a..b", "-lead", "api"):
            code, status, _ = await self.error_of(self.s3.create_bucket, Bucket=name)
            self.assertEqual((code, status), ("InvalidBucketName", 400), name)
        # /metrics is served by the metrics resource: refused there, and no bucket is made.
        _, status, _ = await self.error_of(self.s3.create_bucket, Bucket="metrics")
        self.assertGreaterEqual(status, 400)
        listed = await self.call(self.s3.list_buckets)
        self.assertNotIn("metrics", [bucket["Name"] for bucket in listed["Buckets"]])

    async def test_listing_v2_pages_prefixes_and_delimiters(self) -> None:
        keys = ["a/1", "a/2", "a/b/3", "b/1", "c", "d+e f"]
        for key in keys:
            await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=b"x")
        page = await self.call(self.s3.list_objects_v2, Bucket="vb", Delimiter="/")
        self.assertEqual([o["Key"] for o in page["Contents"]], ["c", "d+e f"])
        self.assertEqual([p["Prefix"] for p in page["CommonPrefixes"]], ["a/", "b/"])
        self.assertEqual(page["KeyCount"], 4)
        self.assertEqual(page["Contents"][0]["StorageClass"], "STANDARD")
        self.assertNotIn("Owner", page["Contents"][0])
        owned = await self.call(self.s3.list_objects_v2, Bucket="vb", FetchOwner=True)
        self.assertIn("Owner", owned["Contents"][0])
        sub = await self.call(self.s3.list_objects_v2, Bucket="vb", Prefix="a/", Delimiter="/")
        self.assertEqual([o["Key"] for o in sub["Contents"]], ["a/1", "a/2"])
        self.assertEqual([p["Prefix"] for p in sub["CommonPrefixes"]], ["a/b/"])
        seen: list[str] = []
        token = None
        for _ in range(10):
            kwargs = {"Bucket": "vb", "MaxKeys": 2}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self.call(self.s3.list_objects_v2, **kwargs)
            seen.extend(o["Key"] for o in page.get("Contents", []))
            if not page["IsTruncated"]:
                break
            token = page["NextContinuationToken"]
        self.assertEqual(seen, sorted(keys))
        after = await self.call(self.s3.list_objects_v2, Bucket="vb", StartAfter="b/1")
        self.assertEqual([o["Key"] for o in after["Contents"]], ["c", "d+e f"])
        empty = await self.call(self.s3.list_objects_v2, Bucket="vb", MaxKeys=0)
        self.assertEqual(empty["KeyCount"], 0)
        self.assertFalse(empty["IsTruncated"])
        capped = await self.call(self.s3.list_objects_v2, Bucket="vb", MaxKeys=5000)
        self.assertEqual(capped["MaxKeys"], 1000)
        code, status, _ = await self.error_of(
            self.s3.list_objects_v2, Bucket="vb", ContinuationToken="!!!"
        )
        self.assertEqual((code, status), ("InvalidArgument", 400))

    async def test_listing_v1_markers(self) -> None:
        for key in ["a/1", "a/2", "b", "c"]:
            await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=b"x")
        page = await self.call(self.s3.list_objects, Bucket="vb", MaxKeys=2)
        self.assertEqual([o["Key"] for o in page["Contents"]], ["a/1", "a/2"])
        self.assertTrue(page["IsTruncated"])
        self.assertNotIn("NextMarker", page)  # only with a delimiter, as S3
        self.assertIn("Owner", page["Contents"][0])
        rest = await self.call(self.s3.list_objects, Bucket="vb", Marker="a/2")
        self.assertEqual([o["Key"] for o in rest["Contents"]], ["b", "c"])
        rolled = await self.call(self.s3.list_objects, Bucket="vb", Delimiter="/", MaxKeys=2)
        self.assertEqual([p["Prefix"] for p in rolled["CommonPrefixes"]], ["a/"])
        self.assertEqual(rolled["NextMarker"], "b")

    def _get(self, target: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.daemon.endpoint + target, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    async def test_url_encoding_and_bad_max_keys_on_the_wire(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="sp ace/+plus", Body=b"x")
        status, body = await self.call(self._get, "/vb?list-type=2&encoding-type=url&delimiter=%2F")
        self.assertEqual(status, 200)
        self.assertIn(b"<Prefix>sp%20ace/</Prefix>", body)
        self.assertIn(b"<EncodingType>url</EncodingType>", body)
        status, body = await self.call(self._get, "/vb?list-type=2&encoding-type=url")
        self.assertIn(b"<Key>sp%20ace/%2Bplus</Key>", body)
        # boto3 decodes what it asked to be encoded.
        page = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual(page["Contents"][0]["Key"], "sp ace/+plus")
        status, body = await self.call(self._get, "/vb?max-keys=-1")
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidArgument</Code>", body)
        status, body = await self.call(self._get, "/vb?max-keys=ten")
        self.assertEqual(status, 400)
        status, body = await self.call(self._get, "/vb?encoding-type=base64")
        self.assertEqual(status, 400)

    async def test_list_object_versions_shows_null_versions(self) -> None:
        for key in ["x", "y"]:
            await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=b"x")
        versions = await self.call(self.s3.list_object_versions, Bucket="vb")
        self.assertEqual([v["Key"] for v in versions["Versions"]], ["x", "y"])
        self.assertTrue(
            all(v["VersionId"] == "null" and v["IsLatest"] for v in versions["Versions"])
        )
        # The usual "empty a bucket through its versions" loop works.
        await self.call(
            self.s3.delete_objects,
            Bucket="vb",
            Delete={
                "Objects": [
                    {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions["Versions"]
                ]
            },
        )
        again = await self.call(self.s3.list_object_versions, Bucket="vb")
        self.assertNotIn("Versions", again)

    async def test_error_documents_and_request_ids(self) -> None:
        status, body = await self.call(self._get, "/vb/missing")
        self.assertEqual(status, 404)
        self.assertIn(b"<Code>NoSuchKey</Code>", body)
        self.assertIn(b"<Resource>/vb/missing</Resource>", body)
        self.assertIn(b"<RequestId>", body)
        status, body = await self.call(self._get, "/vb?cors")
        self.assertEqual(status, 501)
        self.assertIn(b"<Code>NotImplemented</Code>", body)


class CreateBucketDisabledTests(DaemonTestCase, unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.allow_create_bucket = False

    async def test_create_bucket_is_access_denied(self) -> None:
        code, status, _ = await self.error_of(self.s3.create_bucket, Bucket="another")
        self.assertEqual((code, status), ("AccessDenied", 403))


class WireTests(DaemonTestCase, unittest.TestCase):
    """Details boto3 hides: raw requests with ``http.client``."""

    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.virtual_host = True
        config.s3api.domain = "s3.test"

    def _request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.daemon.port_number, timeout=10)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            answer = connection.getresponse()
            data = answer.read()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data
        finally:
            connection.close()

    async def test_virtual_host_addressing(self) -> None:
        host = {"Host": f"vb.s3.test:{self.daemon.port_number}"}
        status, _, _ = await self.call(self._request, "PUT", "/dir/key", b"virtual", host)
        self.assertEqual(status, 200)
        status, _, body = await self.call(self._request, "GET", "/dir/key", b"", host)
        self.assertEqual((status, body), (200, b"virtual"))
        status, _, body = await self.call(self._request, "GET", "/?list-type=2", b"", host)
        self.assertIn(b"<Key>dir/key</Key>", body)
        # Path style keeps working beside it.
        status, _, body = await self.call(self._request, "GET", "/vb/dir/key")
        self.assertEqual((status, body), (200, b"virtual"))
        record = await self.daemon.store.get_object("vb", "dir/key")
        assert record is not None
        self.assertEqual(without_write_ids([record.locations[0].real_key]), ["vb/dir/key"])

    async def test_head_errors_have_no_body_and_every_answer_has_ids(self) -> None:
        status, headers, body = await self.call(self._request, "HEAD", "/vb/missing")
        self.assertEqual((status, body), (404, b""))
        self.assertIn("x-amz-request-id", headers)
        self.assertIn("x-amz-id-2", headers)
        status, headers, body = await self.call(self._request, "GET", "/vb/missing")
        self.assertIn(headers["x-amz-request-id"].encode(), body)

    async def test_delete_objects_needs_a_digest(self) -> None:
        document = b"<Delete><Object><Key>a</Key></Object></Delete>"
        status, _, body = await self.call(self._request, "POST", "/vb?delete", document)
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidRequest</Code>", body)
        self.assertIn(b"Content-MD5", body)
        import base64
        import hashlib

        wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        status, _, body = await self.call(
            self._request, "POST", "/vb?delete", document, {"Content-MD5": wrong}
        )
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>BadDigest</Code>", body)
        right = base64.b64encode(hashlib.md5(document).digest()).decode()
        status, _, body = await self.call(
            self._request, "POST", "/vb?delete", document, {"Content-MD5": right}
        )
        self.assertEqual(status, 200)
        self.assertIn(b"<Deleted><Key>a</Key></Deleted>", body)

    async def test_operations_are_counted(self) -> None:
        from s3balance import metrics

        def count() -> float:
            value = metrics.REGISTRY.get_sample_value(
                "s3_balance_s3_operations_total",
                {"operation": "GetObject", "bucket": "vb", "status": "404"},
            )
            return value or 0.0

        before = count()
        await self.call(self._request, "GET", "/vb/nothing")
        await self.call(self._request, "GET", "/vb/nothing")
        self.assertEqual(count() - before, 2)

    async def test_unexpected_exceptions_are_internal_errors_and_logged(self) -> None:
        async def broken() -> None:
            raise RuntimeError("database on fire")

        self.daemon.gateway.list_buckets = broken  # type: ignore[method-assign]
        status, headers, body = await self.call(self._request, "GET", "/")
        self.assertEqual(status, 500)
        self.assertIn(b"<Code>InternalError</Code>", body)
        self.assertNotIn(b"on fire", body)
        logged = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(logged), 1)
