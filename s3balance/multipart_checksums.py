"""The checksum of a multipart object, computed at CompleteMultipartUpload as S3 does.

An upload declares an algorithm and a type at creation (``x-amz-checksum-algorithm``,
``x-amz-checksum-type``), or none, in which case its object gets no checksum (its parts still
keep and check those their requests carried).  Every part of an upload with an algorithm stores
its checksum in that algorithm (computed as it streamed, whether or not the client sent it), so
completion never reads the parts again:

- COMPOSITE: ``base64(checksum(binary part checksums concatenated))-N``;
- FULL_OBJECT: the CRC of the whole object, combined from the parts' CRCs and sizes.

The completion request may repeat each part's checksum in its document (S3 requires them for a
COMPOSITE upload with a declared algorithm) and the object's expected checksum in a header; both
are checked before the backend assembles anything, so a mismatch creates no object.

A part made by UploadPartCopy has no checksum (its bytes never pass through s3balance): an object
with such a part gets no checksum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from s3balance import errors
from s3balance.auth import checksums
from s3balance.auth.checksums import COMPOSITE, ChecksumAlgorithm
from s3balance.db.records import PartRecord, UploadRecord


@dataclass(frozen=True)
class CompletionChecksums:
    """What a CompleteMultipartUpload request says about checksums.

    :ivar parts: per part number, the ``x-amz-checksum-<algo>`` values of its document entry.
    :ivar expected: the object's checksum from an ``x-amz-checksum-<algo>`` header, if any.
    :ivar checksum_type: its ``x-amz-checksum-type`` header, if any.
    """

    parts: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    expected: tuple[ChecksumAlgorithm, str] | None = None
    checksum_type: str | None = None


def upload_algorithm(upload: UploadRecord) -> tuple[ChecksumAlgorithm | None, str | None]:
    """The algorithm and type an upload's object checksum is computed with (None: none)."""
    declared = checksums.by_name(upload.checksum_algorithm or "")
    if declared is None:
        return None, None
    return declared, upload.checksum_type or declared.default_multipart_type


def _check_part_entries(
    upload: UploadRecord, part: PartRecord, given: Mapping[str, str], required: str | None
) -> None:
    for header, value in given.items():
        algorithm = checksums.by_header(header)
        stored = part.checksums.get(header)
        if algorithm is None or stored is None or algorithm.decode(value) != algorithm.decode(
            stored
        ):
            raise errors.InvalidPart(
                UploadId=upload.upload_id, PartNumber=str(part.part_number), ETag=part.etag
            )
    if required is not None and required not in given:
        algorithm = checksums.by_header(required)
        assert algorithm is not None
        raise errors.InvalidRequest(
            f"The upload was created using a {algorithm.name.lower()} checksum. The complete "
            "request must include the checksum for each part. It was missing for part "
            f"{part.part_number} in the request."
        )


def completion_checksums(
    upload: UploadRecord, chosen: Sequence[PartRecord], request: CompletionChecksums
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The object's ``x-amz-checksum-*`` values (with ``x-amz-checksum-type``) and its parts'
    checksums, after checking what the request says.

    :returns: empty results when a part has no checksum in the upload's algorithm.
    :raises S3Error: InvalidPart (a part's checksum differs from the stored one), InvalidRequest
        (another checksum mode or algorithm than the upload's, a COMPOSITE part entry without its
        checksum), BadDigest (the object's expected checksum differs).
    """
    algorithm, checksum_type = upload_algorithm(upload)
    if request.checksum_type is not None and request.checksum_type != checksum_type:
        raise errors.InvalidRequest(
            f"The upload was created using the {checksum_type or 'null'} checksum mode. The "
            "complete request must use the same checksum mode."
        )
    if request.expected is not None and request.expected[0] is not algorithm:
        expected_name = algorithm.name.lower() if algorithm is not None else "null"
        raise errors.InvalidRequest(
            f"Checksum Type mismatch occurred, expected checksum Type: {expected_name}, "
            f"actual checksum Type: {request.expected[0].name.lower()}"
        )
    composite_header = (
        algorithm.header if algorithm is not None and checksum_type == COMPOSITE else None
    )
    digests: list[bytes] = []
    for part in chosen:
        # A copied part has no checksum the client could repeat: it is not required then.
        required = composite_header if composite_header in part.checksums else None
        _check_part_entries(upload, part, request.parts.get(part.part_number, {}), required)
        stored = part.checksums.get(algorithm.header) if algorithm is not None else None
        digest = algorithm.decode(stored) if algorithm and stored is not None else None
        if digest is not None:
            digests.append(digest)
    if algorithm is None or checksum_type is None or len(digests) != len(chosen):
        return {}, ()
    if checksum_type == COMPOSITE:
        value = checksums.composite(algorithm, digests)
    else:
        value = checksums.combine_full_object(
            algorithm, zip(digests, (part.size for part in chosen), strict=True)
        )
    if request.expected is not None:
        given = request.expected[1].strip()
        if given.partition("-")[0] != value.partition("-")[0]:
            raise errors.BadDigest(
                f"The {algorithm.name} you specified did not match the calculated checksum."
            )
    stored_values = {algorithm.header: value, checksums.TYPE_HEADER: checksum_type}
    return stored_values, tuple(checksums.encode(d) for d in digests)


__all__ = [
    "CompletionChecksums",
    "completion_checksums",
    "upload_algorithm",
]
