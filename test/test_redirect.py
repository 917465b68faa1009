"""Redirect mode (``s3api.proxy_mode: false``): GetObject answers 302 to a presigned URL of the
real object, followed by real clients to a real SeaweedFS; everything that fails a proxied read
fails the redirect first."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.trial import unittest

from s3balance.config import Config
from test.support import require_tool
from test.support.daemon import DaemonTestCase
from test.test_clients_auth import (
    MAIN_KEY,
    MAIN_SECRET,
    SeaweedAuthCase,
    clean_env,
    curl,
    run,
    run_ok,
    send,
    signed_headers,
)

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every byte value


@pytest.mark.slow
class RedirectTests(SeaweedAuthCase, unittest.TestCase):
    timeout = 120

    def configure(self, config: Config) -> None:
        super().configure(config)
        config.s3api.proxy_mode = False
        config.s3api.presign_expiry = 120.0

    async def put(self, key: str, body: bytes = PAYLOAD) -> Any:
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        return await self.call(main.put_object, Bucket="vb", Key=key, Body=body)

    def presigned_get(self, key: str, **params: Any) -> str:
        main = self.client_for(MAIN_KEY, MAIN_SECRET, signature_version="s3v4")
        return str(
            main.generate_presigned_url(
                "get_object", Params={"Bucket": "vb", "Key": key, **params}, ExpiresIn=300
            )
        )

    def get(self, key: str, headers: dict[str, str] | None = None, query: str = "") -> Any:
        """A header-signed GET sent with http.client, which follows nothing."""
        url = f"{self.daemon.endpoint}/vb/{key}{query}"
        signed = signed_headers("GET", url, MAIN_KEY, MAIN_SECRET, headers=headers)
        return send(self.daemon.port_number, "GET", f"/vb/{key}{query}", signed)

    async def test_302_to_the_backend_followed_by_curl(self) -> None:
        await self.put("obj.bin")
        url = self.presigned_get("obj.bin")
        reply = await self.call(curl, url)
        self.assertEqual(reply.status, 302)
        self.assertEqual(reply.headers["cache-control"], "no-store")
        self.assertEqual(reply.body, b"")
        location = urlsplit(reply.headers["location"])
        self.assertEqual(f"{location.scheme}://{location.netloc}", self.weed.endpoint)
        query = parse_qs(location.query)
        self.assertEqual(query["X-Amz-Expires"], ["120"])
        self.assertIn("X-Amz-Signature", query)

        followed = await self.call(curl, url, follow=True)
        self.assertEqual((followed.status, followed.body), (200, PAYLOAD))
        ranged = await self.call(curl, url, headers={"Range": "bytes=100-299"}, follow=True)
        self.assertEqual((ranged.status, ranged.body), (206, PAYLOAD[100:300]))
        self.assertEqual(ranged.headers["content-range"], f"bytes 100-299/{len(PAYLOAD)}")
        tail = await self.call(curl, url, headers={"Range": "bytes=-4"}, follow=True)
        self.assertEqual((tail.status, tail.body), (206, b"tail"))

    async def test_response_overrides_travel_in_the_location(self) -> None:
        await self.put("doc.txt")
        url = self.presigned_get(
            "doc.txt",
            ResponseContentType="text/x-special",
            ResponseContentDisposition='attachment; filename="x y.txt"',
            ResponseCacheControl="max-age=7",
        )
        reply = await self.call(curl, url)
        self.assertEqual(reply.status, 302)
        query = parse_qs(urlsplit(reply.headers["location"]).query)
        self.assertEqual(query["response-content-type"], ["text/x-special"])
        self.assertEqual(
            query["response-content-disposition"], ['attachment; filename="x y.txt"']
        )
        self.assertEqual(query["response-cache-control"], ["max-age=7"])
        followed = await self.call(curl, url, follow=True)
        self.assertEqual(followed.status, 200)
        self.assertEqual(followed.body, PAYLOAD)
        self.assertEqual(followed.headers["content-type"], "text/x-special")
        self.assertEqual(
            followed.headers["content-disposition"], 'attachment; filename="x y.txt"'
        )

    async def test_failures_come_before_the_redirect(self) -> None:
        put = await self.put("cond.bin")
        etag = put["ETag"]

        missing = await self.call(self.get, "nothing-here")
        self.assertEqual((missing.status, missing.code), (404, "NoSuchKey"))
        self.assertNotIn("location", missing.headers)
        not_modified = await self.call(self.get, "cond.bin", {"If-None-Match": etag})
        self.assertEqual(not_modified.status, 304)
        self.assertNotIn("location", not_modified.headers)
        failed = await self.call(self.get, "cond.bin", {"If-Match": '"0000"'})
        self.assertEqual((failed.status, failed.code), (412, "PreconditionFailed"))
        self.assertNotIn("location", failed.headers)
        beyond = await self.call(self.get, "cond.bin", {"Range": "bytes=999999-"})
        self.assertEqual((beyond.status, beyond.code), (416, "InvalidRange"))
        self.assertNotIn("location", beyond.headers)
        matching = await self.call(self.get, "cond.bin", {"If-Match": etag})
        self.assertEqual(matching.status, 302)

        # Authentication: a bad signature never learns where the bytes are.
        url = self.presigned_get("cond.bin")
        signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
        tampered = url.replace(signature, signature[::-1])
        refused = await self.call(curl, tampered)
        self.assertEqual((refused.status, refused.code), (403, "SignatureDoesNotMatch"))
        self.assertNotIn("location", refused.headers)
        wrong = signed_headers("GET", f"{self.daemon.endpoint}/vb/cond.bin", MAIN_KEY, "nope")
        refused = await self.call(send, self.daemon.port_number, "GET", "/vb/cond.bin", wrong)
        self.assertEqual((refused.status, refused.code), (403, "SignatureDoesNotMatch"))
        self.assertNotIn("location", refused.headers)
        anonymous = await self.call(curl, f"{self.daemon.endpoint}/vb/cond.bin")
        self.assertEqual((anonymous.status, anonymous.code), (403, "AccessDenied"))
        self.assertNotIn("location", anonymous.headers)

        # The backend's health: 503 and no Location while it is down.
        record = await self.daemon.store.get_object("vb", "cond.bin")
        assert record is not None
        backend = record.locations[0].backend
        for _ in range(10):
            if not self.daemon.health.is_healthy(backend):
                break
            self.daemon.health.mark_failure(backend, "test: marked down")
        self.assertFalse(self.daemon.health.is_healthy(backend))
        down = await self.call(self.get, "cond.bin")
        self.assertEqual((down.status, down.code), (503, "ServiceUnavailable"))
        self.assertNotIn("location", down.headers)

    async def test_head_and_part_number_reads_are_answered_by_the_daemon(self) -> None:
        await self.put("p.bin")
        head_headers = signed_headers("HEAD", f"{self.daemon.endpoint}/vb/p.bin", MAIN_KEY,
                                      MAIN_SECRET)
        head = await self.call(send, self.daemon.port_number, "HEAD", "/vb/p.bin", head_headers)
        self.assertEqual(head.status, 200)
        self.assertEqual(head.headers["content-length"], str(len(PAYLOAD)))
        self.assertNotIn("location", head.headers)
        part = await self.call(self.get, "p.bin", query="?partNumber=1")
        self.assertEqual(part.status, 206)
        self.assertEqual(part.body, PAYLOAD)
        self.assertNotIn("location", part.headers)

    async def test_boto3_does_not_follow_the_redirect(self) -> None:
        """botocore never follows a 302 (urllib3 is called with redirects off): boto3 users
        must keep proxy mode, which is what this test pins down."""
        from botocore.exceptions import ClientError

        await self.put("b.bin")
        main = self.client_for(MAIN_KEY, MAIN_SECRET)

        def attempt() -> tuple[str, int]:
            try:
                main.get_object(Bucket="vb", Key="b.bin")["Body"].read()
            except ClientError as error:
                metadata = error.response["ResponseMetadata"]
                location = metadata["HTTPHeaders"].get("location", "")
                return location, metadata["HTTPStatusCode"]
            return "", 200

        location, status = await self.call(attempt)
        self.assertEqual(status, 302)
        self.assertTrue(location.startswith(self.weed.endpoint), location)

    async def test_rclone_follows_the_redirect(self) -> None:
        rclone = require_tool("rclone")
        await self.put("dir/r.bin")
        await self.put("dir/s.bin", b"second object")
        env = clean_env()
        env.update(
            RCLONE_CONFIG_S3B_TYPE="s3", RCLONE_CONFIG_S3B_PROVIDER="Other",
            RCLONE_CONFIG_S3B_ENDPOINT=self.daemon.endpoint,
            RCLONE_CONFIG_S3B_ACCESS_KEY_ID=MAIN_KEY,
            RCLONE_CONFIG_S3B_SECRET_ACCESS_KEY=MAIN_SECRET,
            RCLONE_CONFIG_S3B_REGION="us-east-1", RCLONE_CONFIG_S3B_FORCE_PATH_STYLE="true",
        )
        common = ["--retries", "1", "--low-level-retries", "1", "--contimeout", "5s",
                  "--timeout", "30s"]
        cat = await self.call(run, [rclone, "cat", "s3b:vb/dir/r.bin", *common], env)
        self.assertEqual(cat.returncode, 0, cat.stderr.decode()[-2000:])
        self.assertEqual(cat.stdout, PAYLOAD)
        ranged = await self.call(
            run, [rclone, "cat", "--offset", "10", "--count", "20", "s3b:vb/dir/r.bin", *common],
            env,
        )
        self.assertEqual(ranged.stdout, PAYLOAD[10:30], ranged.stderr.decode()[-2000:])
        target = f"{self.workdir}/copied"
        await self.call(run_ok, [rclone, "copy", "s3b:vb/dir", target, *common], env)
        with open(f"{target}/r.bin", "rb") as file:
            self.assertEqual(file.read(), PAYLOAD)
        with open(f"{target}/s.bin", "rb") as file:
            self.assertEqual(file.read(), b"second object")


@pytest.mark.slow
class RedirectReadBudgetTests(SeaweedAuthCase, unittest.TestCase):
    """A redirect is a class-B read: it is counted, and refused with SlowDown past the budget."""

    timeout = 120

    def configure(self, config: Config) -> None:
        super().configure(config)
        config.s3api.proxy_mode = False
        for bucket in config.real_buckets:
            bucket.operation_limits.type_b = 2

    async def test_redirects_use_the_class_b_budget(self) -> None:
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="k", Body=b"budget")
        record = await self.daemon.store.get_object("vb", "k")
        assert record is not None
        backend = record.locations[0].backend
        url = f"{self.daemon.endpoint}/vb/k"
        statuses = []
        for _ in range(3):
            signed = signed_headers("GET", url, MAIN_KEY, MAIN_SECRET)
            reply = await self.call(send, self.daemon.port_number, "GET", "/vb/k", signed)
            statuses.append((reply.status, reply.code, "location" in reply.headers))
        self.assertEqual(statuses, [(302, "", True), (302, "", True), (503, "SlowDown", False)])
        self.assertEqual(self.daemon.pool.operation_counts(backend).class_b, 2)


class LocalDirectoriesAreProxiedTests(DaemonTestCase, unittest.TestCase):
    """Local directories cannot presign: reads are proxied even in redirect mode."""

    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.proxy_mode = False

    async def test_get_is_proxied(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="local", Body=PAYLOAD)
        reply = await self.call(curl, f"{self.daemon.endpoint}/vb/local")
        self.assertEqual((reply.status, reply.body), (200, PAYLOAD))
        self.assertNotIn("location", reply.headers)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="local", Range="bytes=1-2")
        self.assertEqual(got["Body"].read(), PAYLOAD[1:3])
