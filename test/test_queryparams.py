"""The three lists of :mod:`s3balance.web.queryparams` (refused, honoured, ignored) and how routing
applies them, including the query strings real SDKs send."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from s3balance.web.queryparams import (
    HONOURED_PARAMS,
    IGNORED_PARAMS,
    UNSERVED_SUBRESOURCES,
    is_ignored,
    judge_query,
    parse_query,
    query_args,
)
from s3balance.web.routing import NOT_IMPLEMENTED, Router

pytestmark = pytest.mark.timeout(30)

METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")


def route(method: str, target: str):  # type: ignore[no-untyped-def]
    return Router().route(method.encode(), target.encode(), Headers())


def test_the_lists_do_not_overlap() -> None:
    honoured = frozenset().union(*HONOURED_PARAMS.values())
    assert not UNSERVED_SUBRESOURCES & honoured
    assert not UNSERVED_SUBRESOURCES & IGNORED_PARAMS
    assert not honoured & IGNORED_PARAMS
    for name in UNSERVED_SUBRESOURCES | honoured:
        assert not is_ignored(name), name
    # Lower case everywhere: names are compared in lower case.
    for name in UNSERVED_SUBRESOURCES | honoured | IGNORED_PARAMS:
        assert name == name.lower(), name


# -- list 1: sub-resources we do not serve ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNSERVED_SUBRESOURCES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", ["/b", "/b/k"])
def test_every_unserved_subresource_is_refused_with_every_method(
    name: str, method: str, path: str
) -> None:
    """``PUT /b/k?tagging`` never becomes an overwrite, ``DELETE /b?cors`` never a delete."""
    for target in (f"{path}?{name}", f"{path}?{name}=", f"{path}?{name}=1&x-id=Op"):
        result = route(method, target)
        assert result.operation == NOT_IMPLEMENTED, target
        assert name in result.refusal.lower()


def test_subresources_are_matched_whatever_their_case() -> None:
    assert route("PUT", "/b?CORS").operation == NOT_IMPLEMENTED
    assert route("PUT", "/b?PublicAccessBlock").operation == NOT_IMPLEMENTED


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/b?versioning"),  # versioning is read-only here
        ("DELETE", "/b?acl"),
        ("POST", "/b?location"),
    ],
)
def test_served_subresources_refuse_the_methods_they_are_not_served_with(
    method: str, target: str
) -> None:
    result = route(method, target)
    assert result.operation == NOT_IMPLEMENTED
    assert result.refusal


# -- list 2: the parameters each operation honours -------------------------------------------------

EXAMPLES = {
    "ListBuckets": ("GET", "/"),
    "ListObjects": ("GET", "/b"),
    "ListObjectsV2": ("GET", "/b?list-type=2"),
    "ListObjectVersions": ("GET", "/b?versions"),
    "ListMultipartUploads": ("GET", "/b?uploads"),
    "GetBucketLocation": ("GET", "/b?location"),
    "GetBucketVersioning": ("GET", "/b?versioning"),
    "GetBucketAcl": ("GET", "/b?acl"),
    "PutBucketAcl": ("PUT", "/b?acl"),
    "DeleteObjects": ("POST", "/b?delete"),
    "GetBucketTagging": ("GET", "/b?tagging"),
    "PutBucketTagging": ("PUT", "/b?tagging"),
    "DeleteBucketTagging": ("DELETE", "/b?tagging"),
    "GetObject": ("GET", "/b/k"),
    "HeadObject": ("HEAD", "/b/k"),
    "DeleteObject": ("DELETE", "/b/k"),
    "GetObjectAcl": ("GET", "/b/k?acl"),
    "PutObjectAcl": ("PUT", "/b/k?acl"),
    "GetObjectAttributes": ("GET", "/b/k?attributes"),
    "GetObjectTagging": ("GET", "/b/k?tagging"),
    "PutObjectTagging": ("PUT", "/b/k?tagging"),
    "DeleteObjectTagging": ("DELETE", "/b/k?tagging"),
    "CreateMultipartUpload": ("POST", "/b/k?uploads"),
    "UploadPart": ("PUT", "/b/k?uploadId=u&partNumber=1"),
    "CompleteMultipartUpload": ("POST", "/b/k?uploadId=u"),
    "AbortMultipartUpload": ("DELETE", "/b/k?uploadId=u"),
    "ListParts": ("GET", "/b/k?uploadId=u"),
}
#: Parameters whose value selects the operation: the example's value is kept.
_SELECTORS = {"list-type", "uploadid", "partnumber", "versions", "uploads", "location",
              "versioning", "acl", "delete", "tagging", "attributes"}  # fmt: skip


@pytest.mark.parametrize("operation", sorted(HONOURED_PARAMS))
def test_each_operation_takes_every_parameter_it_honours(operation: str) -> None:
    if operation == "UploadPartCopy":
        return  # UploadPart with x-amz-copy-source: the same parameters
    method, target = EXAMPLES[operation]
    spelling = {"versionid": "versionId", "partnumber": "partNumber", "uploadid": "uploadId"}
    extra = "&".join(
        f"{spelling.get(name, name)}=v"
        for name in sorted(HONOURED_PARAMS[operation])
        if name not in _SELECTORS
    )
    if extra:
        target += ("&" if "?" in target else "?") + extra
    assert route(method, target).operation == operation, target


def test_honoured_parameters_count_only_in_s3s_spelling() -> None:
    """S3 does not know ``?UPLOADID=``: it would overwrite the object; here it is refused."""
    assert route("PUT", "/b/k?uploadId=u&partNumber=1").operation == "UploadPart"
    for target in ("/b/k?UPLOADID=u&PARTNUMBER=1", "/b/k?uploadid=u&partnumber=1",
                   "/b/k?UploadId=u&partNumber=1"):  # fmt: skip
        result = route("PUT", target)
        assert result.operation == NOT_IMPLEMENTED, target
    assert route("DELETE", "/b/k?VersionId=3").operation == NOT_IMPLEMENTED
    # On a read, another spelling with a value is ignored as S3 ignores it...
    assert route("GET", "/b?LIST-TYPE=2").operation == "ListObjects"
    assert route("GET", "/b/k?VERSIONID=3").operation == "GetObject"
    # ... and without one it may be a sub-resource.
    assert route("GET", "/b?ACL").operation == NOT_IMPLEMENTED
    assert route("PUT", "/b?Acl").operation == NOT_IMPLEMENTED


def test_parameters_of_other_operations_are_refused_not_ignored() -> None:
    """A known parameter in the wrong place is a client mistake S3 would answer differently."""
    assert route("GET", "/b?uploadId=u").operation == NOT_IMPLEMENTED
    assert route("PUT", "/b/k?partNumber=2").operation == NOT_IMPLEMENTED
    assert route("DELETE", "/b/k?partNumber=2").operation == NOT_IMPLEMENTED


# -- list 3: parameters ignored as S3 ignores them -------------------------------------------------

JS_SDK_V3_PUT = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Content-Sha256=UNSIGNED-PAYLOAD"
    "&X-Amz-Credential=AK%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z"
    "&X-Amz-Expires=900&X-Amz-Signature=abc&X-Amz-SignedHeaders=host"
    "&x-amz-checksum-crc32=AAAAAA%3D%3D&x-amz-sdk-checksum-algorithm=CRC32&x-id=PutObject"
)


@pytest.mark.parametrize("name", sorted(IGNORED_PARAMS))
def test_every_ignored_parameter_leaves_the_operation_unchanged(name: str) -> None:
    for method, target, operation in (
        ("PUT", "/b/k", "PutObject"),
        ("GET", "/b/k", "GetObject"),
        ("GET", "/b?list-type=2", "ListObjectsV2"),
        ("DELETE", "/b/k", "DeleteObject"),
        ("POST", "/b/k?uploads", "CreateMultipartUpload"),
    ):
        joined = "&" if "?" in target else "?"
        for spelled in (name, name.upper()):
            assert route(method, f"{target}{joined}{spelled}=x").operation == operation
            assert route(method, f"{target}{joined}{spelled}").operation == operation


@pytest.mark.parametrize(
    "name", ["x-amz-checksum-crc32", "x-amz-checksum-crc64nvme", "x-amz-checksum-mode",
             "X-Amz-Checksum-Sha256"],
)  # fmt: skip
def test_checksum_parameters_are_ignored(name: str) -> None:
    assert route("PUT", f"/b/k?{name}=AAAAAA%3D%3D").operation == "PutObject"
    assert route("GET", f"/b/k?{name}=ENABLED").operation == "GetObject"


def test_what_the_javascript_sdk_v3_presigns() -> None:
    """Every presigned URL of the AWS SDK for JavaScript v3 was refused with 501."""
    assert route("PUT", f"/b/k?{JS_SDK_V3_PUT}").operation == "PutObject"
    get = JS_SDK_V3_PUT.replace("&x-amz-checksum-crc32=AAAAAA%3D%3D", "").replace(
        "x-id=PutObject", "x-id=GetObject"
    )
    assert route("GET", f"/b/k?{get}&response-content-type=text/plain").operation == "GetObject"
    part = JS_SDK_V3_PUT.replace("x-id=PutObject", "x-id=UploadPart")
    assert route("PUT", f"/b/k?partNumber=1&uploadId=u&{part}").operation == "UploadPart"


def test_minio_listing_with_metadata() -> None:
    target = "/b?list-type=2&metadata=true&prefix=a&delimiter=%2F&encoding-type=url"
    assert route("GET", target).operation == "ListObjectsV2"


# -- unknown parameters --------------------------------------------------------------------------


def test_an_unknown_parameter_with_a_value_on_a_read_is_ignored_as_s3_does() -> None:
    assert route("GET", "/b/k?_=1712345678").operation == "GetObject"
    assert route("HEAD", "/b/k?cachebust=1").operation == "HeadObject"
    assert route("GET", "/b?foo=bar").operation == "ListObjects"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_unknown_bare_parameter_on_a_read_is_refused(method: str) -> None:
    """``?newthing`` is how S3 spells a sub-resource: a listing is not its answer."""
    result = route(method, "/b?some-future-subresource")
    assert result.operation == NOT_IMPLEMENTED
    assert "some-future-subresource" in result.refusal


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
@pytest.mark.parametrize("query", ["newthing", "newthing=", "foo=bar"])
def test_an_unknown_parameter_on_a_write_is_refused(method: str, query: str) -> None:
    """It may be a sub-resource this list has not heard of: never an overwrite or a delete."""
    result = route(method, f"/b/k?{query}")
    assert result.operation == NOT_IMPLEMENTED
    assert query.partition("=")[0] in result.refusal


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "name",
    ["x-amz-meta-owner", "x-amz-acl", "x-amz-copy-source", "X-Amz-Tagging", "content-type",
     "Content-MD5"],
)  # fmt: skip
def test_request_headers_hoisted_into_the_query_are_refused(method: str, name: str) -> None:
    """S3 applies them; s3balance reads them only as headers, so it refuses instead of dropping."""
    result = route(method, f"/b/k?{name}=v")
    assert result.operation == NOT_IMPLEMENTED
    assert "header" in result.refusal


def test_judge_query_reports_the_honoured_parameters() -> None:
    verdict = judge_query(
        "GET", {"list-type": "2", "prefix": "a", "Delimiter": "/", "x-id": "ListObjectsV2"}
    )
    assert verdict.params == {"list-type", "prefix"}  # Delimiter: not S3's spelling, ignored
    assert verdict.refusal == ""


def test_one_parser_reads_a_bare_parameter_as_an_empty_value() -> None:
    """Routing and ``request.args`` read the same parameters: twisted.web's own parser dropped
    ``?uploads`` (no ``=``), which S3 reads as the sub-resource with an empty value."""
    raw = b"uploads&prefix=a%2Fb+c&prefix=second&empty=&=v&&x-id=Put%C3%A9"
    assert parse_query(raw) == {
        "uploads": "", "prefix": "a/b c", "empty": "", "": "v", "x-id": "Put\u00e9",
    }
    assert query_args(raw) == {
        b"uploads": [b""], b"prefix": [b"a/b c", b"second"], b"empty": [b""], b"": [b"v"],
        b"x-id": ["Put\u00e9".encode()],
    }
    with pytest.raises(ValueError):
        parse_query(b"prefix=%ff")


def test_every_listing_reads_encoding_type_the_same_way() -> None:
    """Object listings took an empty ``encoding-type`` for none and upload listings refused it:
    one reader now, and empty means none everywhere."""
    from s3balance import errors
    from s3balance.web.queryparams import url_encoded

    assert url_encoded(None) is False
    assert url_encoded("") is False
    assert url_encoded("URL") is True
    with pytest.raises(errors.S3Error) as raised:
        url_encoded("base64")
    assert raised.value.code == "InvalidArgument"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 7), ("", 7), ("0", 0), ("0010", 10), ("5000", 1000), ("2147483647", 1000)],
)
def test_count_param_defaults_caps_and_reads_decimal(value: str | None, expected: int) -> None:
    from s3balance.web.queryparams import count_param

    assert count_param(value, "max-parts", 7, cap=1000) == expected


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", "2147483648", " 1"])
def test_count_param_refuses_what_is_not_a_count(value: str) -> None:
    from s3balance import errors
    from s3balance.web.queryparams import count_param

    with pytest.raises(errors.S3Error) as raised:
        count_param(value, "part-number-marker", 0)
    assert raised.value.code == "InvalidArgument"
