"""SigV4 header and presigned verification against botocore's reference signers."""

from __future__ import annotations

import time
from urllib.parse import quote

import boto3
import botocore.config
import pytest
from botocore.credentials import Credentials

from s3balance.auth import sigv4
from s3balance.auth.authenticator import unsigned_amz_headers
from s3balance.auth.headers import RequestHeaders
from s3balance.errors import S3Error
from test.test_auth_support import (
    ACCESS_KEY,
    ENDPOINT,
    REGION,
    SECRET_KEY,
    Wire,
    authenticator,
    key_path,
    sigv4_presigned,
    sigv4_request,
)

pytestmark = pytest.mark.timeout(30)

ODD_KEYS = [
    "plain.txt",
    "with space/and more spaces",
    "plus+sign",
    "ünïcödé/ключ/鍵",
    "~tilde~",
    "100%/50%25",
    "a/../b",
    "a/./b//c",
    "equals=and&amp;?question",
    "!$'()*,;:@[]",
]


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(S3Error) as caught:
        call()
    return caught.value.code


@pytest.mark.parametrize("key", ODD_KEYS)
def test_get_of_odd_keys_verifies(key: str) -> None:
    wire = sigv4_request("GET", key_path("bucket", key))
    result = wire.verify(authenticator())
    assert result.identity is not None and result.identity.access_key == ACCESS_KEY
    assert result.payload == sigv4.EMPTY_SHA256


def test_list_with_query_params_verifies() -> None:
    wire = sigv4_request(
        "GET",
        "/bucket",
        params={"list-type": "2", "prefix": "a b+c/ü", "delimiter": "/", "max-keys": "10"},
    )
    assert wire.verify(authenticator()).identity is not None


def test_subresource_without_value_verifies() -> None:
    wire = sigv4_request("GET", "/bucket?uploads")
    assert wire.verify(authenticator()).identity is not None


def test_put_with_payload_hash_reports_it() -> None:
    body = b"some object bytes"
    wire = sigv4_request(
        "PUT", key_path("bucket", "k"), headers={"Content-Type": "text/plain"}, body=body
    )
    result = wire.verify(authenticator())
    assert result.payload == sigv4.sha256_hex(body.decode())


def test_unsigned_payload_verifies() -> None:
    wire = sigv4_request("PUT", key_path("bucket", "k"), body=b"x", unsigned_payload=True)
    result = wire.verify(authenticator())
    assert result.payload == "UNSIGNED-PAYLOAD"


def test_repeated_and_spaced_header_values_verify() -> None:
    wire = sigv4_request(
        "PUT", key_path("bucket", "k"), headers={"x-amz-meta-note": "  two   spaces  inside "}
    )
    assert wire.verify(authenticator()).identity is not None


def test_host_override_replaces_host_header() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"))
    proxied = wire.with_header("Host", "internal:9000")
    assert code_of(lambda: proxied.verify(authenticator())) == "SignatureDoesNotMatch"
    auth = authenticator(host_override="127.0.0.1:8080")
    assert proxied.verify(auth).identity is not None


def test_absolute_form_target_verifies() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"), params={"a": "1"})
    absolute = wire.with_target(ENDPOINT.encode() + wire.target)
    assert absolute.verify(authenticator()).identity is not None


# -- tampering ---------------------------------------------------------------------------------


def _listing() -> Wire:
    return sigv4_request("GET", "/bucket", params={"prefix": "a", "max-keys": "5"})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: w.with_target(w.target.replace(b"/bucket", b"/bucket2")),
        lambda w: w.with_target(w.target.replace(b"prefix=a", b"prefix=b")),
        lambda w: w.with_target(w.target + b"&extra=1"),
        lambda w: w.with_target(w.target + b"&flag"),
        lambda w: w.with_header("Host", "evil.example:8080"),
        lambda w: Wire("DELETE", w.target, w.headers),
    ],
    ids=["path", "query-value", "added-param", "added-flag", "host", "method"],
)
def test_tampered_request_is_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    wire = tamper(_listing())
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    error = caught.value
    assert error.code == "SignatureDoesNotMatch"
    assert error.status == 403
    for element in ("AWSAccessKeyId", "StringToSign", "SignatureProvided", "CanonicalRequest"):
        assert element in error.extra
    assert error.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n")


def test_encoded_slash_differs_from_plain_slash() -> None:
    wire = sigv4_request("GET", "/bucket/a%2Fb")
    moved = wire.with_target(b"/bucket/a/b")
    assert code_of(lambda: moved.verify(authenticator())) == "SignatureDoesNotMatch"


def test_tampered_signed_header_value_is_rejected() -> None:
    wire = sigv4_request("PUT", key_path("bucket", "k"), headers={"x-amz-meta-a": "one"})
    changed = wire.with_header("x-amz-meta-a", "two")
    assert code_of(lambda: changed.verify(authenticator())) == "SignatureDoesNotMatch"


def test_unsigned_amz_header_is_rejected() -> None:
    wire = sigv4_request("PUT", key_path("bucket", "k")).with_header("x-amz-meta-late", "1")
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert caught.value.code == "AccessDenied"
    assert caught.value.extra["HeadersNotSigned"] == "x-amz-meta-late"
    # Headers outside x-amz-* may be added by proxies and need no signature.
    assert sigv4_request("GET", "/b/k").with_header("User-Agent", "x").verify(authenticator())


def test_unsigned_amz_headers_reads_signed_names_in_any_spelling() -> None:
    """Names listed as sent (lower case) are matched as they are; a name listed in another case
    or with spaces still counts as signed, and what is left is reported sorted."""
    headers = RequestHeaders(
        [
            ("X-Amz-Date", "20260101T000000Z"),
            ("x-amz-meta-b", "1"),
            ("x-amz-meta-a", "2"),
            ("X-Amz-Acl", "private"),
            ("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD),
            ("Host", "h"),
        ]
    )
    assert unsigned_amz_headers(headers, ["host", "x-amz-date"]) == [
        "x-amz-acl",
        "x-amz-meta-a",
        "x-amz-meta-b",
    ]
    assert unsigned_amz_headers(headers, ["host", " X-Amz-Acl", "x-amz-date", "X-AMZ-META-B"]) == [
        "x-amz-meta-a"
    ]
    everything = ["host", "x-amz-acl", "x-amz-date", "x-amz-meta-a", "x-amz-meta-b"]
    assert unsigned_amz_headers(headers, everything) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-amz-copy-source", "/other/secret"),
        ("x-amz-meta-owner", "mallory"),
        ("X-Amz-Acl", "public-read"),
        ("x-amz-date", "20300101T000000Z"),
        ("x-amz-security-token", "token"),
    ],
)
@pytest.mark.parametrize("operation", ["put_object", "get_object"])
def test_presigned_urls_refuse_unsigned_amz_headers(name: str, value: str, operation: str) -> None:
    """A presigned upload became a copy of any object with an unsigned x-amz-copy-source."""
    url = _boto3_client().generate_presigned_url(
        operation, Params={"Bucket": "photos", "Key": "upload"}, ExpiresIn=600
    )
    wire = _wire_from_url("PUT" if operation == "put_object" else "GET", url)
    assert wire.verify(authenticator()).identity is not None
    with pytest.raises(S3Error) as caught:
        wire.with_header(name, value).verify(authenticator())
    assert caught.value.code == "AccessDenied"
    assert caught.value.status == 403
    assert caught.value.message == (
        "There were headers present in the request which were not signed"
    )
    assert caught.value.extra["HeadersNotSigned"] == name.lower()


def test_presigned_urls_take_signed_amz_headers() -> None:
    url = _boto3_client().generate_presigned_url(
        "put_object", Params={"Bucket": "photos", "Key": "k", "Metadata": {"owner": "alice"}}
    )
    assert "x-amz-meta-owner" in url  # in X-Amz-SignedHeaders
    wire = _wire_from_url("PUT", url).with_header("x-amz-meta-owner", "alice")
    assert wire.verify(authenticator()).identity is not None
    changed = wire.with_header("x-amz-meta-owner", "mallory")
    assert code_of(lambda: changed.verify(authenticator())) == "SignatureDoesNotMatch"


def test_content_sha256_may_be_unsigned_because_the_signature_covers_its_value() -> None:
    url = _boto3_client().generate_presigned_url(
        "put_object", Params={"Bucket": "photos", "Key": "k"}
    )
    wire = _wire_from_url("PUT", url)
    same = wire.with_header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    assert same.verify(authenticator()).payload == "UNSIGNED-PAYLOAD"
    # Another value changes the canonical request: the signature no longer matches.
    other = wire.with_header("x-amz-content-sha256", sigv4.EMPTY_SHA256)
    assert code_of(lambda: other.verify(authenticator())) == "SignatureDoesNotMatch"
    streaming = wire.with_header("x-amz-content-sha256", sigv4.STREAMING_UNSIGNED_TRAILER)
    assert code_of(lambda: streaming.verify(authenticator())) == "SignatureDoesNotMatch"


def test_clock_skew_is_rejected_both_ways() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"))
    assert wire.verify(authenticator(offset=14 * 60)).identity is not None
    for offset in (16 * 60, -16 * 60):
        with pytest.raises(S3Error) as caught:
            wire.verify(authenticator(offset=offset))
        assert caught.value.code == "RequestTimeTooSkewed"
        assert {"RequestTime", "ServerTime"} <= caught.value.extra.keys()


def test_tampered_date_is_rejected() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"))
    date = dict(wire.headers)["X-Amz-Date"]
    later = date[:-3] + ("00Z" if date[-3:] != "00Z" else "01Z")
    assert code_of(lambda: wire.with_header("X-Amz-Date", later).verify(authenticator())) in (
        "SignatureDoesNotMatch",
    )


def test_date_header_instead_of_amz_date() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"), headers={"Date": "x"})
    assert "X-Amz-Date" not in dict(wire.headers)
    assert wire.verify(authenticator()).identity is not None


def test_unknown_access_key() -> None:
    other = Credentials("NOBODY", SECRET_KEY)
    wire = sigv4_request("GET", key_path("bucket", "k"), creds=other)
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert caught.value.code == "InvalidAccessKeyId"
    assert caught.value.extra["AWSAccessKeyId"] == "NOBODY"


def test_wrong_secret() -> None:
    wire = sigv4_request("GET", "/b/k", creds=Credentials(ACCESS_KEY, "not-the-secret"))
    assert code_of(lambda: wire.verify(authenticator())) == "SignatureDoesNotMatch"


def test_wrong_region_names_the_expected_one() -> None:
    wire = sigv4_request("GET", key_path("bucket", "k"), region="eu-west-1")
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert caught.value.code == "AuthorizationHeaderMalformed"
    assert caught.value.extra["Region"] == REGION
    assert "eu-west-1" in caught.value.message


def test_missing_content_sha256_header() -> None:
    wire = sigv4_request("GET", "/b/k").without_header("X-Amz-Content-SHA256")
    assert code_of(lambda: wire.verify(authenticator())) == "InvalidRequest"


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/s3/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/s4/aws4_request, "
        "SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/s3/aws5_request, "
        "SignedHeaders=host, Signature=00",
    ],
)
def test_malformed_authorization_header(authorization: str) -> None:
    wire = Wire(
        "GET",
        b"/b/k",
        [
            ("Host", "h"),
            ("x-amz-date", "20250101T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("Authorization", authorization),
        ],
    )
    assert code_of(lambda: wire.verify(authenticator())) == "AuthorizationHeaderMalformed"


def test_host_must_be_signed() -> None:
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    wire = Wire(
        "GET",
        b"/b/k",
        [
            ("Host", "h"),
            ("x-amz-date", now),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{now[:8]}/{REGION}/s3/aws4_request, "
                f"SignedHeaders=x-amz-content-sha256;x-amz-date, Signature={'0' * 64}",
            ),
        ],
    )
    assert code_of(lambda: wire.verify(authenticator())) == "AuthorizationHeaderMalformed"


def test_credential_date_must_match_request_date() -> None:
    wire = sigv4_request("GET", "/b/k")
    authorization = dict(wire.headers)["Authorization"]
    date = dict(wire.headers)["X-Amz-Date"][:8]
    forged = wire.with_header("Authorization", authorization.replace(f"/{date}/", "/20200101/"))
    assert code_of(lambda: forged.verify(authenticator())) == "AuthorizationHeaderMalformed"


def test_bad_payload_value_is_rejected() -> None:
    wire = sigv4_request("GET", "/b/k").with_header("X-Amz-Content-SHA256", "nonsense")
    assert code_of(lambda: wire.verify(authenticator())) == "InvalidArgument"


def test_two_mechanisms_are_rejected() -> None:
    header_signed = sigv4_request("GET", "/b/k")
    presigned = sigv4_presigned("GET", "/b/k")
    both = Wire("GET", presigned.target, header_signed.headers)
    assert code_of(lambda: both.verify(authenticator())) == "InvalidArgument"


# -- presigned ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ODD_KEYS)
def test_presigned_get_verifies(key: str) -> None:
    wire = sigv4_presigned("GET", key_path("bucket", key))
    result = wire.verify(authenticator())
    assert result.identity is not None
    assert result.payload == "UNSIGNED-PAYLOAD"
    assert result.scheme == "sigv4-presigned"


def test_presigned_with_operation_params_verifies() -> None:
    wire = sigv4_presigned(
        "GET", key_path("b", "k"), params={"response-content-type": "text/plain; charset=x"}
    )
    assert wire.verify(authenticator()).identity is not None


def _boto3_client(secret: str = SECRET_KEY):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        region_name=REGION,
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def _wire_from_url(method: str, url: str) -> Wire:
    assert url.startswith(ENDPOINT)
    return Wire(method, url[len(ENDPOINT) :].encode("ascii"), [("Host", "127.0.0.1:8080")])


@pytest.mark.parametrize("method,operation", [("GET", "get_object"), ("PUT", "put_object")])
def test_boto3_generate_presigned_url_verifies(method: str, operation: str) -> None:
    url = _boto3_client().generate_presigned_url(
        operation, Params={"Bucket": "photos", "Key": "holiday/ü 1+1.jpg"}, ExpiresIn=600
    )
    wire = _wire_from_url(method, url)
    assert wire.verify(authenticator()).identity is not None
    # The same URL used with another method is another request.
    other = Wire("DELETE", wire.target, wire.headers)
    assert code_of(lambda: other.verify(authenticator())) == "SignatureDoesNotMatch"


def test_presigned_tampering_is_rejected() -> None:
    wire = sigv4_presigned("GET", key_path("bucket", "k"), params={"versionId": "7"})
    for target in (
        wire.target.replace(b"/bucket/k", b"/bucket/j"),
        wire.target.replace(b"versionId=7", b"versionId=8"),
        wire.target + b"&x-id=GetObject",
        wire.target.replace(b"X-Amz-Expires=3600", b"X-Amz-Expires=3601"),
    ):
        with pytest.raises(S3Error) as caught:
            wire.with_target(target).verify(authenticator())
        assert caught.value.code == "SignatureDoesNotMatch"


def test_presigned_expiry() -> None:
    wire = sigv4_presigned("GET", key_path("bucket", "k"), expires=60)
    assert wire.verify(authenticator(offset=50)).identity is not None
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator(offset=61))
    assert caught.value.code == "AccessDenied"
    assert caught.value.message == "Request has expired"


@pytest.mark.parametrize("expires", [604801])
def test_presigned_expires_out_of_range(expires: int) -> None:
    wire = sigv4_presigned("GET", key_path("bucket", "k"), expires=expires)
    assert code_of(lambda: wire.verify(authenticator())) == "AuthorizationQueryParametersError"


def test_presigned_expires_zero_has_expired() -> None:
    """S3 answers ``X-Amz-Expires=0`` with 403 AccessDenied, not a parameter error."""
    wire = sigv4_presigned("GET", key_path("bucket", "k"), expires=0)
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert (caught.value.code, caught.value.status) == ("AccessDenied", 403)
    assert caught.value.message == "Request has expired"


def test_presigned_wrong_region() -> None:
    wire = sigv4_presigned("GET", key_path("bucket", "k"), region="ap-south-1")
    with pytest.raises(S3Error) as caught:
        wire.verify(authenticator())
    assert caught.value.code == "AuthorizationQueryParametersError"
    assert caught.value.extra["Region"] == REGION


def test_presigned_unknown_key() -> None:
    wire = sigv4_presigned("GET", "/b/k")
    forged = wire.with_target(wire.target.replace(ACCESS_KEY.encode(), b"SOMEONE"))
    assert code_of(lambda: forged.verify(authenticator())) == "InvalidAccessKeyId"


def test_presigned_missing_parameter() -> None:
    wire = sigv4_presigned("GET", "/b/k")
    stripped = b"&".join(p for p in wire.target.split(b"&") if not p.startswith(b"X-Amz-Date"))
    code = code_of(lambda: wire.with_target(stripped).verify(authenticator()))
    assert code == "AuthorizationQueryParametersError"


# -- anonymous and auth off --------------------------------------------------------------------


def test_anonymous_rejected_when_required_allowed_otherwise() -> None:
    wire = Wire("GET", b"/b/k", [("Host", "h")])
    assert code_of(lambda: wire.verify(authenticator())) == "AccessDenied"
    result = wire.verify(authenticator(required=False))
    assert result.identity is None and result.payload == ""


def test_auth_off_skips_verification_but_reports_payload() -> None:
    wire = sigv4_request("GET", "/b/k", creds=Credentials(ACCESS_KEY, "wrong"))
    result = wire.verify(authenticator(required=False))
    assert result.identity is None
    assert result.payload == sigv4.EMPTY_SHA256
    # The key is known: chunk signatures can still be checked.
    assert result.signer is not None


def test_canonical_uri_does_not_normalise_or_double_encode() -> None:
    assert sigv4.canonical_uri(b"/b/a/../c") == "/b/a/../c"
    assert sigv4.canonical_uri(b"/b/a%20b") == "/b/a%20b"
    assert sigv4.canonical_uri(b"/b/a b!") == "/b/a%20b%21"
    assert sigv4.canonical_uri(b"/b/%7Ek") == "/b/~k"
    assert sigv4.canonical_uri(quote("/b/ü").encode()) == "/b/%C3%BC"


def test_canonical_uri_of_a_plain_path_is_what_decoding_and_encoding_give() -> None:
    """A path taken as it is (nothing to decode or encode) canonicalises as the long way does,
    and every byte the short cut must not take goes the long way."""
    from urllib.parse import unquote_to_bytes

    def long_way(raw: bytes) -> str:
        return quote(unquote_to_bytes(raw), safe="/") or "/"

    samples = [b"", b"/", b"/b/k", b"/b/a-b_c.d~e/f", b"/b/%41", b"/b/a+b", b"/b/a=b", b"/b/a;b"]
    samples += [b"/b/k" + bytes([byte]) for byte in range(256)]
    for raw in samples:
        assert sigv4.canonical_uri(raw) == long_way(raw), raw


def test_payload_hash_must_be_64_ascii_hex_digits() -> None:
    from s3balance.auth.authenticator import _is_sha256_hex

    assert _is_sha256_hex(sigv4.EMPTY_SHA256)
    assert _is_sha256_hex(sigv4.EMPTY_SHA256.upper())
    for bad in (
        sigv4.EMPTY_SHA256[:-1], sigv4.EMPTY_SHA256 + "0", sigv4.EMPTY_SHA256[:-1] + "\n",
        sigv4.EMPTY_SHA256[:-1] + "g", "\uff10" * 64, sigv4.UNSIGNED_PAYLOAD, "",
    ):  # fmt: skip
        assert not _is_sha256_hex(bad), bad


def test_signing_key_cache_is_keyed_by_secret_date_region_and_service() -> None:
    """Each of the four parts changes the derived key, and each is part of the cache key: a
    cached key is never handed out for another secret, day, region or service."""
    import hashlib
    import hmac

    def derived(secret: str, date: str, region: str, service: str) -> bytes:
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return key

    base = ("secret-a", "20260101", "us-east-1", "s3")
    variants = [
        base,
        ("secret-b", *base[1:]),
        (base[0], "20260102", *base[2:]),
        (*base[:2], "eu-west-1", base[3]),
        (*base[:3], "sts"),
    ]
    sigv4.signing_key.cache_clear()
    keys = [sigv4.signing_key(*parts) for parts in variants]
    assert keys == [derived(*parts) for parts in variants]
    assert len(set(keys)) == len(variants)
    assert sigv4.signing_key.cache_info().misses == len(variants)
    again = [sigv4.signing_key(*parts) for parts in reversed(variants)]
    assert again == list(reversed(keys))
    assert sigv4.signing_key.cache_info().hits == len(variants)
    assert sigv4.signing_key(*base[:3]) == keys[0]  # the default service is s3


def test_amz_date_reads_as_strptime_does() -> None:
    """The sliced fast path accepts and refuses exactly what ``strptime`` does."""
    import calendar
    from datetime import datetime

    from s3balance.auth.authenticator import _parse_amz_date

    def reference(value: str) -> float | None:
        try:
            parsed = datetime.strptime(value, sigv4.TIMESTAMP_FORMAT)
        except ValueError:
            return None
        return float(calendar.timegm(parsed.timetuple()))

    for value in (
        "20260101T000000Z", "20261231T235959Z", "20240229T120000Z", "20230229T120000Z",
        "20260230T000000Z", "20261301T000000Z", "20260101T240000Z", "20260101T236000Z",
        "20260101T235960Z", "00000101T000000Z", "2026011T0000000Z", "20260101T000000z",
        "\uff12\uff10\uff12\uff160101T000000Z", "20260101 000000Z", "2026-01-01T00:00:00Z", "",
    ):  # fmt: skip
        assert _parse_amz_date(value) == reference(value), value
