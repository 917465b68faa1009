"""The routing table: every served operation, every refused sub-resource, both addressing styles."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from s3balance.web.routing import METHOD_NOT_ALLOWED, NOT_IMPLEMENTED, Router

pytestmark = pytest.mark.timeout(30)


def route(method: str, target: str, headers: dict[str, str] | None = None, domain: str = ""):
    raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    return Router(domain or None).route(method.encode(), target.encode(), raw)


COPY = {"x-amz-copy-source": "/src/key"}


@pytest.mark.parametrize(
    ("method", "target", "headers", "operation"),
    [
        ("GET", "/", {}, "ListBuckets"),
        ("HEAD", "/b", {}, "HeadBucket"),
        ("GET", "/b?location", {}, "GetBucketLocation"),
        ("PUT", "/b", {}, "CreateBucket"),
        ("DELETE", "/b", {}, "DeleteBucket"),
        ("GET", "/b", {}, "ListObjects"),
        ("GET", "/b?prefix=a&delimiter=/&marker=x&max-keys=3&encoding-type=url", {}, "ListObjects"),
        (
            "GET",
            "/b?list-type=2&continuation-token=abc&start-after=x&fetch-owner=true",
            {},
            "ListObjectsV2",
        ),
        ("GET", "/b?versions&prefix=a", {}, "ListObjectVersions"),
        ("GET", "/b?versioning", {}, "GetBucketVersioning"),
        ("GET", "/b?acl", {}, "GetBucketAcl"),
        ("PUT", "/b?acl", {}, "PutBucketAcl"),
        ("POST", "/b?delete", {}, "DeleteObjects"),
        ("GET", "/b?uploads", {}, "ListMultipartUploads"),
        ("PUT", "/b/k", {}, "PutObject"),
        ("PUT", "/b/k", COPY, "CopyObject"),
        ("GET", "/b/k", {}, "GetObject"),
        ("GET", "/b/k?response-content-type=text/plain&versionId=null", {}, "GetObject"),
        ("HEAD", "/b/k", {}, "HeadObject"),
        ("DELETE", "/b/k", {}, "DeleteObject"),
        ("GET", "/b/k?acl", {}, "GetObjectAcl"),
        ("PUT", "/b/k?acl", {}, "PutObjectAcl"),
        ("POST", "/b/k?uploads", {}, "CreateMultipartUpload"),
        ("PUT", "/b/k?partNumber=1&uploadId=u", {}, "UploadPart"),
        ("GET", "/b/k?partNumber=2", {}, "GetObject"),
        ("HEAD", "/b/k?partNumber=1", {}, "HeadObject"),
        ("PUT", "/b/k?partNumber=1&uploadId=u", COPY, "UploadPartCopy"),
        ("POST", "/b/k?uploadId=u", {}, "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", {}, "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u&max-parts=2", {}, "ListParts"),
        # SDK bookkeeping and presigned-URL parameters do not change the operation.
        ("GET", "/b/k?x-id=GetObject&X-Amz-Signature=abc&X-Amz-Date=x", {}, "GetObject"),
        ("PUT", "/b/k?x-id=PutObject", {}, "PutObject"),
        ("GET", "/b/k?tagging", {}, "GetObjectTagging"),
        ("PUT", "/b/k?tagging", {}, "PutObjectTagging"),
        ("DELETE", "/b/k?tagging&versionId=null", {}, "DeleteObjectTagging"),
        ("GET", "/b?tagging", {}, "GetBucketTagging"),
        ("PUT", "/b?tagging", {}, "PutBucketTagging"),
        ("DELETE", "/b?tagging", {}, "DeleteBucketTagging"),
    ],
)
def test_served_operations(method: str, target: str, headers: dict[str, str], operation: str):
    assert route(method, target, headers).operation == operation


def test_get_object_attributes_is_served_for_get_only() -> None:
    assert route("GET", "/b/k?attributes").operation == "GetObjectAttributes"
    assert route("GET", "/b/k?attributes&versionId=null").operation == "GetObjectAttributes"
    for method in ("PUT", "DELETE", "POST"):
        assert route(method, "/b/k?attributes").operation == NOT_IMPLEMENTED
    assert route("GET", "/b/k?attributes&acl").operation == NOT_IMPLEMENTED


@pytest.mark.parametrize(
    "target",
    [
        "/b?cors",
        "/b?policy",
        "/b?lifecycle",
        "/b?website",
        "/b/k?select&select-type=2",
        "/b/k?restore",
        "/b?object-lock",
        "/b/k?retention",
        "/b/k?legal-hold",
        "/b?replication",
        "/b?encryption",
        "/b?notification",
        "/b?logging",
        "/b?accelerate",
        "/b?requestPayment",
        "/b?analytics",
        "/b?metrics",
        "/b?inventory",
        "/b?intelligent-tiering",
        "/b?ownershipControls",
        "/b?publicAccessBlock",
        "/b/k?torrent",
        "/b?some-future-subresource",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
def test_unserved_subresources_are_refused_whatever_the_method(method: str, target: str):
    """``PUT ?tagging`` must never become an overwrite, ``DELETE ?cors`` never a wipe."""
    assert route(method, target).operation == NOT_IMPLEMENTED


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/b?versioning"),
        ("POST", "/b"),  # browser form upload
        ("POST", "/b/k"),
        ("DELETE", "/b?acl"),
        ("GET", "/b?list-type=3"),
        ("GET", "/b?delete"),
        ("PUT", "/b/k?uploadId=u"),
        ("PUT", "/b/k?partNumber=2"),  # a part without its upload is no PutObject
        ("DELETE", "/b/k?partNumber=2"),
        ("GET", "/?tagging"),
        ("POST", "/b/k?tagging"),
        ("POST", "/b?tagging"),
        ("GET", "/b?tagging&prefix=a"),
        ("PUT", "/b/k?tagging&uploadId=u"),
    ],
)
def test_wrong_combinations_are_refused(method: str, target: str):
    assert route(method, target).operation == NOT_IMPLEMENTED


def test_unknown_methods_are_not_allowed():
    assert route("PATCH", "/b/k").operation == METHOD_NOT_ALLOWED
    assert route("PUT", "/").operation == METHOD_NOT_ALLOWED


def test_keys_are_percent_decoded_and_keep_slashes():
    result = route("GET", "/b/dir/sub%2Fx/caf%C3%A9%20%3F.txt")
    assert (result.bucket, result.key) == ("b", "dir/sub/x/café ?.txt")
    assert result.path == "/b/dir/sub/x/café ?.txt"


def test_query_values_are_decoded():
    result = route("GET", "/b?prefix=a%2Fb%20c&delimiter=%2F")
    assert result.query == {"prefix": "a/b c", "delimiter": "/"}


def test_a_trailing_slash_on_a_bucket_is_the_bucket():
    assert route("GET", "/b/").operation == "ListObjects"
    assert route("PUT", "/b/").operation == "CreateBucket"


def test_invalid_utf8_in_the_path_is_an_error():
    with pytest.raises(ValueError):
        route("GET", "/b/%ff")


def test_virtual_host_style_takes_the_bucket_from_host():
    result = route("PUT", "/some/key", {"host": "photos.s3.example.com:8080"}, "s3.example.com")
    assert (result.operation, result.bucket, result.key) == ("PutObject", "photos", "some/key")
    service = route("GET", "/", {"host": "s3.example.com"}, "s3.example.com")
    assert service.operation == "ListBuckets"
    bucket = route("GET", "/?list-type=2", {"host": "photos.s3.example.com"}, "s3.example.com")
    assert (bucket.operation, bucket.bucket) == ("ListObjectsV2", "photos")


def test_virtual_host_style_is_off_without_a_domain():
    result = route("GET", "/key", {"host": "photos.s3.example.com"})
    assert (result.operation, result.bucket, result.key) == ("ListObjects", "key", None)


def _stream(method: str, target: str, headers: dict[str, str], domain: str = "") -> bool:
    raw = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
    return Router(domain or None).should_stream(method.encode(), target.encode(), raw)


def test_should_stream_put_object_and_upload_part_only():
    body = {"content-length": "10"}
    assert _stream("PUT", "/b/k", body)
    assert _stream("PUT", "/b/k?partNumber=1&uploadId=u", body)
    assert _stream("PUT", "/b/k", {"transfer-encoding": "chunked"})
    assert not _stream("PUT", "/b/k", {"content-length": "0"})
    assert not _stream("PUT", "/b/k", {})
    assert not _stream("PUT", "/b/k", {**body, "x-amz-copy-source": "/a/b"})
    assert not _stream("PUT", "/b/k?partNumber=1&uploadId=u", {**body, "x-amz-copy-source": "a/b"})
    assert not _stream("PUT", "/b/k?tagging", body)
    assert not _stream("PUT", "/b/k?acl", body)
    assert not _stream("PUT", "/b", body)  # CreateBucket's configuration document
    assert not _stream("POST", "/b?delete", body)
    assert not _stream("PUT", "/b/%ff", body)


def test_should_stream_knows_virtual_host_addressing():
    headers = {"content-length": "10", "host": "vb.s3.local"}
    assert _stream("PUT", "/key", headers, "s3.local")
    assert not _stream("PUT", "/key", headers)


def test_every_operation_routing_can_name_is_in_the_registry():
    """Routing names operations, the registry serves them: one table, no operation without a
    handler (the honoured-parameter table names every operation that takes parameters)."""
    from s3balance.web.operations import OPERATIONS
    from s3balance.web.queryparams import HONOURED_PARAMS

    assert set(HONOURED_PARAMS) <= set(OPERATIONS)
    samples = [
        ("PUT", "/b/k", {"content-length": "1"}),
        ("PUT", "/b/k", {"x-amz-copy-source": "a/b"}),
        ("PUT", "/b", {}),
        ("DELETE", "/b", {}),
        ("HEAD", "/b", {}),
        ("HEAD", "/b/k", {}),
        ("GET", "/", {}),
    ]
    for method, target, headers in samples:
        assert route(method, target, headers).operation in OPERATIONS
