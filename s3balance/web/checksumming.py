"""Which ``x-amz-checksum-*`` an upload carries, and what S3 answers about stored checksums.

A PutObject, UploadPart or DeleteObjects names at most one checksum: as a header
(``x-amz-checksum-crc32: <base64>``) or, in an aws-chunked body, as the trailer named by
``x-amz-trailer`` (whose value the aws-chunked decoder verifies when it arrives); SDKs also send
``x-amz-sdk-checksum-algorithm``, which must name the same algorithm.  A header's value is
checked as the body streams past (:class:`~s3balance.web.filters.ChecksumFilter`, after the
aws-chunked decoder, so over the decoded bytes); a trailer's is taken from the decoder, which
computed and verified it already.  Either is stored with the object.
"""

from __future__ import annotations

from collections.abc import Mapping

from s3balance import errors
from s3balance.auth import checksums
from s3balance.auth.checksums import ChecksumAlgorithm
from s3balance.auth.chunked import AwsChunkedDecoder
from s3balance.db.records import ObjectRecord
from s3balance.multipart_checksums import CompletionChecksums
from s3balance.web.answer import RequestContext
from s3balance.web.filters import ChecksumFilter


def _trailer_algorithm(ctx: RequestContext) -> ChecksumAlgorithm | None:
    """The algorithm of the checksum trailer of an aws-chunked body, if it has one."""
    payload = (ctx.header("x-amz-content-sha256") or "").strip().upper()
    trailer = ctx.header("x-amz-trailer")
    if not payload.endswith("-TRAILER") or trailer is None:
        return None
    return checksums.by_header(trailer)  # the decoder refused any other name already


def _checksum_header(ctx: RequestContext) -> tuple[ChecksumAlgorithm, str] | None:
    """The one ``x-amz-checksum-<algorithm>`` header of a request and its value, if any.

    :raises S3Error: InvalidRequest for two of them.
    """
    given: list[tuple[ChecksumAlgorithm, str]] = []
    for algorithm in checksums.ALGORITHMS.values():
        value = ctx.header(algorithm.header)
        if value is not None:
            given.append((algorithm, value))
    if len(given) > 1:
        raise errors.InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    return given[0] if given else None


def request_checksum(ctx: RequestContext) -> ChecksumFilter | None:
    """The checksum filter for an upload's body (see the module docstring), None when the
    request names no checksum.

    :raises S3Error: InvalidRequest for two checksum headers, a malformed value, or an
        ``x-amz-sdk-checksum-algorithm`` naming another (or no sent) checksum.
    """
    given = _checksum_header(ctx)
    trailer = _trailer_algorithm(ctx)
    chosen = given[0] if given is not None else trailer
    sdk = ctx.header("x-amz-sdk-checksum-algorithm")
    if sdk is not None:
        named = checksums.by_name(sdk)
        if named is None or (chosen is not None and named is not chosen):
            raise errors.InvalidRequest(
                "Value for x-amz-sdk-checksum-algorithm header is invalid."
            )
        if chosen is None:
            raise errors.InvalidRequest(
                "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* "
                "or x-amz-trailer headers were found."
            )
    if given is not None:
        algorithm, value = given
        return ChecksumFilter(algorithm.name, value)
    if trailer is not None:
        decoder = getattr(ctx.request, "payload_filter", None)
        if isinstance(decoder, AwsChunkedDecoder) and decoder.trailer_algorithm is trailer:
            return ChecksumFilter(trailer.name, None, verified=decoder.verified_trailer)
        return ChecksumFilter(trailer.name, None, trailing=True)
    return None


def stored_values(checksum: ChecksumFilter | None, checksum_type: str) -> dict[str, str]:
    """What an object (or part) keeps of a finished checksum filter: its value and type.

    Asked before the body ended (for the backend metadata a rebuild reads), the value the client
    declared in a header: the body is stored only if it matches.
    """
    value = None if checksum is None else checksum.value_b64 or checksum.declared_b64
    if checksum is None or value is None:
        return {}
    return {checksum.header: value, checksums.TYPE_HEADER: checksum_type}


def answer_headers(stored: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``x-amz-checksum-*`` (and ``x-amz-checksum-type``) headers for stored values."""
    return sorted(
        (name, value)
        for name, value in stored.items()
        if checksums.by_header(name) is not None or name == checksums.TYPE_HEADER
    )


def checksum_mode_enabled(ctx: RequestContext) -> bool:
    mode = ctx.header("x-amz-checksum-mode")
    return mode is not None and mode.strip().upper() == "ENABLED"


# -- multipart uploads -------------------------------------------------------------------------


def _checksum_type(ctx: RequestContext) -> str | None:
    """The ``x-amz-checksum-type`` header, upper case. :raises S3Error: InvalidRequest for a
    type S3 does not have."""
    raw_type = ctx.header(checksums.TYPE_HEADER)
    checksum_type = raw_type.strip().upper() if raw_type is not None else None
    if checksum_type is not None and checksum_type not in checksums.CHECKSUM_TYPES:
        raise errors.InvalidRequest("Value for x-amz-checksum-type header is invalid.")
    return checksum_type


def upload_settings(ctx: RequestContext) -> tuple[str | None, str | None]:
    """``(algorithm, type)`` of a CreateMultipartUpload, with S3's defaults and rules: CRC64NVME
    is FULL_OBJECT only, SHA1 and SHA256 COMPOSITE only, CRC32 and CRC32C either (COMPOSITE by
    default).

    :raises S3Error: InvalidRequest for an unknown algorithm or type, a type without an
        algorithm, or a type the algorithm does not allow.
    """
    raw_algorithm = ctx.header("x-amz-checksum-algorithm")
    checksum_type = _checksum_type(ctx)
    if raw_algorithm is None:
        if checksum_type is not None:
            raise errors.InvalidRequest(
                "The x-amz-checksum-type header can only be used with the "
                "x-amz-checksum-algorithm header."
            )
        return None, None
    algorithm = checksums.by_name(raw_algorithm)
    if algorithm is None:
        names = ", ".join(a.name for a in checksums.ALGORITHMS.values())
        raise errors.InvalidRequest(
            "Checksum algorithm provided is unsupported. Please try again with any of the valid "
            f"types: [{names}]"
        )
    if checksum_type is None:
        checksum_type = algorithm.default_multipart_type
    if checksum_type not in algorithm.multipart_types:
        raise errors.InvalidRequest(
            f"The {checksum_type} checksum type cannot be used with the "
            f"{algorithm.name.lower()} checksum algorithm."
        )
    return algorithm.name, checksum_type


def part_checksums(
    ctx: RequestContext, upload_algorithm: ChecksumAlgorithm | None
) -> list[ChecksumFilter]:
    """The checksums an UploadPart computes besides the one its request names: the upload's
    algorithm when the request names none.

    :raises S3Error: InvalidRequest when the upload declared an algorithm and the part names
        another one.
    """
    named = request_checksum(ctx)
    if upload_algorithm is None or (named is not None and named.checksum is upload_algorithm):
        return []
    if named is not None:
        raise errors.InvalidRequest(
            "Checksum Type mismatch occurred, expected checksum Type: "
            f"{upload_algorithm.name.lower()}, actual checksum Type: {named.algorithm}"
        )
    return [ChecksumFilter(upload_algorithm.name, None)]


def completion_request(
    ctx: RequestContext, part_entries: Mapping[int, Mapping[str, str]]
) -> CompletionChecksums:
    """What a CompleteMultipartUpload says about checksums: its document's part checksums and
    its checksum headers.

    :raises S3Error: InvalidRequest for a malformed or repeated ``x-amz-checksum-*`` header or
        an unknown ``x-amz-checksum-type``.
    """
    expected = _checksum_header(ctx)
    if expected is not None:
        algorithm, value = expected
        base, dash, count = value.strip().partition("-")
        if algorithm.decode(base) is None or (dash and not count.isdigit()):
            raise errors.InvalidRequest(f"Value for {algorithm.header} header is invalid.")
    checksum_type = _checksum_type(ctx)
    return CompletionChecksums(
        parts=part_entries,
        expected=expected,
        checksum_type=checksum_type,
    )


def check_copy_algorithm(ctx: RequestContext, source_checksums: Mapping[str, str]) -> None:
    """CopyObject's ``x-amz-checksum-algorithm`` asks for the copy's checksum in that algorithm.

    A copy keeps its source's checksums, so a FULL_OBJECT one of that algorithm is honoured; any
    other would mean reading the source again, which a server-side copy does not do: refused.

    :raises S3Error: InvalidRequest for an unknown algorithm, NotImplemented as above.
    """
    raw = ctx.header("x-amz-checksum-algorithm")
    if raw is None:
        return
    algorithm = checksums.by_name(raw)
    if algorithm is None:
        raise errors.InvalidRequest("Value for x-amz-checksum-algorithm header is invalid.")
    if (
        algorithm.header in source_checksums
        and source_checksums.get(checksums.TYPE_HEADER) == checksums.FULL_OBJECT
    ):
        return
    raise errors.NotImplementedError_(
        f"CopyObject with x-amz-checksum-algorithm {algorithm.name} is served only when the "
        f"source already has a full-object {algorithm.name} checksum."
    )


def part_answer_headers(record: ObjectRecord, part_number: int) -> list[tuple[str, str]]:
    """The checksum headers of a ``partNumber`` read with ``x-amz-checksum-mode: ENABLED``: a
    COMPOSITE object's part has its own checksum; a FULL_OBJECT one has none for a part."""
    if record.checksums.get(checksums.TYPE_HEADER) != checksums.COMPOSITE:
        return []
    if not 1 <= part_number <= len(record.part_checksums):
        return []
    for algorithm in checksums.ALGORITHMS.values():
        if algorithm.header in record.checksums:
            return [
                (algorithm.header, record.part_checksums[part_number - 1]),
                (checksums.TYPE_HEADER, checksums.COMPOSITE),
            ]
    return []
