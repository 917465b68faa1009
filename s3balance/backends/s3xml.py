"""Reading and writing the small XML documents S3 exchanges (errors, multipart, listings).

Element names are compared without their namespace: AWS answers in
``http://s3.amazonaws.com/doc/2006-03-01/``, some compatible servers in none at all.
"""

from __future__ import annotations

import calendar
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from s3balance.backends.interface import ListedObject, PartResult
from s3balance.etags import quoted_etag


class MalformedResponse(ValueError):
    """The backend's XML could not be parsed or lacked an element it must have."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(body: bytes) -> ET.Element:
    """Parse a backend's answer with defusedxml (no DTD, no entities): a backend, or whatever
    answers at its address, must not be able to make the daemon expand entities."""
    try:
        root: ET.Element = defused_fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as e:
        raise MalformedResponse(f"unparsable XML from backend: {e}") from e
    return root


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str, default: str | None = None) -> str:
    child = _child(element, name)
    if child is None:
        if default is None:
            raise MalformedResponse(f"<{_local(element.tag)}> has no <{name}>")
        return default
    return child.text or ""


def parse_iso8601(value: str) -> float:
    """Seconds since the epoch from S3's listing timestamps (``2024-01-02T03:04:05.000Z``)."""
    value = value.strip()
    main, _, fraction = value.rstrip("Z").partition(".")
    try:
        seconds = float(calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")))
    except ValueError as e:
        raise MalformedResponse(f"bad timestamp {value!r}") from e
    digits = "".join(c for c in fraction if c.isdigit())
    return seconds + (float(f"0.{digits}") if digits else 0.0)


@dataclass(frozen=True)
class ErrorDocument:
    """S3's ``<Error>``: code and message (``None`` when the body was not an error document)."""

    code: str
    message: str


def parse_error(body: bytes) -> ErrorDocument | None:
    """The ``<Error>`` in ``body``, or ``None`` when ``body`` is empty or something else."""
    if not body.strip():
        return None
    try:
        root = _parse(body)
    except MalformedResponse:
        return None
    if _local(root.tag) != "Error":
        return None
    return ErrorDocument(_text(root, "Code", ""), _text(root, "Message", ""))


def parse_initiate(body: bytes) -> str:
    """The ``UploadId`` of an ``<InitiateMultipartUploadResult>``."""
    root = _parse(body)
    upload_id = _text(root, "UploadId")
    if not upload_id:
        raise MalformedResponse("empty UploadId")
    return upload_id


def parse_etag_result(body: bytes) -> str:
    """The ``ETag`` of ``<CopyObjectResult>``, ``<CopyPartResult>`` or
    ``<CompleteMultipartUploadResult>``, quoted.

    These answers may be a 200 whose body is an ``<Error>`` (S3 starts the response before
    the work is done): callers check :func:`parse_error` first.
    """
    return quoted_etag(_text(_parse(body), "ETag"))


def build_complete_body(parts: list[tuple[int, str]]) -> bytes:
    """``<CompleteMultipartUpload>`` for ``(part_number, quoted etag)`` pairs."""
    items = "".join(
        f"<Part><PartNumber>{number}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
        for number, etag in parts
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"{items}</CompleteMultipartUpload>"
    ).encode()


@dataclass
class PartsPage:
    parts: list[PartResult] = field(default_factory=list)
    truncated: bool = False
    next_marker: str = ""


def parse_list_parts(body: bytes) -> PartsPage:
    """A ``ListParts`` page.

    A part number uploaded again replaces the earlier part, but some servers (SeaweedFS 4.x)
    list both: only the most recent entry per part number is kept.
    """
    root = _parse(body)
    page = PartsPage(
        truncated=_text(root, "IsTruncated", "false").strip().lower() == "true",
        next_marker=_text(root, "NextPartNumberMarker", "").strip(),
    )
    latest: dict[int, tuple[float, PartResult]] = {}
    for part in _children(root, "Part"):
        number = int(_text(part, "PartNumber"))
        modified_text = _text(part, "LastModified", "")
        modified = parse_iso8601(modified_text) if modified_text else 0.0
        result = PartResult(
            part_number=number,
            etag=quoted_etag(_text(part, "ETag")),
            size=int(_text(part, "Size")),
        )
        if number not in latest or modified >= latest[number][0]:
            latest[number] = (modified, result)
    page.parts = [latest[number][1] for number in sorted(latest)]
    return page


@dataclass
class ObjectsPage:
    objects: list[ListedObject] = field(default_factory=list)
    truncated: bool = False
    continuation_token: str = ""


def parse_list_objects_v2(body: bytes) -> ObjectsPage:
    """A ``ListObjectsV2`` page; keys are decoded when the server applied ``encoding-type=url``.

    S3 url-encodes keys as HTML forms do (space as ``+``, a literal ``+`` as ``%2B``).
    """
    root = _parse(body)
    encoded = _text(root, "EncodingType", "").strip().lower() == "url"
    page = ObjectsPage(
        truncated=_text(root, "IsTruncated", "false").strip().lower() == "true",
        continuation_token=_text(root, "NextContinuationToken", ""),
    )
    for item in _children(root, "Contents"):
        key = _text(item, "Key")
        page.objects.append(
            ListedObject(
                key=unquote_plus(key) if encoded else key,
                size=int(_text(item, "Size")),
                etag=quoted_etag(_text(item, "ETag", "")),
                last_modified=parse_iso8601(_text(item, "LastModified")),
            )
        )
    return page
