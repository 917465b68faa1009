"""Canned ACLs through a real daemon with authentication on, over moto buckets: boto3 signed and
unsigned clients, and curl for anonymous reads."""

from __future__ import annotations

import subprocess
from typing import Any

from twisted.trial import unittest

from s3balance.config import Config, Credential
from test.support.daemon import in_thread
from test.support.objectmeta import MotoDaemonCase

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


def curl(url: str) -> tuple[int, bytes]:
    """An anonymous GET with curl: ``(status, body)``."""
    completed = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", url],
        capture_output=True, timeout=30, check=True,
    )
    body, _, status = completed.stdout.rpartition(b"\n")
    return int(status), body


def _grants(acl: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for grant in acl["Grants"]:
        grantee = grant["Grantee"]
        who = grantee.get("URI") or ("owner" if grantee.get("ID") == acl["Owner"]["ID"] else "?")
        found.add((who, grant["Permission"]))
    return found


class CannedAclTests(MotoDaemonCase, unittest.TestCase):
    timeout = 120

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"
        config.s3api.credentials = [
            Credential("READER", "reader-secret", buckets=["vb"], read_only=True)
        ]

    async def start(self) -> None:
        await super().start()
        self.anonymous = self.unsigned_client()

    def unsigned_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3",
            endpoint_url=self.daemon.endpoint,
            region_name="us-east-1",
            config=BotoConfig(
                signature_version=UNSIGNED,
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
            ),
        )

    def curl(self, path: str) -> tuple[int, bytes]:
        return curl(self.daemon.endpoint + path)

    async def test_public_read_object_is_readable_anonymously_and_only_that(self) -> None:
        await self.call(
            self.s3.put_object, Bucket="vb", Key="pub", Body=b"hello", ACL="public-read"
        )
        await self.call(self.s3.put_object, Bucket="vb", Key="priv", Body=b"secret")
        got = await self.call(self.anonymous.get_object, Bucket="vb", Key="pub")
        self.assertEqual(got["Body"].read(), b"hello")
        head = await self.call(self.anonymous.head_object, Bucket="vb", Key="pub")
        self.assertEqual(head["ContentLength"], 5)
        status, body = await in_thread(self.curl, "/vb/pub")
        self.assertEqual((status, body), (200, b"hello"))
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="pub")
        self.assertEqual(_grants(acl), {("owner", "FULL_CONTROL"), (ALL_USERS, "READ")})
        # Everything else stays refused to anonymous clients.
        status, body = await in_thread(self.curl, "/vb/priv")
        self.assertEqual(status, 403)
        self.assertIn(b"<Code>AccessDenied</Code>", body)
        for call, kwargs in [
            (self.anonymous.get_object, {"Key": "priv"}),
            (self.anonymous.get_object, {"Key": "missing"}),
            (self.anonymous.put_object, {"Key": "pub", "Body": b"overwrite"}),
            (self.anonymous.delete_object, {"Key": "pub"}),
            (self.anonymous.get_object_acl, {"Key": "pub"}),
            (self.anonymous.put_object_acl, {"Key": "priv", "ACL": "public-read"}),
            (self.anonymous.list_objects_v2, {}),
            (self.anonymous.get_object_tagging, {"Key": "pub"}),
        ]:
            code, status, _ = await self.error_of(call, Bucket="vb", **kwargs)
            self.assertEqual((code, status), ("AccessDenied", 403), (call, kwargs))
        code, status, _ = await self.error_of(
            self.anonymous.get_object, Bucket="vb", Key="pub", ResponseContentType="text/html"
        )
        self.assertEqual((code, status), ("InvalidRequest", 400))
        got = await self.call(self.s3.get_object, Bucket="vb", Key="pub")
        self.assertEqual(got["Body"].read(), b"hello")
        # Back to private: anonymous reads stop.
        await self.call(self.s3.put_object_acl, Bucket="vb", Key="pub", ACL="private")
        code, status, _ = await self.error_of(self.anonymous.get_object, Bucket="vb", Key="pub")
        self.assertEqual((code, status), ("AccessDenied", 403))
        # A policy document equal to public-read works like the canned header.
        owner = acl["Owner"]
        await self.call(
            self.s3.put_object_acl, Bucket="vb", Key="pub",
            AccessControlPolicy={
                "Owner": owner,
                "Grants": [
                    {"Grantee": {"Type": "CanonicalUser", "ID": owner["ID"]},
                     "Permission": "FULL_CONTROL"},
                    {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"},
                ],
            },
        )
        got = await self.call(self.anonymous.get_object, Bucket="vb", Key="pub")
        self.assertEqual(got["Body"].read(), b"hello")
        # An overwrite without an ACL is private again, as on S3.
        await self.call(self.s3.put_object, Bucket="vb", Key="pub", Body=b"new")
        code, status, _ = await self.error_of(self.anonymous.get_object, Bucket="vb", Key="pub")
        self.assertEqual((code, status), ("AccessDenied", 403))

    async def test_public_read_bucket_lists_anonymously(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="open", ACL="public-read")
        await self.call(self.s3.put_object, Bucket="open", Key="a", Body=b"x")
        acl = await self.call(self.s3.get_bucket_acl, Bucket="open")
        self.assertEqual(_grants(acl), {("owner", "FULL_CONTROL"), (ALL_USERS, "READ")})
        listed = await self.call(self.anonymous.list_objects_v2, Bucket="open")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["a"])
        listed = await self.call(self.anonymous.list_objects, Bucket="open")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["a"])
        await self.call(self.anonymous.head_bucket, Bucket="open")
        code, status, _ = await self.error_of(self.anonymous.head_bucket, Bucket="vb")
        self.assertEqual(status, 403)
        status, body = await in_thread(self.curl, "/open?list-type=2")
        self.assertEqual(status, 200)
        self.assertIn(b"<Key>a</Key>", body)
        # The bucket's ACL does not open its private objects; a missing key is a plain 404.
        code, status, _ = await self.error_of(self.anonymous.get_object, Bucket="open", Key="a")
        self.assertEqual((code, status), ("AccessDenied", 403))
        code, status, _ = await self.error_of(
            self.anonymous.get_object, Bucket="open", Key="missing"
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        for call, kwargs in [
            (self.anonymous.put_object, {"Key": "b", "Body": b"x"}),
            (self.anonymous.delete_bucket, {}),
            (self.anonymous.get_bucket_acl, {}),
            (self.anonymous.list_multipart_uploads, {}),
        ]:
            code, status, _ = await self.error_of(call, Bucket="open", **kwargs)
            self.assertEqual((code, status), ("AccessDenied", 403), (call, kwargs))
        await self.call(self.s3.put_bucket_acl, Bucket="open", ACL="private")
        code, status, _ = await self.error_of(self.anonymous.list_objects_v2, Bucket="open")
        self.assertEqual((code, status), ("AccessDenied", 403))
        code, status, _ = await self.error_of(self.anonymous.list_objects_v2, Bucket="nobucket")
        self.assertEqual((code, status), ("AccessDenied", 403))

    async def test_authenticated_read_copy_and_multipart(self) -> None:
        await self.call(
            self.s3.put_object, Bucket="vb", Key="auth", Body=b"x", ACL="authenticated-read"
        )
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="auth")
        self.assertEqual(
            _grants(acl), {("owner", "FULL_CONTROL"), (AUTHENTICATED_USERS, "READ")}
        )
        code, status, _ = await self.error_of(self.anonymous.get_object, Bucket="vb", Key="auth")
        self.assertEqual((code, status), ("AccessDenied", 403))
        await self.call(
            self.s3.copy_object, Bucket="vb", Key="copy", CopySource="vb/auth", ACL="public-read"
        )
        got = await self.call(self.anonymous.get_object, Bucket="vb", Key="copy")
        self.assertEqual(got["Body"].read(), b"x")
        created = await self.call(
            self.s3.create_multipart_upload, Bucket="vb", Key="mp", ACL="public-read"
        )
        part = await self.call(
            self.s3.upload_part, Bucket="vb", Key="mp", UploadId=created["UploadId"],
            PartNumber=1, Body=b"part",
        )
        await self.call(
            self.s3.complete_multipart_upload, Bucket="vb", Key="mp",
            UploadId=created["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        got = await self.call(self.anonymous.get_object, Bucket="vb", Key="mp")
        self.assertEqual(got["Body"].read(), b"part")
        # Owner-only object ACLs are private here (the bucket owner is the object owner).
        await self.call(
            self.s3.put_object, Bucket="vb", Key="bo", Body=b"x", ACL="bucket-owner-full-control"
        )
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="bo")
        self.assertEqual(_grants(acl), {("owner", "FULL_CONTROL")})

    async def test_what_cannot_be_honoured_is_refused(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x")
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="k")
        owner = acl["Owner"]
        refusals: list[tuple[Any, dict[str, Any]]] = [
            (self.s3.put_object, {"Key": "n", "Body": b"x", "ACL": "public-read-write"}),
            (self.s3.put_object, {"Key": "n", "Body": b"x", "GrantRead": 'id="someone"'}),
            (self.s3.put_object_acl, {"Key": "k", "ACL": "public-read-write"}),
            (self.s3.put_object_acl, {"Key": "k", "ACL": "aws-exec-read"}),
            (self.s3.put_object_acl, {"Key": "k", "GrantRead": 'emailAddress="a@b.c"'}),
            (self.s3.put_object_acl, {"Key": "k", "AccessControlPolicy": {
                "Owner": owner,
                "Grants": [
                    {"Grantee": {"Type": "CanonicalUser", "ID": owner["ID"]},
                     "Permission": "FULL_CONTROL"},
                    {"Grantee": {"Type": "CanonicalUser", "ID": "someone-else"},
                     "Permission": "READ"},
                ],
            }}),
            (self.s3.put_object_acl, {"Key": "k", "AccessControlPolicy": {
                "Owner": owner,
                "Grants": [
                    {"Grantee": {"Type": "AmazonCustomerByEmail", "EmailAddress": "a@b.c"},
                     "Permission": "READ"},
                ],
            }}),
            (self.s3.put_bucket_acl, {"ACL": "public-read-write"}),
            (self.s3.put_bucket_acl, {"ACL": "log-delivery-write"}),
            (self.s3.create_multipart_upload, {"Key": "n", "ACL": "public-read-write"}),
        ]
        for call, kwargs in refusals:
            code, status, _ = await self.error_of(call, Bucket="vb", **kwargs)
            self.assertEqual((code, status), ("NotImplemented", 501), kwargs)
        code, status, _ = await self.error_of(
            self.s3.create_bucket, Bucket="rw", ACL="public-read-write"
        )
        self.assertEqual((code, status), ("NotImplemented", 501))
        code, status, _ = await self.error_of(self.s3.head_bucket, Bucket="rw")
        self.assertEqual(status, 404)
        code, status, _ = await self.error_of(self.s3.head_object, Bucket="vb", Key="n")
        self.assertEqual(status, 404)
        acl = await self.call(self.s3.get_object_acl, Bucket="vb", Key="k")
        self.assertEqual(_grants(acl), {("owner", "FULL_CONTROL")})


    async def test_a_read_only_key_reads_but_does_not_change_tags_or_acls(self) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        reader = boto3.client(
            "s3", endpoint_url=self.daemon.endpoint, region_name="us-east-1",
            aws_access_key_id="READER", aws_secret_access_key="reader-secret",
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x", Tagging="a=1")
        got = await self.call(reader.get_object_tagging, Bucket="vb", Key="k")
        self.assertEqual(got["TagSet"], [{"Key": "a", "Value": "1"}])
        for call, kwargs in [
            (reader.put_object_tagging, {"Key": "k", "Tagging": {"TagSet": []}}),
            (reader.delete_object_tagging, {"Key": "k"}),
            (reader.put_object_acl, {"Key": "k", "ACL": "public-read"}),
            (reader.put_bucket_acl, {"ACL": "public-read"}),
            (reader.put_bucket_tagging, {"Tagging": {"TagSet": []}}),
            (reader.delete_bucket_tagging, {}),
        ]:
            code, status, _ = await self.error_of(call, Bucket="vb", **kwargs)
            self.assertEqual((code, status), ("AccessDenied", 403), kwargs)
        got = await self.call(self.s3.get_object_tagging, Bucket="vb", Key="k")
        self.assertEqual(got["TagSet"], [{"Key": "a", "Value": "1"}])


class AuthOffTests(MotoDaemonCase, unittest.TestCase):
    """With authentication off every request is allowed, ACL or not (nothing changes)."""

    timeout = 60

    async def test_the_daemon_checks_without_requiring(self) -> None:
        """As the composition root wires it: an authenticator is always there, here one that
        does not require signatures."""
        resource = self.daemon.resource
        self.assertTrue(resource.auth_enabled)
        self.assertFalse(resource.authenticator.required)

    async def test_private_objects_stay_readable_without_auth(self) -> None:
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x")
        status, body = await in_thread(curl, self.daemon.endpoint + "/vb/k")
        self.assertEqual((status, body), (200, b"x"))
        status, body = await in_thread(curl, self.daemon.endpoint + "/vb?list-type=2")
        self.assertEqual(status, 200)
