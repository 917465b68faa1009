"""Scoped keys, the key ring built from config, and header collection from Twisted."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from s3balance.auth.credentials import Identity, KeyRing
from s3balance.auth.headers import RequestHeaders
from s3balance.config import Credential, S3ApiConfig
from s3balance.errors import S3Error
from test.test_auth_support import authenticator, sigv4_request

pytestmark = pytest.mark.timeout(30)


def test_unscoped_key_may_do_anything() -> None:
    everyone = Identity("AK")
    assert everyone.may_access("any", write=True)
    assert everyone.may_access("", write=True)


def test_bucket_list_limits_access() -> None:
    scoped = Identity("AK", frozenset({"photos", "docs"}))
    assert scoped.may_access("photos", write=True)
    assert scoped.may_access("docs", write=False)
    assert not scoped.may_access("backups", write=False)
    assert not scoped.may_access("Photos", write=False)  # bucket names are exact
    assert scoped.may_access("", write=False)  # ListBuckets; the front filters per bucket


def test_read_only_key_cannot_write_anywhere() -> None:
    reader = Identity("AK", frozenset({"photos"}), read_only=True)
    assert reader.may_access("photos", write=False)
    assert not reader.may_access("photos", write=True)
    assert not reader.may_access("", write=True)
    assert not reader.may_access("docs", write=False)


def test_keyring_from_config() -> None:
    config = S3ApiConfig(
        access_key="MAIN",
        secret_key="main-secret",
        credentials=[
            Credential("READER", "r-secret", buckets=["photos"], read_only=True),
            Credential("WRITER", "w-secret", buckets=["docs", "photos"]),
        ],
    )
    ring = KeyRing.from_config(config)
    assert len(ring) == 3
    assert ring.secret_for("MAIN") == "main-secret"
    assert ring.identity_for("MAIN") == Identity("MAIN")
    assert ring.identity_for("READER") == Identity("READER", frozenset({"photos"}), True)
    assert ring.identity_for("WRITER") == Identity("WRITER", frozenset({"docs", "photos"}))
    assert ring.secret_for("nobody") is None and ring.identity_for("nobody") is None


def test_keyring_without_main_key() -> None:
    ring = KeyRing.from_config(S3ApiConfig(credentials=[Credential("ONLY", "s")]))
    assert len(ring) == 1 and ring.secret_for("") is None


def test_conflicting_duplicate_key_is_refused() -> None:
    config = S3ApiConfig(
        access_key="MAIN", secret_key="one", credentials=[Credential("MAIN", "two")]
    )
    with pytest.raises(ValueError):
        KeyRing.from_config(config)
    with pytest.raises(ValueError):
        KeyRing.from_config(S3ApiConfig(credentials=[Credential("NOSECRET", "")]))


def test_scoped_identity_comes_back_from_a_signed_request() -> None:
    from botocore.credentials import Credentials

    wire = sigv4_request("GET", "/photos/k", creds=Credentials("READER", "reader-secret"))
    identity = wire.verify(authenticator()).identity
    assert identity is not None and identity.read_only
    assert identity.may_access("photos", write=False)
    assert not identity.may_access("photos", write=True)


def test_headers_from_twisted_keep_repeats_and_raw_bytes() -> None:
    raw = Headers()
    raw.addRawHeader(b"X-Amz-Meta-A", b"one")
    raw.addRawHeader(b"x-amz-meta-a", b"two")
    raw.addRawHeader(b"X-Amz-Meta-Utf8", "ü".encode())
    headers = RequestHeaders.from_twisted(raw)
    assert headers.get_all("x-amz-meta-a") == ["one", "two"]
    assert headers.get("X-AMZ-META-UTF8") == "ü"
    assert "x-amz-meta-a" in headers and "missing" not in headers


def test_twisted_headers_verify_like_plain_ones() -> None:
    wire = sigv4_request("PUT", "/b/k", headers={"x-amz-meta-name": "ünïcode"})
    raw = Headers()
    for name, value in wire.headers:
        raw.addRawHeader(name.encode(), value.encode("utf-8"))
    auth = authenticator()
    assert auth.authenticate("PUT", wire.target, RequestHeaders.from_twisted(raw)).identity
    raw.setRawHeaders(b"x-amz-meta-name", [b"other"])
    with pytest.raises(S3Error):
        auth.authenticate("PUT", wire.target, RequestHeaders.from_twisted(raw))
