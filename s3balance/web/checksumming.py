"""Which ``x-amz-checksum-*`` an upload carries, and what S3 answers about stored checksums.

A PutObject, UploadPart or DeleteObjects names at most one checksum: as a header
(``x-amz-checksum-crc32: <base64>``) or, in an aws-chunked body, as the trailer named by
``x-amz-trailer`` (whose value the aws-chunked decoder verifies when it arrives); SDKs also send
``x-amz-sdk-checksum-algorithm``, which must name the same algorithm.  The value is computed here
as the body streams past (:class:`~s3balance.web.filters.ChecksumFilter`, after the aws-chunked
decoder, so over the decoded bytes), checked against a header value, and stored with the object.

An upload that names no checksum still gets a CRC64NVME, as S3 gives every new object one.
"""

from __future__ import annotations

from collections.abc import Mapping

from s3balance import errors
from s3balance.auth import checksums
from s3balance.auth.checksums import ChecksumAlgorithm
from s3balance.web.answer import RequestContext
from s3balance.web.filters import ChecksumFilter

#: The algorithm S3 gives an object whose upload named none.
DEFAULT_ALGORITHM = checksums.ALGORITHMS["crc64nvme"]


def _trailer_algorithm(ctx: RequestContext) -> ChecksumAlgorithm | None:
    """The algorithm of the checksum trailer of an aws-chunked body, if it has one."""
    payload = (ctx.header("x-amz-content-sha256") or "").strip().upper()
    trailer = ctx.header("x-amz-trailer")
    if not payload.endswith("-TRAILER") or trailer is None:
        return None
    return checksums.by_header(trailer)  # the decoder refused any other name already


def request_checksum(ctx: RequestContext, default: bool = True) -> ChecksumFilter | None:
    """The checksum filter for an upload's body (see the module docstring).

    :param default: with no checksum named, compute :data:`DEFAULT_ALGORITHM`; without it,
        return None.
    :raises S3Error: InvalidRequest for two checksum headers, a malformed value, or an
        ``x-amz-sdk-checksum-algorithm`` naming another (or no sent) checksum.
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
    trailer = _trailer_algorithm(ctx)
    chosen = given[0][0] if given else trailer
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
    if given:
        algorithm, value = given[0]
        return ChecksumFilter(algorithm.name, value)
    if trailer is not None:
        return ChecksumFilter(trailer.name, None, trailing=True)
    return ChecksumFilter(DEFAULT_ALGORITHM.name, None) if default else None


def stored_values(checksum: ChecksumFilter | None, checksum_type: str) -> dict[str, str]:
    """What an object (or part) keeps of a finished checksum filter: its value and type."""
    if checksum is None or checksum.value_b64 is None:
        return {}
    return {checksum.header: checksum.value_b64, checksums.TYPE_HEADER: checksum_type}


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
