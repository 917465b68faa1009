"""GetObjectAttributes (``GET /bucket/key?attributes``): what S3 knows about an object, from
metadata only (no backend is asked).

``x-amz-object-attributes`` names the attributes wanted (comma-separated): ``ETag``,
``Checksum``, ``ObjectParts``, ``StorageClass``, ``ObjectSize``.  ``ObjectParts`` pages the parts
of a multipart object with ``x-amz-max-parts`` and ``x-amz-part-number-marker``, each part with
its size and, for a COMPOSITE checksum, the part's checksum.  As on S3, a COMPOSITE checksum
is shown without the ``-N`` that GetObject and CompleteMultipartUpload append.  An object not made
by multipart upload has no ``ObjectParts``; an object without a checksum has no ``Checksum``.
"""

from __future__ import annotations

from typing import Any

from s3balance import conditions, errors
from s3balance.auth import checksums
from s3balance.db.records import ObjectRecord
from s3balance.etags import unquoted_etag
from s3balance.web.answer import Answer, RequestContext
from s3balance.web.objects import version_id_must_be_null
from s3balance.web.queryparams import count_param
from s3balance.web.xml import root_element, serialise, sub_element

#: Attribute names as S3 spells them, in its response order.
ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
#: Most parts one answer lists (S3's own limit).
MAX_PARTS = 1000


def requested_attributes(ctx: RequestContext) -> set[str]:
    """The attributes ``x-amz-object-attributes`` names (any case, repeated headers joined).

    :raises S3Error: InvalidArgument when the header is missing, empty or names another one.
    """
    values = ctx.request.requestHeaders.getRawHeaders(b"x-amz-object-attributes") or []
    names = [
        name.strip()
        for value in values
        for name in value.decode("latin-1").split(",")
        if name.strip()
    ]
    if not names:
        raise errors.InvalidArgument(
            "The x-amz-object-attributes header specifying the attributes to be retrieved is "
            "either missing or empty",
            ArgumentName="x-amz-object-attributes",
        )
    by_lower = {name.lower(): name for name in ATTRIBUTES}
    wanted: set[str] = set()
    for name in names:
        known = by_lower.get(name.lower())
        if known is None:
            raise errors.InvalidArgument(
                "Invalid attribute name specified.",
                ArgumentName="x-amz-object-attributes",
                ArgumentValue=name,
            )
        wanted.add(known)
    return wanted


def _count_header(ctx: RequestContext, name: str, default: int) -> int:
    """``x-amz-max-parts`` and ``x-amz-part-number-marker``, read as the listing parameters are
    (:func:`~s3balance.web.queryparams.count_param`), spaces around the value aside."""
    raw = ctx.header(name)
    return count_param(None if raw is None else raw.strip(), name, default)


def _checksum(parent: Any, record: ObjectRecord) -> None:
    present = [
        (algorithm, record.checksums[algorithm.header])
        for algorithm in checksums.ALGORITHMS.values()
        if algorithm.header in record.checksums
    ]
    if not present:
        return
    element = sub_element(parent, "Checksum")
    checksum_type = record.checksums.get(checksums.TYPE_HEADER)
    for algorithm, value in present:
        if checksum_type == checksums.COMPOSITE:
            value = value.partition("-")[0]
        sub_element(element, algorithm.xml_element, value)
    if checksum_type is not None:
        sub_element(element, "ChecksumType", checksum_type)


def _object_parts(parent: Any, record: ObjectRecord, marker: int, max_parts: int) -> None:
    if not record.part_sizes:
        return
    count = len(record.part_sizes)
    max_parts = min(max_parts, MAX_PARTS)
    numbers = list(range(marker + 1, min(count, marker + max_parts) + 1)) if marker >= 0 else []
    algorithm = next(
        (a for a in checksums.ALGORITHMS.values() if a.header in record.checksums), None
    )
    element = sub_element(parent, "ObjectParts")
    sub_element(element, "PartsCount", str(count))
    sub_element(element, "PartNumberMarker", str(marker))
    sub_element(element, "NextPartNumberMarker", str(numbers[-1] if numbers else marker))
    sub_element(element, "MaxParts", str(max_parts))
    sub_element(element, "IsTruncated", "true" if numbers and numbers[-1] < count else "false")
    with_checksums = (
        algorithm is not None
        and record.checksums.get(checksums.TYPE_HEADER) == checksums.COMPOSITE
        and len(record.part_checksums) == count
    )
    for number in numbers:
        part = sub_element(element, "Part")
        sub_element(part, "PartNumber", str(number))
        sub_element(part, "Size", str(record.part_sizes[number - 1]))
        if with_checksums and algorithm is not None:
            sub_element(part, algorithm.xml_element, record.part_checksums[number - 1])


def attributes_result(
    record: ObjectRecord, wanted: set[str], part_marker: int, max_parts: int
) -> bytes:
    root = root_element("GetObjectAttributesResponse")
    if "ETag" in wanted:
        sub_element(root, "ETag", unquoted_etag(record.etag))
    if "Checksum" in wanted:
        _checksum(root, record)
    if "ObjectParts" in wanted:
        _object_parts(root, record, part_marker, max_parts)
    if "StorageClass" in wanted:
        sub_element(root, "StorageClass", "STANDARD")
    if "ObjectSize" in wanted:
        sub_element(root, "ObjectSize", str(record.size))
    return serialise(root)


async def handle_GetObjectAttributes(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    wanted = requested_attributes(ctx)
    max_parts = _count_header(ctx, "x-amz-max-parts", MAX_PARTS)
    marker = _count_header(ctx, "x-amz-part-number-marker", 0)
    record = await ctx.gateway.get_object_record(ctx.bucket, ctx.key)
    document = attributes_result(record, wanted, marker, max_parts)
    headers = [
        ("Content-Type", "application/xml"),
        ("Last-Modified", conditions.http_date(record.last_modified)),
    ]
    return Answer(200, headers, document)
