"""The backend signer against botocore: the same input must give byte for byte the same request.

:class:`s3balance.backends.s3signing.Signer` transcribes botocore's ``S3SigV4Auth`` (headers) and
``S3SigV4QueryAuth`` (presigned URLs) so the daemon need not import botocore.  The reference
below is the botocore code the signer replaced, called with botocore's clock pinned to the
signer's; every header (names, values, order) and every presigned URL must come out identical.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotocoreConfig
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from s3balance.backends.s3signing import BucketAddress, Signer

#: 2026-11-29T21:07:13.25Z
NOW = 1796072833.25
EPOCH = datetime.datetime(1970, 1, 1)


@contextmanager
def botocore_time(seconds: float) -> Iterator[None]:
    """botocore's signers read the time from ``botocore.auth.get_current_datetime``.

    The moment is truncated to the microsecond as ``datetime.now()`` does (``fromtimestamp``
    would round 1.9999995 up to the next second).
    """
    whole = math.floor(seconds)
    micro = math.floor((seconds - whole) * 1_000_000)
    moment = EPOCH + datetime.timedelta(seconds=whole, microseconds=micro)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        yield


def reference_sign(
    access_key: str,
    secret_key: str,
    region: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    streamed: bool,
) -> dict[str, str]:
    """What ``Signer.sign`` returned when it was botocore."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")
    request.context["client_config"] = BotocoreConfig(s3={"payload_signing_enabled": not streamed})
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def reference_presign(
    access_key: str,
    secret_key: str,
    region: str,
    url: str,
    host: str,
    expires_in: int,
    params: dict[str, str],
) -> str:
    """What ``Signer.presign`` returned when it was botocore."""
    request = AWSRequest(method="GET", url=url, headers={"Host": host}, params=dict(params))
    S3SigV4QueryAuth(
        Credentials(access_key, secret_key), "s3", region, expires=expires_in
    ).add_auth(request)
    return str(request.url)


def both_sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None = None,
    streamed: bool = False,
    seconds: float = NOW,
    credentials: tuple[str, str, str] = (
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "us-east-1",
    ),
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    ours = Signer(*credentials, clock=lambda: seconds).sign(method, url, headers, body, streamed)
    with botocore_time(seconds):
        theirs = reference_sign(*credentials, method, url, headers, body, streamed)
    return list(ours.items()), list(theirs.items())


# -- fixed cases ------------------------------------------------------------------------------


def test_get_without_body() -> None:
    ours, theirs = both_sign(
        "GET", "http://127.0.0.1:9000/bkt/dir/a%20b", {"Host": "127.0.0.1:9000"}
    )
    assert ours == theirs
    names = [name for name, _ in ours]
    assert names == ["Host", "X-Amz-Date", "X-Amz-Content-SHA256", "Authorization"]


def test_streamed_bodies_are_unsigned_and_small_bodies_signed() -> None:
    ours, theirs = both_sign(
        "PUT", "https://b.s3.example.com/k", {"Host": "b.s3.example.com"}, streamed=True
    )
    assert ours == theirs
    assert dict(ours)["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    body = b"<CompleteMultipartUpload/>"
    ours, theirs = both_sign(
        "POST",
        "http://h/b/k?uploadId=x%2By",
        {"Host": "h", "Content-Type": "application/xml"},
        body,
    )
    assert ours == theirs
    assert dict(ours)["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()


def test_the_literal_path_is_signed() -> None:
    """``a/../b`` and ``./x`` are signed as sent, never normalised to another key."""
    for path in ("/b/a/../b", "/b/./x", "/b//double", "/b/%C3%BC/%E6%97%A5", "/"):
        ours, theirs = both_sign("GET", f"http://h{path}", {"Host": "h"})
        assert ours == theirs, path


def test_query_parameters_sorted_as_written() -> None:
    address = BucketAddress.from_endpoint("https://s3.example.com", "bkt", path_style=False)
    url = address.url(
        address.object_path("k"),
        [("uploadId", "a/b+c"), ("partNumber", "2"), ("list-type", ""), ("prefix", "ü ~")],
    )
    ours, theirs = both_sign("GET", url, {"Host": address.netloc})
    assert ours == theirs


def test_headers_the_caller_sets_are_replaced_as_botocore_does() -> None:
    headers = {
        "host": "h",
        "Authorization": "stale",
        "x-amz-date": "20000101T000000Z",
        "X-Amz-Content-Sha256": "stale",
        "User-Agent": "not signed",
        "Expect": "100-continue",
        "X-Amz-Meta-Spaced": "  several   inner\tspaces  ",
        "x-amz-meta-utf8": "Grüße",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
    }
    ours, theirs = both_sign("PUT", "http://h/b/k", headers, streamed=True)
    assert ours == theirs


def test_a_date_header_stands_for_x_amz_date() -> None:
    ours, theirs = both_sign("GET", "http://h/b/k", {"Host": "h", "Date": "whatever"})
    assert ours == theirs
    assert "X-Amz-Date" not in dict(ours)


def test_headers_differing_only_in_case_are_both_signed() -> None:
    ours, theirs = both_sign(
        "GET", "http://h/b/k", {"Host": "h", "X-Amz-Meta-A": "1", "x-amz-meta-a": "2"}
    )
    assert ours == theirs


def test_signing_key_follows_the_date() -> None:
    """The derived key is cached per day: a signature after midnight uses the new day's key."""
    times = iter([NOW, NOW + 86400, NOW + 86400 + 1])
    signer = Signer("AKID", "secret", "eu-west-1", clock=lambda: next(times))
    for seconds in (NOW, NOW + 86400, NOW + 86400 + 1):
        signed = signer.sign("GET", "http://h/b/k", {"Host": "h"}, None, False)
        with botocore_time(seconds):
            reference = reference_sign(
                "AKID", "secret", "eu-west-1", "GET", "http://h/b/k", {"Host": "h"}, None, False
            )
        assert signed == reference


def test_host_is_required() -> None:
    with pytest.raises(ValueError):
        Signer("AKID", "secret", "us-east-1").sign("GET", "http://h/b/k", {}, None, False)


def test_presigned_get_with_overrides() -> None:
    address = BucketAddress.from_endpoint("http://127.0.0.1:9000", "bkt", path_style=True)
    url = address.url(address.object_path("dir/pre signed+key"))
    params = {
        "response-content-type": "text/x-test; charset=utf-8",
        "response-content-disposition": 'attachment; filename="a b.txt"',
    }
    ours = Signer("AKID", "secret", "us-east-1", clock=lambda: NOW).presign(
        url, address.netloc, 60, params
    )
    with botocore_time(NOW):
        theirs = reference_presign("AKID", "secret", "us-east-1", url, address.netloc, 60, params)
    assert ours == theirs
    assert ours.startswith(
        "http://127.0.0.1:9000/bkt/dir/pre%20signed%2Bkey?response-content-type="
    )


def test_presigned_without_params_and_with_a_query_in_the_url() -> None:
    for url, params in (
        ("https://b.s3.amazonaws.com/k", {}),
        ("https://b.s3.amazonaws.com/k?versionId=3&x=a+b", {"response-expires": "0"}),
    ):
        ours = Signer("AKID", "secret", "us-west-2", clock=lambda: NOW).presign(
            url, "b.s3.amazonaws.com", 3600, params
        )
        with botocore_time(NOW):
            theirs = reference_presign(
                "AKID", "secret", "us-west-2", url, "b.s3.amazonaws.com", 3600, params
            )
        assert ours == theirs


# -- generated cases --------------------------------------------------------------------------

#: Text as keys, metadata and query values may hold: any code point but surrogates.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
header_names = st.sampled_from(
    [
        "Content-Type",
        "Content-MD5",
        "Content-Encoding",
        "Cache-Control",
        "Range",
        "If-Match",
        "X-Amz-Meta-Owner",
        "x-amz-meta-owner",
        "X-Amz-Copy-Source",
        "X-Amz-Checksum-Crc32",
        "x-amz-storage-class",
        "Date",
        "Authorization",
        "X-Amz-Date",
        "x-amz-content-sha256",
        "User-Agent",
        "Expect",
        "Transfer-Encoding",
        "Connection",
    ]
)
#: Header values are sent as UTF-8; no CR or LF (Agent refuses them).
header_values = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=32
)


@st.composite
def addresses(draw: st.DrawFn) -> BucketAddress:
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(["127.0.0.1", "s3.example.com", "localhost", "::1"]))
    port = draw(st.sampled_from(["", ":80", ":443", ":9000"]))
    prefix = draw(st.sampled_from(["", "/s3", "/a b"]))
    netloc = f"[{host}]" if ":" in host else host
    bucket = draw(st.sampled_from(["bkt", "my.bucket", "b-1"]))
    endpoint = f"{scheme}://{netloc}{port}{prefix}"
    # Virtual-host addressing needs a DNS name to prefix with the bucket.
    path_style = host[0].isdigit() or ":" in host or draw(st.booleans())
    return BucketAddress.from_endpoint(endpoint, bucket, path_style=path_style)


@settings(max_examples=400, deadline=None)
@given(
    address=addresses(),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "get"]),
    key=st.one_of(st.none(), texts),
    query=st.lists(st.tuples(texts, texts), max_size=4),
    headers=st.dictionaries(header_names, header_values, max_size=6),
    body=st.one_of(st.none(), st.binary(max_size=64)),
    streamed=st.booleans(),
    seconds=st.floats(min_value=0, max_value=4102444800, allow_nan=False),
    secret=texts,
    region=st.sampled_from(["us-east-1", "eu-central-1", "garage", ""]),
)
def test_headers_match_botocore(
    address: BucketAddress,
    method: str,
    key: str | None,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes | None,
    streamed: bool,
    seconds: float,
    secret: str,
    region: str,
) -> None:
    path = address.bucket_path() if key is None else address.object_path(key)
    url = address.url(path, query)
    to_sign = {"Host": address.netloc, **headers}
    ours, theirs = both_sign(
        method,
        url,
        to_sign,
        None if streamed else body,
        streamed,
        seconds,
        ("AKIDEXAMPLE", secret, region),
    )
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(
    address=addresses(),
    key=texts,
    params=st.dictionaries(texts, texts, max_size=4),
    expires_in=st.integers(min_value=1, max_value=604800),
    seconds=st.floats(min_value=0, max_value=4102444800, allow_nan=False),
    secret=texts,
)
def test_presigned_urls_match_botocore(
    address: BucketAddress,
    key: str,
    params: dict[str, str],
    expires_in: int,
    seconds: float,
    secret: str,
) -> None:
    url = address.url(address.object_path(key))
    ours = Signer("AKIDEXAMPLE", secret, "us-east-1", clock=lambda: seconds).presign(
        url, address.netloc, expires_in, params
    )
    with botocore_time(seconds):
        theirs = reference_presign(
            "AKIDEXAMPLE", secret, "us-east-1", url, address.netloc, expires_in, params
        )
    assert ours == theirs
