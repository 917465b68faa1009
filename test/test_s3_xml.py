"""S3's XML documents, parsed back with ElementTree and checked against S3's element names."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import unquote_plus

import pytest

from s3balance import errors
from s3balance.db.records import BucketRecord, ObjectRecord
from s3balance.web import xml
from s3balance.web.buckets import decode_token, encode_token, parse_max_keys

pytestmark = pytest.mark.timeout(30)

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
OWNER = xml.Owner("abc123", "s3balance")


def parse(document: bytes) -> ET.Element:
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(document)


def _ns(path: str) -> str:
    return "/".join(NS + part for part in path.split("/"))


def record(key: str, size: int = 3) -> ObjectRecord:
    return ObjectRecord("vb", key, size, '"etag"', 1_700_000_000.123)


def test_list_buckets():
    root = parse(xml.list_buckets([BucketRecord("a", 1_700_000_000.5)], OWNER))
    assert root.tag == NS + "ListAllMyBucketsResult"
    assert root.findtext(_ns("Owner/ID")) == "abc123"
    assert root.findtext(_ns("Buckets/Bucket/Name")) == "a"
    assert root.findtext(_ns("Buckets/Bucket/CreationDate")) == "2023-11-14T22:13:20.500Z"


def test_location_constraint_is_empty_for_us_east_1():
    assert parse(xml.location_constraint("us-east-1")).text is None
    assert parse(xml.location_constraint("eu-west-1")).text == "eu-west-1"


def test_list_objects_v2_document():
    listing = xml.Listing(
        bucket="vb",
        prefix="a b/",
        delimiter="/",
        max_keys=2,
        is_truncated=True,
        url_encoded=True,
        continuation_token="tok",
        next_continuation_token="next",
        start_after="a b/0",
    )
    root = parse(xml.list_objects(listing, [record("a b/1+")], ["a b/c d/"], OWNER, 2))
    assert root.tag == NS + "ListBucketResult"
    assert root.findtext(NS + "Prefix") == "a%20b/"
    assert root.findtext(NS + "StartAfter") == "a%20b/0"
    assert root.findtext(NS + "KeyCount") == "2"
    assert root.findtext(NS + "IsTruncated") == "true"
    assert root.findtext(NS + "NextContinuationToken") == "next"
    assert root.findtext(NS + "EncodingType") == "url"
    key = root.findtext(_ns("Contents/Key"))
    assert key is not None and unquote_plus(key) == "a b/1+"
    assert root.find(_ns("Contents/Owner")) is None
    assert root.findtext(_ns("Contents/StorageClass")) == "STANDARD"
    assert root.findtext(_ns("Contents/LastModified")) == "2023-11-14T22:13:20.123Z"
    assert root.findtext(_ns("CommonPrefixes/Prefix")) == "a%20b/c%20d/"
    assert root.find(NS + "Marker") is None


def test_list_objects_v1_document():
    listing = xml.Listing(
        bucket="vb",
        prefix="",
        delimiter="",
        max_keys=1000,
        is_truncated=False,
        url_encoded=False,
        marker="m",
    )
    root = parse(xml.list_objects(listing, [record("<&>")], [], OWNER, 1))
    assert root.findtext(NS + "Marker") == "m"
    assert root.find(NS + "NextMarker") is None
    assert root.find(NS + "KeyCount") is None
    assert root.findtext(_ns("Contents/Key")) == "<&>"
    assert root.findtext(_ns("Contents/Owner/ID")) == "abc123"


def test_versions_document():
    listing = xml.Listing(
        bucket="vb", prefix="", delimiter="", max_keys=1, is_truncated=True, url_encoded=False
    )
    root = parse(xml.list_object_versions(listing, [record("k")], [], OWNER, "k"))
    assert root.tag == NS + "ListVersionsResult"
    assert root.findtext(_ns("Version/VersionId")) == "null"
    assert root.findtext(_ns("Version/IsLatest")) == "true"
    assert root.findtext(NS + "NextKeyMarker") == "k"


def test_copy_and_delete_results():
    root = parse(xml.copy_object_result('"e"', 0.0))
    assert root.findtext(NS + "ETag") == '"e"'
    assert root.findtext(NS + "LastModified") == "1970-01-01T00:00:00.000Z"
    outcomes = [xml.DeleteOutcome("a"), xml.DeleteOutcome("b", errors.AccessDenied())]
    loud = parse(xml.delete_result(outcomes, quiet=False))
    assert [e.text for e in loud.findall(_ns("Deleted/Key"))] == ["a"]
    assert loud.findtext(_ns("Error/Code")) == "AccessDenied"
    quiet = parse(xml.delete_result(outcomes, quiet=True))
    assert quiet.find(NS + "Deleted") is None
    assert quiet.findtext(_ns("Error/Key")) == "b"


def test_parse_delete_request():
    body = (
        b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>'
        b"<Object><Key>a</Key></Object><Object><Key>b/c</Key><VersionId>null</VersionId>"
        b"</Object></Delete>"
    )
    parsed = xml.parse_delete(body)
    assert parsed.keys == ["a", "b/c"] and parsed.quiet
    assert xml.parse_delete(b"<Delete><Object><Key>x</Key></Object></Delete>").keys == ["x"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<Other/>",
        b"<Delete></Delete>",
        b"<Delete><Object></Object></Delete>",
        b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
        b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Delete><Object><Key>&a;</Key></Object></Delete>',
    ],
)
def test_malformed_delete_requests(body: bytes):
    with pytest.raises(errors.S3Error) as raised:
        xml.parse_delete(body)
    assert raised.value.code == "MalformedXML"


def test_create_bucket_configuration():
    assert xml.parse_location_constraint(b"") is None
    body = (
        b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
    )
    assert xml.parse_location_constraint(body) == "eu-west-1"


def test_continuation_tokens_round_trip_and_reject_garbage():
    for key in ["", "a", "日本/語 +?", "x" * 1024]:
        assert decode_token(encode_token(key)) == key
    for bad in ["!!!", "a", "____"]:
        with pytest.raises(errors.S3Error):
            decode_token(bad)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 1000), ("", 1000), ("0", 0), ("7", 7), ("5000", 1000)]
)
def test_max_keys(value: str | None, expected: int):
    assert parse_max_keys(value) == expected


@pytest.mark.parametrize("value", ["-1", "ten", "1.5"])
def test_bad_max_keys(value: str):
    with pytest.raises(errors.S3Error) as raised:
        parse_max_keys(value)
    assert raised.value.code == "InvalidArgument"
