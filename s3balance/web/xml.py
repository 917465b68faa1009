"""S3's XML documents: the answers s3balance writes and the request bodies it reads.

Element names and order follow S3's API reference, in S3's namespace, because SDK parsers look
elements up by name.  ``encoding-type=url`` percent-encodes the same fields S3 encodes (Key,
Prefix, Delimiter, Marker, NextMarker, StartAfter, CommonPrefixes): SDKs decode them with
``unquote_plus``, so ``+`` must be escaped too.
"""

from __future__ import annotations

import datetime
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from s3balance import errors
from s3balance.db.records import BucketRecord, ObjectRecord

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: At most this many keys per DeleteObjects request, as S3.
MAX_DELETE_KEYS = 1000
#: No request document is larger (see :mod:`s3balance.web.bodies` for each operation's cap).
MAX_REQUEST_XML = 4 << 20


@dataclass(frozen=True)
class Owner:
    id: str
    display_name: str


def iso8601(timestamp: float) -> str:
    """S3's XML time format, millisecond precision, UTC."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    millis = math.floor(moment.microsecond / 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def url_encode(value: str) -> str:
    """``encoding-type=url`` encoding of one field."""
    return quote(value, safe="/")


def _sub(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, name)
    if text is not None:
        element.text = text
    return element


def _serialise(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _root(name: str) -> ET.Element:
    return ET.Element(name, {"xmlns": NAMESPACE})


def _owner(parent: ET.Element, owner: Owner, tag: str = "Owner") -> None:
    element = _sub(parent, tag)
    _sub(element, "ID", owner.id)
    _sub(element, "DisplayName", owner.display_name)


def list_buckets(
    buckets: Iterable[BucketRecord],
    owner: Owner,
    *,
    continuation_token: str | None = None,
    prefix: str | None = None,
) -> bytes:
    """``ListAllMyBucketsResult``; ``continuation_token`` when the page was cut short,
    ``prefix`` echoed when the request gave one."""
    root = _root("ListAllMyBucketsResult")
    _owner(root, owner)
    container = _sub(root, "Buckets")
    for bucket in buckets:
        element = _sub(container, "Bucket")
        _sub(element, "Name", bucket.name)
        _sub(element, "CreationDate", iso8601(bucket.created_at))
    if continuation_token is not None:
        _sub(root, "ContinuationToken", continuation_token)
    if prefix is not None:
        _sub(root, "Prefix", prefix)
    return _serialise(root)


def location_constraint(region: str) -> bytes:
    """us-east-1 is S3's empty constraint; any other region is named."""
    root = _root("LocationConstraint")
    if region and region != "us-east-1":
        root.text = region
    return _serialise(root)


def versioning_configuration() -> bytes:
    """Versioning was never enabled on a virtual bucket: S3 answers an empty document."""
    return _serialise(_root("VersioningConfiguration"))


def access_control_policy(owner: Owner) -> bytes:
    """The canned ``private`` ACL: the owner has FULL_CONTROL, nobody else anything."""
    root = _root("AccessControlPolicy")
    _owner(root, owner)
    grants = _sub(root, "AccessControlList")
    grant = _sub(grants, "Grant")
    grantee = ET.SubElement(
        grant, "Grantee", {"xmlns:xsi": _XSI, "xsi:type": "CanonicalUser"}
    )
    _sub(grantee, "ID", owner.id)
    _sub(grantee, "DisplayName", owner.display_name)
    _sub(grant, "Permission", "FULL_CONTROL")
    return _serialise(root)


def copy_object_result(etag: str, last_modified: float) -> bytes:
    root = _root("CopyObjectResult")
    _sub(root, "LastModified", iso8601(last_modified))
    _sub(root, "ETag", etag)
    return _serialise(root)


@dataclass(frozen=True)
class Listing:
    """What a ListObjects (v1 or v2) answer says besides its entries.

    Fields that are ``None`` are left out of the document.
    """

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    is_truncated: bool
    url_encoded: bool
    marker: str | None = None
    next_marker: str | None = None
    continuation_token: str | None = None
    next_continuation_token: str | None = None
    start_after: str | None = None
    fetch_owner: bool = False


def _maybe_encode(value: str, listing: Listing) -> str:
    return url_encode(value) if listing.url_encoded else value


def _listing_header(root: ET.Element, listing: Listing) -> None:
    _sub(root, "Name", listing.bucket)
    _sub(root, "Prefix", _maybe_encode(listing.prefix, listing))


def list_objects(
    listing: Listing,
    objects: Iterable[ObjectRecord],
    common_prefixes: Iterable[str],
    owner: Owner,
    version: int,
) -> bytes:
    """A ListBucketResult of ListObjects (``version`` 1) or ListObjectsV2 (``version`` 2)."""
    root = _root("ListBucketResult")
    _listing_header(root, listing)
    entries = list(objects)
    prefixes = list(common_prefixes)
    if version == 1:
        _sub(root, "Marker", _maybe_encode(listing.marker or "", listing))
        if listing.next_marker is not None:
            _sub(root, "NextMarker", _maybe_encode(listing.next_marker, listing))
    else:
        if listing.continuation_token is not None:
            _sub(root, "ContinuationToken", listing.continuation_token)
        if listing.next_continuation_token is not None:
            _sub(root, "NextContinuationToken", listing.next_continuation_token)
        if listing.start_after is not None:
            _sub(root, "StartAfter", _maybe_encode(listing.start_after, listing))
        _sub(root, "KeyCount", str(len(entries) + len(prefixes)))
    _sub(root, "MaxKeys", str(listing.max_keys))
    if listing.delimiter:
        _sub(root, "Delimiter", _maybe_encode(listing.delimiter, listing))
    if listing.url_encoded:
        _sub(root, "EncodingType", "url")
    _sub(root, "IsTruncated", "true" if listing.is_truncated else "false")
    for record in entries:
        element = _sub(root, "Contents")
        _sub(element, "Key", _maybe_encode(record.key, listing))
        _sub(element, "LastModified", iso8601(record.last_modified))
        _sub(element, "ETag", record.etag)
        _sub(element, "Size", str(record.size))
        if version == 1 or listing.fetch_owner:
            _owner(element, owner)
        _sub(element, "StorageClass", "STANDARD")
    for prefix in prefixes:
        element = _sub(root, "CommonPrefixes")
        _sub(element, "Prefix", _maybe_encode(prefix, listing))
    return _serialise(root)


def list_object_versions(
    listing: Listing,
    objects: Iterable[ObjectRecord],
    common_prefixes: Iterable[str],
    owner: Owner,
    next_key_marker: str | None,
) -> bytes:
    """ListVersionsResult for an unversioned bucket: every object is its own ``null`` version."""
    root = _root("ListVersionsResult")
    _listing_header(root, listing)
    _sub(root, "KeyMarker", _maybe_encode(listing.marker or "", listing))
    _sub(root, "VersionIdMarker", "")
    if next_key_marker is not None:
        _sub(root, "NextKeyMarker", _maybe_encode(next_key_marker, listing))
        _sub(root, "NextVersionIdMarker", "null")
    _sub(root, "MaxKeys", str(listing.max_keys))
    if listing.delimiter:
        _sub(root, "Delimiter", _maybe_encode(listing.delimiter, listing))
    if listing.url_encoded:
        _sub(root, "EncodingType", "url")
    _sub(root, "IsTruncated", "true" if listing.is_truncated else "false")
    for record in objects:
        element = _sub(root, "Version")
        _sub(element, "Key", _maybe_encode(record.key, listing))
        _sub(element, "VersionId", "null")
        _sub(element, "IsLatest", "true")
        _sub(element, "LastModified", iso8601(record.last_modified))
        _sub(element, "ETag", record.etag)
        _sub(element, "Size", str(record.size))
        _owner(element, owner)
        _sub(element, "StorageClass", "STANDARD")
    for prefix in common_prefixes:
        element = _sub(root, "CommonPrefixes")
        _sub(element, "Prefix", _maybe_encode(prefix, listing))
    return _serialise(root)


@dataclass(frozen=True)
class DeleteOutcome:
    """One key of a DeleteObjects answer: deleted when ``error`` is ``None``."""

    key: str
    error: errors.S3Error | None = None


def delete_result(outcomes: Iterable[DeleteOutcome], quiet: bool) -> bytes:
    """DeleteResult; in quiet mode only the errors are listed, as S3."""
    root = _root("DeleteResult")
    for outcome in outcomes:
        if outcome.error is None:
            if quiet:
                continue
            element = _sub(root, "Deleted")
            _sub(element, "Key", outcome.key)
        else:
            element = _sub(root, "Error")
            _sub(element, "Key", outcome.key)
            _sub(element, "Code", outcome.error.code)
            _sub(element, "Message", outcome.error.message)
    return _serialise(root)


# -- request bodies ------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(body: bytes) -> ET.Element:
    """Parse a request body with defusedxml: no DTD at all (so no entity expansion), whatever
    the document's encoding (a byte search for ``<!DOCTYPE`` misses UTF-16)."""
    if len(body) > MAX_REQUEST_XML:
        raise errors.MalformedXML()
    try:
        root: ET.Element = defused_fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as error:
        raise errors.MalformedXML() from error
    return root


@dataclass(frozen=True)
class DeleteRequest:
    keys: list[str]
    quiet: bool
    #: The ``<ETag>`` of each entry (None when absent), in the order of ``keys``.
    etags: list[str | None] = field(default_factory=list)


def parse_delete(body: bytes) -> DeleteRequest:
    """Read a DeleteObjects body.

    :raises S3Error: MalformedXML when it is not a ``Delete`` document, names no key or more than
        :data:`MAX_DELETE_KEYS`.
    """
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise errors.MalformedXML()
    keys: list[str] = []
    etags: list[str | None] = []
    quiet = False
    for child in root:
        name = _local(child.tag)
        if name == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif name == "Object":
            key = None
            etag = None
            for field_ in child:
                if _local(field_.tag) == "Key":
                    key = field_.text or ""
                elif _local(field_.tag) == "ETag":
                    etag = (field_.text or "").strip()
            if not key:
                raise errors.MalformedXML()
            keys.append(key)
            etags.append(etag)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise errors.MalformedXML()
    return DeleteRequest(keys, quiet, etags)


def parse_location_constraint(body: bytes) -> str | None:
    """The region a CreateBucket body asks for (``None`` for an empty body or no constraint)."""
    if not body.strip():
        return None
    root = _parse(body)
    if _local(root.tag) != "CreateBucketConfiguration":
        raise errors.MalformedXML()
    for child in root:
        if _local(child.tag) == "LocationConstraint":
            return (child.text or "").strip() or None
    return None


def is_private_acl(body: bytes, owner: Owner) -> bool:
    """Whether a PutAcl body grants exactly FULL_CONTROL to the owner and nothing else (the only
    policy s3balance can honour, since it is the one it has)."""
    root = _parse(body)
    if _local(root.tag) != "AccessControlPolicy":
        raise errors.MalformedXML()
    grants = [
        grant
        for element in root
        if _local(element.tag) == "AccessControlList"
        for grant in element
        if _local(grant.tag) == "Grant"
    ]
    if len(grants) != 1:
        return False
    permission = ""
    grantee_id = ""
    for part in grants[0]:
        if _local(part.tag) == "Permission":
            permission = (part.text or "").strip()
        elif _local(part.tag) == "Grantee":
            for field_ in part:
                if _local(field_.tag) == "ID":
                    grantee_id = (field_.text or "").strip()
    return permission == "FULL_CONTROL" and grantee_id == owner.id
