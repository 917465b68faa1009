"""Object operations: PutObject, GetObject, HeadObject, CopyObject, DeleteObject(s), object ACL.

The HTTP side only: validation S3 does before reading a body, headers in and out, conditional
requests and ranges.  Placement and metadata belong to :class:`s3balance.gateway.Gateway`.

Redirect mode (``s3api.proxy_mode: false``): GetObject answers ``302 Found`` whose ``Location``
is a presigned GET URL of the object on its backend, valid ``s3api.presign_expiry`` seconds and
carrying the request's ``response-*`` overrides, with ``Cache-Control: no-store`` and an empty
body.  Everything that fails a proxied read before its first byte fails the redirect the same way
and before it: authentication, NoSuchBucket/NoSuchKey, a bad ``versionId``, the conditional
headers (304/412 from metadata), an unsatisfiable ``Range`` (416), the backend's availability
(503) and its class-B budget (SlowDown); the redirect counts as the class-B read.  The URL pins no
range: a client following it resends its ``Range`` header to the backend.  Proxied even in
redirect mode: objects on backends that cannot presign (local directories), ``partNumber`` reads
(a presigned URL cannot carry the part's range), HeadObject (answered from metadata) and every
upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from twisted.web.iweb import IBodyProducer

from s3balance import acl, conditions, errors, tagging
from s3balance.auth.checksums import FULL_OBJECT
from s3balance.backends.interface import STORED_HEADERS
from s3balance.db.records import ObjectRecord
from s3balance.db.store import ANY, UNCONDITIONAL, Condition
from s3balance.gateway import MAX_PUT_SIZE
from s3balance.integers import parse_decimal
from s3balance.names import validate_key
from s3balance.net.bytesproducer import BytesProducer
from s3balance.parts import parts_count
from s3balance.reads import ReadPlan, ReadRequest
from s3balance.web import checksumming, xml
from s3balance.web.answer import (
    STREAMED,
    Answer,
    RequestContext,
    add_response_headers,
)
from s3balance.web.buckets import requested_acl_change
from s3balance.web.filters import (
    BodyFilter,
    ChecksumFilter,
    ContentMD5Filter,
)
from s3balance.web.relay import relay_object

#: S3 gives objects stored without a Content-Type this one.
DEFAULT_CONTENT_TYPE = "binary/octet-stream"

_HEADER_NAMES = {
    "content-type": "Content-Type",
    "content-encoding": "Content-Encoding",
    "content-disposition": "Content-Disposition",
    "content-language": "Content-Language",
    "cache-control": "Cache-Control",
    "expires": "Expires",
}
_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}
#: Headers asking for features s3balance does not have; honouring them silently would lie.
_UNSUPPORTED_WRITE_HEADERS = (
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
    "x-amz-website-redirect-location",
)
#: The server-side encryption header; its one served value is :data:`SSE_S3`.
SSE_HEADER = "x-amz-server-side-encryption"
#: SSE-S3: the storage service encrypts with its own keys.
SSE_S3 = "AES256"
#: Customer-provided keys (SSE-C), on the object written and on a copy's source.
_SSE_C_PREFIXES = (
    "x-amz-server-side-encryption-customer-",
    "x-amz-copy-source-server-side-encryption-customer-",
)


class BytesBody(BytesProducer):
    """A small, already-received body (buffered by twisted.web) as a restartable producer."""

    def restartable(self) -> bool:
        return True


def version_id_must_be_null(ctx: RequestContext) -> None:
    """:raises S3Error: InvalidArgument for a ``versionId`` other than ``null`` (s3balance keeps
    no versions)."""
    version = ctx.query("versionId")
    if version is not None and version != "null":
        raise errors.InvalidArgument(
            "Invalid version id specified", ArgumentName="versionId", ArgumentValue=version
        )


def refuse_unsupported(ctx: RequestContext) -> None:
    for name in _UNSUPPORTED_WRITE_HEADERS:
        if ctx.header(name) is not None:
            raise errors.NotImplementedError_(f"The {name} header is not supported.")


def requested_encryption(ctx: RequestContext) -> str | None:
    """The server-side encryption a write asks for: :data:`SSE_S3` or ``None``.

    SSE-S3 is passed to the backend, which must confirm it (see the README); SSE-KMS and
    customer keys (SSE-C) cannot be honoured and are refused rather than dropped.

    :raises S3Error: NotImplemented for SSE-KMS, DSSE-KMS and SSE-C; InvalidArgument for an
        unknown algorithm.
    """
    for name in ctx.headers_with_prefix("x-amz-"):
        full = "x-amz-" + name
        if full.startswith(_SSE_C_PREFIXES):
            raise errors.NotImplementedError_(
                "Server-side encryption with customer-provided keys (SSE-C) is not supported."
            )
        if full.startswith("x-amz-server-side-encryption-") and full != SSE_HEADER:
            raise errors.NotImplementedError_(
                "Server-side encryption with KMS keys (SSE-KMS) is not supported."
            )
    value = ctx.header(SSE_HEADER)
    if value is None:
        return None
    algorithm = value.strip()
    if algorithm == SSE_S3:
        return SSE_S3
    if algorithm in ("aws:kms", "aws:kms:dsse"):
        raise errors.NotImplementedError_(
            "Server-side encryption with KMS keys (SSE-KMS) is not supported; use AES256."
        )
    raise errors.InvalidArgument(
        "The encryption method specified is not supported",
        ArgumentName=SSE_HEADER,
        ArgumentValue=algorithm,
    )


def requested_tags(ctx: RequestContext) -> dict[str, str]:
    """The tags of ``x-amz-tagging`` (none without it). :raises S3Error: see
    :func:`s3balance.tagging.parse_header`."""
    value = ctx.header("x-amz-tagging")
    return {} if value is None else tagging.parse_header(value)


def requested_acl(ctx: RequestContext, for_bucket: bool = False) -> str:
    """The canned ACL of ``x-amz-acl`` (``private`` without it). :raises S3Error: see
    :func:`s3balance.acl.from_headers`."""
    return acl.from_headers(
        ctx.header("x-amz-acl"), bool(ctx.headers_with_prefix("x-amz-grant-")), for_bucket
    )


def encryption_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """The encryption header S3 answers with for an object stored with ``headers``."""
    value = headers.get(SSE_HEADER)
    return [] if value is None else [(SSE_HEADER, value)]


def write_condition(ctx: RequestContext, prefix: str = "") -> Condition:
    """The conditional-write headers of a PutObject, CopyObject (on the destination),
    CompleteMultipartUpload or DeleteObject: ``If-None-Match: *`` and ``If-Match``.

    :raises S3Error: NotImplemented for an ``If-None-Match`` other than ``*`` (S3 serves only
        that one on writes).
    """
    if_none_match = ctx.header(f"{prefix}if-none-match")
    if if_none_match is not None and if_none_match.strip() != ANY:
        raise errors.NotImplementedError_(
            "A header you provided implies functionality that is not implemented: "
            "If-None-Match on a write accepts only *."
        )
    if_match = ctx.header(f"{prefix}if-match")
    if if_none_match is None and if_match is None:
        return UNCONDITIONAL
    return Condition(if_match=if_match, if_none_match=ANY if if_none_match else None)


def stored_headers_from_request(ctx: RequestContext) -> tuple[dict[str, str], dict[str, str]]:
    """The headers S3 keeps with an object, and its user metadata, from a PUT or a
    REPLACE copy."""
    headers: dict[str, str] = {}
    for name in STORED_HEADERS:
        value = ctx.header(name)
        if value is not None:
            headers[name] = value
    encoding = headers.get("content-encoding")
    if encoding is not None:
        # aws-chunked is transfer framing of the request, not a property of the object.
        kept = [e.strip() for e in encoding.split(",") if e.strip().lower() != "aws-chunked"]
        if kept:
            headers["content-encoding"] = ", ".join(kept)
        else:
            del headers["content-encoding"]
    headers.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    return headers, ctx.headers_with_prefix("x-amz-meta-")


@dataclass(frozen=True)
class RequestedFields:
    """What a PutObject or CreateMultipartUpload asks to keep with the object besides its bytes.

    :ivar headers: the stored headers (:data:`STORED_HEADERS`), the encryption asked for
        included.
    :ivar metadata: the user metadata (``x-amz-meta-*``, prefix removed).
    """

    headers: dict[str, str]
    metadata: dict[str, str]
    tags: dict[str, str]
    acl: str


def requested_fields(ctx: RequestContext) -> RequestedFields:
    """:raises S3Error: as :func:`requested_encryption`, :func:`requested_tags`,
    :func:`requested_acl`."""
    headers, metadata = stored_headers_from_request(ctx)
    encryption = requested_encryption(ctx)
    if encryption is not None:
        headers[SSE_HEADER] = encryption
    return RequestedFields(headers, metadata, requested_tags(ctx), requested_acl(ctx))


def declared_length(ctx: RequestContext) -> int:
    decoded = ctx.header("x-amz-decoded-content-length")
    raw = decoded if decoded is not None else ctx.header("content-length")
    if raw is None:
        raise errors.MissingContentLength()
    try:
        length = parse_decimal(raw.strip())
    except ValueError:
        raise errors.InvalidArgument("The Content-Length is not a number.") from None
    if length < 0:
        raise errors.InvalidArgument("The Content-Length is negative.")
    return length


def _body_filters(ctx: RequestContext) -> tuple[list[BodyFilter], list[ChecksumFilter]]:
    """Checks S3 runs over an upload: Content-MD5 and the ``x-amz-checksum-*`` it names
    (see :mod:`s3balance.web.checksumming`)."""
    filters: list[BodyFilter] = []
    md5 = ctx.header("content-md5")
    if md5 is not None:
        filters.append(ContentMD5Filter(md5))
    checksum = checksumming.request_checksum(ctx)
    checksum_filters = [checksum] if checksum is not None else []
    filters.extend(checksum_filters)
    return filters, checksum_filters


def _run_filters(filters: list[Any], data: bytes) -> None:
    """Apply body filters to a body that is already whole."""
    for body_filter in filters:
        data = body_filter.feed(data) + body_filter.finish()


def upload_body(
    ctx: RequestContext, length: int, extra: list[ChecksumFilter] | None = None
) -> tuple[IBodyProducer, list[ChecksumFilter]]:
    """The body of a PutObject or UploadPart with S3's checks attached, and the checksum filters
    whose values are stored.

    A streamed body runs the checks as its bytes pass (its last bytes are held back until they
    all passed); a body that arrived buffered is checked whole before any backend sees it.

    :param extra: more checksums to compute (an upload's own algorithm, for its parts).
    """
    filters, checksum_filters = _body_filters(ctx)
    if extra:
        filters.extend(extra)
        checksum_filters = [*checksum_filters, *extra]
    streamed = getattr(ctx.request, "body", None)
    if streamed is not None:
        streamed.length = length
        # The body itself holds it to ``length`` after the filters (RequestBody._push).
        for body_filter in filters:
            streamed.add_filter(body_filter)
        return streamed, checksum_filters
    data = ctx.read_body()
    if len(data) != length:
        raise errors.IncompleteBody()
    _run_filters(filters, data)
    return BytesBody(data), checksum_filters


async def handle_PutObject(ctx: RequestContext) -> Answer:
    validate_key(ctx.key)
    refuse_unsupported(ctx)
    length = declared_length(ctx)
    if length > MAX_PUT_SIZE:
        raise errors.EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(MAX_PUT_SIZE))
    # The gateway checks the bucket (and the condition) before any body byte is read.
    condition = write_condition(ctx)
    fields = requested_fields(ctx)
    body, checksum_filters = upload_body(ctx, length)

    def checksums() -> dict[str, str]:
        stored: dict[str, str] = {}
        for checksum in checksum_filters:
            stored.update(checksumming.stored_values(checksum, FULL_OBJECT))
        return stored

    record = await ctx.gateway.put_object(
        ctx.bucket, ctx.key, body, length, fields.headers, fields.metadata, checksums, condition,
        tags=fields.tags, acl=fields.acl,
    )
    answer_headers = [("ETag", record.etag)]
    answer_headers.extend(checksumming.answer_headers(record.checksums))
    answer_headers.extend(encryption_headers(record.headers))
    return Answer(200, answer_headers)


def object_headers(
    ctx: RequestContext, record: ObjectRecord, whole: bool
) -> list[tuple[str, str]]:
    """What GET and HEAD answer about an object besides length and range."""
    stored = dict(record.headers)
    stored.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    for parameter, name in _OVERRIDES.items():
        value = ctx.query(parameter)
        if value is not None:
            stored[name] = value
    headers = [(_HEADER_NAMES[name], stored[name]) for name in _HEADER_NAMES if name in stored]
    headers.extend((f"x-amz-meta-{name}", value) for name, value in record.metadata.items())
    headers.append(("ETag", record.etag))
    headers.append(("Last-Modified", conditions.http_date(record.last_modified)))
    headers.append(("Accept-Ranges", "bytes"))
    headers.extend(encryption_headers(record.headers))
    if record.tags:
        headers.append(("x-amz-tagging-count", str(len(record.tags))))
    if whole and checksumming.checksum_mode_enabled(ctx):
        headers.extend(checksumming.answer_headers(record.checksums))
    return headers


def preconditions(ctx: RequestContext, prefix: str = "") -> conditions.Preconditions:
    """The conditional headers of a read (``prefix`` ``""``) or of a copy's source
    (``x-amz-copy-source-``)."""
    return conditions.Preconditions(
        if_match=ctx.header(f"{prefix}if-match"),
        if_none_match=ctx.header(f"{prefix}if-none-match"),
        if_modified_since=ctx.header(f"{prefix}if-modified-since"),
        if_unmodified_since=ctx.header(f"{prefix}if-unmodified-since"),
    )


def _response_overrides(ctx: RequestContext) -> dict[str, str]:
    return {
        parameter: value
        for parameter in _OVERRIDES
        if (value := ctx.query(parameter)) is not None
    }


async def _read(ctx: RequestContext, with_body: bool) -> Answer | Any:
    """GetObject and HeadObject: the gateway plans the read (:meth:`Gateway.read`), this writes
    the plan out."""
    version_id_must_be_null(ctx)
    wanted = ReadRequest(
        preconditions=preconditions(ctx),
        range_header=ctx.header("range"),
        part_number=ctx.query("partNumber"),
        with_body=with_body,
        response_overrides=_response_overrides(ctx),
    )
    plan = await ctx.gateway.read(ctx.bucket, ctx.key, wanted)
    async with plan:
        return await _answer_read(ctx, plan)


async def _answer_read(ctx: RequestContext, plan: ReadPlan) -> Answer | Any:
    record = plan.record
    if plan.not_modified:
        return Answer(
            304,
            [
                ("ETag", record.etag),
                ("Last-Modified", conditions.http_date(record.last_modified)),
            ],
        )
    if plan.redirect is not None:
        return Answer(302, [("Location", plan.redirect), ("Cache-Control", "no-store")])
    headers = object_headers(ctx, record, whole=plan.byte_range is None)
    if plan.part_number is not None:
        if checksumming.checksum_mode_enabled(ctx):
            headers.extend(checksumming.part_answer_headers(record, plan.part_number))
        count = parts_count(record)
        if count is not None:
            headers.append(("x-amz-mp-parts-count", str(count)))
    content_range = plan.content_range
    if content_range is not None:
        headers.append(("Content-Range", content_range))
    stream = plan.stream
    if stream is None:
        headers.append(("Content-Length", str(plan.length)))
        return Answer(plan.status, headers)
    request: Any = ctx.request
    request.setResponseCode(plan.status)
    add_response_headers(request, headers)
    request.responseHeaders.setRawHeaders(b"content-length", [str(stream.length).encode()])
    await relay_object(request, stream, ctx.clock, ctx.stall_timeout, ctx.zero_copy)
    return STREAMED


async def handle_GetObject(ctx: RequestContext) -> Any:
    return await _read(ctx, with_body=True)


async def handle_HeadObject(ctx: RequestContext) -> Any:
    return await _read(ctx, with_body=False)


#: Conditions of DeleteObject that S3 serves only on directory buckets; refused, never ignored.
_UNSUPPORTED_DELETE_CONDITIONS = ("x-amz-if-match-last-modified-time", "x-amz-if-match-size")


async def handle_DeleteObject(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    for name in _UNSUPPORTED_DELETE_CONDITIONS:
        if ctx.header(name) is not None:
            raise errors.NotImplementedError_(f"The {name} header is not supported.")
    await ctx.gateway.delete_object(ctx.bucket, ctx.key, write_condition(ctx))
    return Answer(204)


def verify_body_digests(ctx: RequestContext, body: bytes) -> None:
    """Check a small body against the Content-MD5 and ``x-amz-checksum-*`` it came with.

    :raises S3Error: BadDigest, InvalidDigest.
    """
    filters, _ = _body_filters(ctx)
    _run_filters(filters, body)


def _verify_required_digest(ctx: RequestContext, body: bytes) -> None:
    """DeleteObjects must carry Content-MD5 or an ``x-amz-checksum-*`` (S3 requires one;
    current SDKs send CRC32 or CRC64NVME instead of Content-MD5)."""
    filters, checksum_filters = _body_filters(ctx)
    if not filters:
        raise errors.InvalidRequest("Missing required header for this request: Content-MD5")
    _run_filters(filters, body)


async def handle_DeleteObjects(ctx: RequestContext) -> Answer:
    body = ctx.read_body()
    _verify_required_digest(ctx, body)
    request = xml.parse_delete(body)
    await ctx.gateway.get_bucket(ctx.bucket)
    outcomes: list[xml.DeleteOutcome] = []
    etags = request.etags or [None] * len(request.keys)
    for key, etag in zip(request.keys, etags, strict=True):
        try:
            validate_key(key)
            condition = UNCONDITIONAL if etag is None else Condition(if_match=etag)
            await ctx.gateway.delete_object(ctx.bucket, key, condition)
        except errors.S3Error as error:
            outcomes.append(xml.DeleteOutcome(key, error))
        else:
            outcomes.append(xml.DeleteOutcome(key))
    return Answer.xml(xml.delete_result(outcomes, request.quiet))


def check_copy_source_conditions(ctx: RequestContext, source: ObjectRecord) -> None:
    """``x-amz-copy-source-if-*`` of CopyObject and UploadPartCopy, judged on the source.

    :raises S3Error: PreconditionFailed (412) when one does not hold.
    """
    outcome = preconditions(ctx, "x-amz-copy-source-").judge(
        source.etag, source.last_modified, for_copy=True
    )
    if outcome is not conditions.Outcome.PROCEED:
        raise errors.PreconditionFailed(Condition="x-amz-copy-source-If-*")


def parse_copy_source(value: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``x-amz-copy-source`` header (``[/]bucket/key[?versionId=]``).

    :raises S3Error: InvalidArgument for a malformed value or a version other than ``null``.
    """
    path, _, query = value.partition("?")
    if query:
        name, _, version = query.partition("=")
        if name != "versionId" or unquote(version) != "null":
            raise errors.InvalidArgument(
                "Invalid version id specified", ArgumentName="x-amz-copy-source"
            )
    decoded = unquote(path, errors="strict")
    if decoded.startswith("/"):
        decoded = decoded[1:]
    bucket, slash, key = decoded.partition("/")
    if not bucket or not slash or not key:
        raise errors.InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
            ArgumentValue=value,
        )
    return bucket, key


def copy_source(ctx: RequestContext) -> tuple[str, str]:
    """``(bucket, key)`` of the ``x-amz-copy-source`` of CopyObject or UploadPartCopy, which the
    request's key must be allowed to read.

    :raises S3Error: InvalidArgument (see :func:`parse_copy_source`), AccessDenied.
    """
    try:
        bucket, key = parse_copy_source(ctx.header("x-amz-copy-source") or "")
    except UnicodeError:
        raise errors.InvalidArgument("Invalid copy source encoding.") from None
    identity = ctx.identity
    if identity is not None and not identity.may_access(bucket, False):
        raise errors.AccessDenied()
    return bucket, key


async def handle_CopyObject(ctx: RequestContext) -> Answer:
    validate_key(ctx.key)
    refuse_unsupported(ctx)
    source_bucket, source_key = copy_source(ctx)
    condition = write_condition(ctx)
    directive = (ctx.header("x-amz-metadata-directive") or "COPY").strip().upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument(
            "Unknown metadata directive.",
            ArgumentName="x-amz-metadata-directive",
            ArgumentValue=directive,
        )
    tagging_directive = (ctx.header("x-amz-tagging-directive") or "COPY").strip().upper()
    if tagging_directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument(
            "Unknown tagging directive.",
            ArgumentName="x-amz-tagging-directive",
            ArgumentValue=tagging_directive,
        )
    encryption = requested_encryption(ctx)
    new_tags = requested_tags(ctx) if tagging_directive == "REPLACE" else None
    object_acl = requested_acl(ctx)
    source = await ctx.gateway.get_object_record(source_bucket, source_key)
    if source.size > MAX_PUT_SIZE:
        raise errors.InvalidRequest(
            "The specified copy source is larger than the maximum allowable size for a copy "
            f"source: {MAX_PUT_SIZE}"
        )
    check_copy_source_conditions(ctx, source)
    checksumming.check_copy_algorithm(ctx, source.checksums)
    if (source_bucket, source_key) == (ctx.bucket, ctx.key) and directive == "COPY" and (
        encryption is None or source.headers.get(SSE_HEADER) == encryption
    ):
        raise errors.InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect location "
            "or encryption attributes."
        )
    if directive == "REPLACE":
        headers, metadata = stored_headers_from_request(ctx)
    else:
        headers, metadata = dict(source.headers), dict(source.metadata)
    # As on S3, the copy is encrypted as its request says, whatever the source was.
    headers.pop(SSE_HEADER, None)
    if encryption is not None:
        headers[SSE_HEADER] = encryption
    tags = dict(source.tags) if new_tags is None else new_tags
    record = await ctx.gateway.copy_object(
        source, ctx.bucket, ctx.key, headers, metadata, condition, tags=tags, acl=object_acl
    )
    answer = Answer.xml(xml.copy_object_result(record.etag, record.last_modified))
    answer.headers.extend(encryption_headers(record.headers))
    return answer


async def handle_GetObjectAcl(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    record = await ctx.gateway.get_object_record(ctx.bucket, ctx.key)
    return Answer.xml(acl.policy_document(ctx.owner.id, ctx.owner.display_name, record.acl))


async def handle_PutObjectAcl(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    await ctx.gateway.get_object_record(ctx.bucket, ctx.key)
    wanted = requested_acl_change(ctx, for_bucket=False)
    if not await ctx.gateway.store.set_object_acl(ctx.bucket, ctx.key, wanted):
        raise errors.NoSuchKey(Key=ctx.key)
    return Answer(200)
