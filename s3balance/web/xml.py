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


def sub_element(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, name)
    if text is not None:
        element.text = text
    return element


def serialise(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def root_element(name: str) -> ET.Element:
    return ET.Element(name, {"xmlns": NAMESPACE})


def owner_element(parent: ET.Element, owner: Owner, tag: str = "Owner") -> None:
    element = sub_element(parent, tag)
    sub_element(element, "ID", owner.id)
    sub_element(element, "DisplayName", owner.display_name)


def list_buckets(
    buckets: Iterable[BucketRecord],
    owner: Owner,
    *,
    continuation_token: str | None = None,
    prefix: str | None = None,
) -> bytes:
    """``ListAllMyBucketsResult``; ``continuation_token`` when the page was cut short,
    ``prefix`` echoed when the request gave one."""
    root = root_element("ListAllMyBucketsResult")
    owner_element(root, owner)
    container = sub_element(root, "Buckets")
    for bucket in buckets:
        element = sub_element(container, "Bucket")
        sub_element(element, "Name", bucket.name)
        sub_element(element, "CreationDate", iso8601(bucket.created_at))
    if continuation_token is not None:
        sub_element(root, "ContinuationToken", continuation_token)
    if prefix is not None:
        sub_element(root, "Prefix", prefix)
    return serialise(root)


def location_constraint(region: str) -> bytes:
    """us-east-1 is S3's empty constraint; any other region is named."""
    root = root_element("LocationConstraint")
    if region and region != "us-east-1":
        root.text = region
    return serialise(root)


def versioning_configuration() -> bytes:
    """Versioning was never enabled on a virtual bucket: S3 answers an empty document."""
    return serialise(root_element("VersioningConfiguration"))


def access_control_policy(owner: Owner) -> bytes:
    """The canned ``private`` ACL: the owner has FULL_CONTROL, nobody else anything."""
    root = root_element("AccessControlPolicy")
    owner_element(root, owner)
    grants = sub_element(root, "AccessControlList")
    grant = sub_element(grants, "Grant")
    grantee = ET.SubElement(
        grant, "Grantee", {"xmlns:xsi": _XSI, "xsi:type": "CanonicalUser"}
    )
    sub_element(grantee, "ID", owner.id)
    sub_element(grantee, "DisplayName", owner.display_name)
    sub_element(grant, "Permission", "FULL_CONTROL")
    return serialise(root)


def copy_object_result(etag: str, last_modified: float) -> bytes:
    root = root_element("CopyObjectResult")
    sub_element(root, "LastModified", iso8601(last_modified))
    sub_element(root, "ETag", etag)
    return serialise(root)


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
    sub_element(root, "Name", listing.bucket)
    sub_element(root, "Prefix", _maybe_encode(listing.prefix, listing))


def _listing_limits(root: ET.Element, listing: Listing) -> None:
    """``MaxKeys``, ``Delimiter``, ``EncodingType`` and ``IsTruncated``, in S3's order."""
    sub_element(root, "MaxKeys", str(listing.max_keys))
    if listing.delimiter:
        sub_element(root, "Delimiter", _maybe_encode(listing.delimiter, listing))
    if listing.url_encoded:
        sub_element(root, "EncodingType", "url")
    sub_element(root, "IsTruncated", "true" if listing.is_truncated else "false")


def list_objects(
    listing: Listing,
    objects: Iterable[ObjectRecord],
    common_prefixes: Iterable[str],
    owner: Owner,
    version: int,
) -> bytes:
    """A ListBucketResult of ListObjects (``version`` 1) or ListObjectsV2 (``version`` 2)."""
    root = root_element("ListBucketResult")
    _listing_header(root, listing)
    entries = list(objects)
    prefixes = list(common_prefixes)
    if version == 1:
        sub_element(root, "Marker", _maybe_encode(listing.marker or "", listing))
        if listing.next_marker is not None:
            sub_element(root, "NextMarker", _maybe_encode(listing.next_marker, listing))
    else:
        if listing.continuation_token is not None:
            sub_element(root, "ContinuationToken", listing.continuation_token)
        if listing.next_continuation_token is not None:
            sub_element(root, "NextContinuationToken", listing.next_continuation_token)
        if listing.start_after is not None:
            sub_element(root, "StartAfter", _maybe_encode(listing.start_after, listing))
        sub_element(root, "KeyCount", str(len(entries) + len(prefixes)))
    _listing_limits(root, listing)
    for record in entries:
        element = sub_element(root, "Contents")
        sub_element(element, "Key", _maybe_encode(record.key, listing))
        sub_element(element, "LastModified", iso8601(record.last_modified))
        sub_element(element, "ETag", record.etag)
        sub_element(element, "Size", str(record.size))
        if version == 1 or listing.fetch_owner:
            owner_element(element, owner)
        sub_element(element, "StorageClass", "STANDARD")
    for prefix in prefixes:
        element = sub_element(root, "CommonPrefixes")
        sub_element(element, "Prefix", _maybe_encode(prefix, listing))
    return serialise(root)


def list_object_versions(
    listing: Listing,
    objects: Iterable[ObjectRecord],
    common_prefixes: Iterable[str],
    owner: Owner,
    next_key_marker: str | None,
) -> bytes:
    """ListVersionsResult for an unversioned bucket: every object is its own ``null`` version."""
    root = root_element("ListVersionsResult")
    _listing_header(root, listing)
    sub_element(root, "KeyMarker", _maybe_encode(listing.marker or "", listing))
    sub_element(root, "VersionIdMarker", "")
    if next_key_marker is not None:
        sub_element(root, "NextKeyMarker", _maybe_encode(next_key_marker, listing))
        sub_element(root, "NextVersionIdMarker", "null")
    _listing_limits(root, listing)
    for record in objects:
        element = sub_element(root, "Version")
        sub_element(element, "Key", _maybe_encode(record.key, listing))
        sub_element(element, "VersionId", "null")
        sub_element(element, "IsLatest", "true")
        sub_element(element, "LastModified", iso8601(record.last_modified))
        sub_element(element, "ETag", record.etag)
        sub_element(element, "Size", str(record.size))
        owner_element(element, owner)
        sub_element(element, "StorageClass", "STANDARD")
    for prefix in common_prefixes:
        element = sub_element(root, "CommonPrefixes")
        sub_element(element, "Prefix", _maybe_encode(prefix, listing))
    return serialise(root)


@dataclass(frozen=True)
class DeleteOutcome:
    """One key of a DeleteObjects answer: deleted when ``error`` is ``None``."""

    key: str
    error: errors.S3Error | None = None


def delete_result(outcomes: Iterable[DeleteOutcome], quiet: bool) -> bytes:
    """DeleteResult; in quiet mode only the errors are listed, as S3."""
    root = root_element("DeleteResult")
    for outcome in outcomes:
        if outcome.error is None:
            if quiet:
                continue
            element = sub_element(root, "Deleted")
            sub_element(element, "Key", outcome.key)
        else:
            element = sub_element(root, "Error")
            sub_element(element, "Key", outcome.key)
            sub_element(element, "Code", outcome.error.code)
            sub_element(element, "Message", outcome.error.message)
    return serialise(root)


# -- request bodies ------------------------------------------------------------------------


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_document(body: bytes) -> ET.Element:
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
    root = parse_document(body)
    if local_name(root.tag) != "Delete":
        raise errors.MalformedXML()
    keys: list[str] = []
    etags: list[str | None] = []
    quiet = False
    for child in root:
        name = local_name(child.tag)
        if name == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif name == "Object":
            key = None
            etag = None
            for field_ in child:
                if local_name(field_.tag) == "Key":
                    key = field_.text or ""
                elif local_name(field_.tag) == "ETag":
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
    root = parse_document(body)
    if local_name(root.tag) != "CreateBucketConfiguration":
        raise errors.MalformedXML()
    for child in root:
        if local_name(child.tag) == "LocationConstraint":
            return (child.text or "").strip() or None
    return None


def is_private_acl(body: bytes, owner: Owner) -> bool:
    """Whether a PutAcl body grants exactly FULL_CONTROL to the owner and nothing else (the only
    policy s3balance can honour, since it is the one it has)."""
    root = parse_document(body)
    if local_name(root.tag) != "AccessControlPolicy":
        raise errors.MalformedXML()
    grants = [
        grant
        for element in root
        if local_name(element.tag) == "AccessControlList"
        for grant in element
        if local_name(grant.tag) == "Grant"
    ]
    if len(grants) != 1:
        return False
    permission = ""
    grantee_id = ""
    for part in grants[0]:
        if local_name(part.tag) == "Permission":
            permission = (part.text or "").strip()
        elif local_name(part.tag) == "Grantee":
            for field_ in part:
                if local_name(field_.tag) == "ID":
                    grantee_id = (field_.text or "").strip()
    return permission == "FULL_CONTROL" and grantee_id == owner.id
