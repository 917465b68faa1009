"""The authentication hook of the front: signatures, bucket scopes, read-only keys."""

from __future__ import annotations

import urllib.error
import urllib.request

from twisted.trial import unittest

from s3balance.config import Config, Credential
from test.support.daemon import DaemonTestCase


class AuthTests(DaemonTestCase, unittest.TestCase):
    timeout = 120

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"
        config.s3api.credentials = [
            Credential("READER", "reader-secret", buckets=["vb"], read_only=True),
            Credential("OTHER", "other-secret", buckets=["other"]),
        ]

    def client_for(self, key: str, secret: str):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3",
            endpoint_url=self.daemon.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    async def test_signed_default_upload_and_scopes(self) -> None:
        main = self.client_for("MAINKEY", "main-secret")
        # boto3's default: a signed request with an aws-chunked body and a CRC32 trailer.
        await self.call(main.put_object, Bucket="vb", Key="k", Body=b"signed body" * 100)
        got = await self.call(main.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["Body"].read(), b"signed body" * 100)
        await self.call(main.create_bucket, Bucket="other")

        reader = self.client_for("READER", "reader-secret")
        got = await self.call(reader.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["Body"].read(), b"signed body" * 100)
        code, status, _ = await self.error_of(reader.put_object, Bucket="vb", Key="x", Body=b"x")
        self.assertEqual((code, status), ("AccessDenied", 403))
        code, status, _ = await self.error_of(reader.delete_object, Bucket="vb", Key="k")
        self.assertEqual((code, status), ("AccessDenied", 403))
        listed = await self.call(reader.list_buckets)
        self.assertEqual([b["Name"] for b in listed["Buckets"]], ["vb"])

        other = self.client_for("OTHER", "other-secret")
        code, status, _ = await self.error_of(other.get_object, Bucket="vb", Key="k")
        self.assertEqual((code, status), ("AccessDenied", 403))
        code, status, _ = await self.error_of(
            other.copy_object, Bucket="other", Key="stolen", CopySource="vb/k"
        )
        self.assertEqual((code, status), ("AccessDenied", 403))
        listed = await self.call(other.list_buckets)
        self.assertEqual([b["Name"] for b in listed["Buckets"]], ["other"])
        await self.call(other.put_object, Bucket="other", Key="mine", Body=b"ok")

    async def test_bad_signatures_and_anonymous_requests_are_refused(self) -> None:
        wrong = self.client_for("MAINKEY", "not-the-secret")
        code, status, _ = await self.error_of(wrong.list_objects_v2, Bucket="vb")
        self.assertEqual((code, status), ("SignatureDoesNotMatch", 403))
        code, status, _ = await self.error_of(
            wrong.put_object, Bucket="vb", Key="k", Body=b"x" * 100_000
        )
        self.assertEqual((code, status), ("SignatureDoesNotMatch", 403))
        unknown = self.client_for("NOBODY", "secret")
        code, status, _ = await self.error_of(unknown.list_buckets)
        self.assertEqual((code, status), ("InvalidAccessKeyId", 403))

        def anonymous() -> int:
            try:
                urllib.request.urlopen(self.daemon.endpoint + "/vb", timeout=10)
            except urllib.error.HTTPError as error:
                return error.code
            return 200

        self.assertEqual(await self.call(anonymous), 403)
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})

    async def test_presigned_urls_and_their_tampering(self) -> None:
        """The fast variant of ``test_clients_auth.PresignedUrlTests`` (local backends, curl)."""
        from test.test_clients_auth import curl


        def presign(method: str, key: str, expires: int = 300) -> str:
            import boto3
            from botocore.config import Config as BotoConfig

            client = boto3.client(
                "s3", endpoint_url=self.daemon.endpoint, aws_access_key_id="MAINKEY",
                aws_secret_access_key="main-secret", region_name="us-east-1",
                config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )
            return str(client.generate_presigned_url(
                method, Params={"Bucket": "vb", "Key": key}, ExpiresIn=expires
            ))

        put_url = presign("put_object", "p")
        for url, code, status in (
            (put_url.replace("/vb/p", "/vb/q"), "SignatureDoesNotMatch", 403),
            (put_url + "&x-id=PutObject", "SignatureDoesNotMatch", 403),
            (presign("put_object", "p", expires=604801), "AuthorizationQueryParametersError", 400),
        ):
            reply = await self.call(curl, url, method="PUT", upload=b"data")
            self.assertEqual((reply.status, reply.code), (status, code))
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})
        reply = await self.call(curl, put_url, method="PUT", upload=b"data")
        self.assertEqual(reply.status, 200)
        got = await self.call(curl, presign("get_object", "p"))
        self.assertEqual((got.status, got.body), (200, b"data"))
