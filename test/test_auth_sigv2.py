"""SigV2 header and query verification against botocore's HmacV1 signers."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from s3balance.auth import sigv2
from s3balance.errors import S3Error
from test.test_auth_support import (
    ACCESS_KEY,
    Wire,
    authenticator,
    key_path,
    sigv2_presigned,
    sigv2_request,
)

pytestmark = pytest.mark.timeout(30)


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(S3Error) as caught:
        call()
    return caught.value.code


@pytest.mark.parametrize(
    "target",
    [
        "/bucket/key",
        key_path("bucket", "with space/ü+~"),
        "/bucket?acl",
        "/bucket/key?uploadId=abc&partNumber=3",
        "/bucket/key?response-content-type=text%2Fplain&prefix=x",
        "/bucket?delete",
        "/",
    ],
)
def test_header_signed_requests_verify(target: str) -> None:
    wire = sigv2_request("GET", target, headers={"Content-Type": "text/plain"})
    result = wire.verify(authenticator())
    assert result.identity is not None and result.identity.access_key == ACCESS_KEY
    assert result.scheme == "sigv2"


def test_amz_headers_are_signed() -> None:
    wire = sigv2_request("PUT", "/bucket/k", headers={"x-amz-meta-colour": "blue"})
    assert wire.verify(authenticator()).identity is not None
    changed = wire.with_header("x-amz-meta-colour", "red")
    assert code_of(lambda: changed.verify(authenticator())) == "SignatureDoesNotMatch"


def test_virtual_host_style_signs_the_bucket() -> None:
    wire = sigv2_request("GET", "/key", auth_path="/photos/key")
    assert wire.verify(authenticator(), bucket_from_host="photos").identity is not None
    assert code_of(lambda: wire.verify(authenticator())) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: w.with_target(b"/bucket/other"),
        lambda w: w.with_target(b"/bucket/key?versionId=2"),
        lambda w: w.with_header("Content-Type", "image/png"),
        lambda w: Wire("DELETE", w.target, w.headers),
    ],
    ids=["path", "subresource", "content-type", "method"],
)
def test_tampering_is_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    wire = tamper(sigv2_request("GET", "/bucket/key", headers={"Content-Type": "text/plain"}))
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert caught.value.code == "SignatureDoesNotMatch"
    assert {"AWSAccessKeyId", "StringToSign", "SignatureProvided"} <= caught.value.extra.keys()


def test_non_subresource_params_are_not_signed() -> None:
    wire = sigv2_request("GET", "/bucket?prefix=a")
    assert wire.with_target(b"/bucket?prefix=b").verify(authenticator()).identity is not None


def test_skew_and_unknown_key() -> None:
    wire = sigv2_request("GET", "/bucket/key")
    assert code_of(lambda: wire.verify(authenticator(offset=20 * 60))) == "RequestTimeTooSkewed"
    forged = wire.with_header("Authorization", "AWS NOBODY:" + "A" * 28)
    assert code_of(lambda: forged.verify(authenticator())) == "InvalidAccessKeyId"
    assert code_of(lambda: wire.without_header("Date").verify(authenticator())) == "AccessDenied"


def test_malformed_header() -> None:
    wire = sigv2_request("GET", "/bucket/key").with_header("Authorization", "AWS nocolon")
    assert code_of(lambda: wire.verify(authenticator())) == "InvalidArgument"


def test_amz_date_means_empty_date_in_string_to_sign() -> None:
    """S3's rule: with x-amz-date present the Date line is empty (s3cmd signs this way)."""
    amz_date = formatdate(usegmt=True)
    headers = [("Host", "h"), ("x-amz-date", amz_date)]
    resource = sigv2.canonical_resource(b"/bucket/key", b"", None)
    hdrs = Wire("GET", b"/bucket/key", headers).hdrs()
    # The reference string to sign written out by hand from the S3 documentation.
    spec_string = f"GET\n\n\n\nx-amz-date:{amz_date}\n/bucket/key"
    assert sigv2.string_to_sign("GET", hdrs, "", resource) == spec_string
    signature = sigv2.sign("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", spec_string)
    authorization = ("Authorization", f"AWS {ACCESS_KEY}:{signature}")
    wire = Wire("GET", b"/bucket/key", headers + [authorization])
    assert wire.verify(authenticator()).identity is not None


@pytest.mark.parametrize(
    "target,date,expected",
    [
        (b"/photos/puppy.jpg", "Tue, 27 Mar 2007 19:36:42 +0000", "bWq2s1WEIj+Ydj0vQ697zp+IXMU="),
        (
            b"/?prefix=photos&max-keys=50&marker=puppy",
            "Tue, 27 Mar 2007 19:42:41 +0000",
            "htDYFYduRNen8P9ZfE/s9SuKy0U=",
        ),
    ],
)
def test_s3_documentation_examples(target: bytes, date: str, expected: str) -> None:
    """The published SigV2 examples (virtual-host bucket johnsmith)."""
    headers = [("Host", "johnsmith.s3.amazonaws.com"), ("Date", date)]
    path, _, query = target.partition(b"?")
    hdrs = Wire("GET", target, headers).hdrs()
    resource = sigv2.canonical_resource(path, query, "johnsmith")
    to_sign = sigv2.string_to_sign("GET", hdrs, date, resource)
    assert sigv2.sign("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", to_sign) == expected


# -- query (presigned) -------------------------------------------------------------------------


def test_presigned_verifies_and_expires() -> None:
    wire = sigv2_presigned("GET", key_path("bucket", "a b+ü"), expires=60)
    result = wire.verify(authenticator())
    assert result.identity is not None and result.scheme == "sigv2-presigned"
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator(offset=120))
    assert caught.value.code == "AccessDenied"
    assert caught.value.message == "Request has expired"


def test_presigned_tampering() -> None:
    wire = sigv2_presigned("GET", "/bucket/key")
    moved = wire.with_target(wire.target.replace(b"/bucket/key", b"/bucket/kez"))
    assert code_of(lambda: moved.verify(authenticator())) == "SignatureDoesNotMatch"
    later = wire.with_target(wire.target.replace(b"Expires=", b"Expires=1"))
    assert code_of(lambda: later.verify(authenticator())) == "SignatureDoesNotMatch"
    partial = wire.with_target(b"/bucket/key?AWSAccessKeyId=" + ACCESS_KEY.encode())
    assert code_of(lambda: partial.verify(authenticator())) == "AccessDenied"


@pytest.mark.parametrize("sent", ["/photos", "/photos/"])
@pytest.mark.parametrize("signed", ["/photos/", "/photos"])
@pytest.mark.parametrize("query", ["", "?location", "?prefix=a&max-keys=2"])
def test_a_bucket_verifies_with_or_without_the_trailing_slash(
    sent: str, signed: str, query: str
) -> None:
    """botocore sends ``GET /photos`` but signs ``/photos/`` (its ``auth_path``), as S3 accepts;
    a client following S3's documentation signs the path as sent."""
    wire = sigv2_request("GET", sent + query, url_path=sent + query, auth_path=signed)
    assert wire.verify(authenticator()).identity is not None
    # Virtual-host style: GET / on photos.<domain>.
    wire = sigv2_request("GET", "/" + query, auth_path=signed)
    assert wire.verify(authenticator(), bucket_from_host="photos").identity is not None


def test_the_slash_leniency_is_for_buckets_only() -> None:
    wire = sigv2_request("GET", "/photos/key", auth_path="/photos/key/")
    assert code_of(lambda: wire.verify(authenticator())) == "SignatureDoesNotMatch"
    wire = sigv2_request("GET", "/photos", auth_path="/other/")
    assert code_of(lambda: wire.verify(authenticator())) == "SignatureDoesNotMatch"
    assert sigv2.canonical_resources(b"/", b"", None) == ["/"]
    assert sigv2.canonical_resources(b"/b/k", b"acl", None) == ["/b/k?acl"]
    assert sigv2.canonical_resources(b"/b", b"acl", None) == ["/b/?acl", "/b?acl"]


def test_botocore_sigv2_presigned_bucket_listing_verifies() -> None:
    wire = sigv2_presigned("GET", "/photos")
    assert wire.verify(authenticator()).identity is not None
