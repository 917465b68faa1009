"""The HTTP side of multipart uploads: S3's requests and documents around
:class:`s3balance.multipart.MultipartUploads`.

:class:`MultipartHandler` is the ``multipart`` object of :class:`s3balance.web.resource.S3Resource`:
one ``handle_<Operation>(request, ctx)`` method per operation, each returning an
:class:`~s3balance.web.answer.Answer`, or :data:`~s3balance.web.answer.STREAMED` when it wrote the
response itself.

CompleteMultipartUpload may take long (a backend concatenating gigabytes).  As S3 does, when it has
not finished after ``keepalive_interval`` seconds, the answer is committed as ``200`` with the XML
declaration, a space follows every ``keepalive_interval`` seconds so neither the client nor a
proxy times out, and the result document (or an ``<Error>`` document, still inside the 200) ends
it.  Work that finishes sooner is answered normally, with the error's own status.  The channel's
idle timeout is off while a request is being processed, and a client that leaves does not stop a
completion half way (the metadata must follow what the backend did).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance import errors
from s3balance.auth import checksums
from s3balance.db.records import ObjectRecord, PartRecord, UploadPage, UploadRecord
from s3balance.integers import parse_decimal
from s3balance.logs import make_logger
from s3balance.multipart import (
    MAX_LISTING,
    MAX_PART_SIZE,
    MultipartUploads,
    parse_copy_range,
)
from s3balance.multipart_checksums import upload_algorithm as upload_algorithm_of
from s3balance.names import validate_key
from s3balance.parts import parse_part_number
from s3balance.periodic import Periodic
from s3balance.web import checksumming, lifecycle
from s3balance.web.answer import STREAMED, Answer, RequestContext
from s3balance.web.objects import (
    check_copy_source_conditions,
    copy_source,
    declared_length,
    encryption_headers,
    refuse_unsupported,
    requested_fields,
    upload_body,
    write_condition,
)
from s3balance.web.queryparams import count_param, url_encoded
from s3balance.web.xml import (
    Owner,
    iso8601,
    local_name,
    owner_element,
    parse_document,
    root_element,
    serialise,
    sub_element,
    url_encode,
)

log = make_logger()

#: Seconds between the keep-alive spaces of a long CompleteMultipartUpload (S3 uses about 10).
KEEPALIVE_INTERVAL = 10.0
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


# -- documents ---------------------------------------------------------------------------------


def initiate_result(bucket: str, key: str, upload_id: str) -> bytes:
    root = root_element("InitiateMultipartUploadResult")
    sub_element(root, "Bucket", bucket)
    sub_element(root, "Key", key)
    sub_element(root, "UploadId", upload_id)
    return serialise(root)


def copy_part_result(part: PartRecord) -> bytes:
    root = root_element("CopyPartResult")
    sub_element(root, "LastModified", iso8601(part.last_modified))
    sub_element(root, "ETag", part.etag)
    return serialise(root)


def complete_result(location: str, record: ObjectRecord) -> bytes:
    root = root_element("CompleteMultipartUploadResult")
    sub_element(root, "Location", location)
    sub_element(root, "Bucket", record.bucket)
    sub_element(root, "Key", record.key)
    sub_element(root, "ETag", record.etag)
    _checksum_elements(root, record.checksums)
    return serialise(root)


def _checksum_elements(parent: Any, stored: Mapping[str, str], with_type: bool = True) -> None:
    """``<ChecksumCRC32>``... (and ``<ChecksumType>``) for stored ``x-amz-checksum-*`` values."""
    for algorithm in checksums.ALGORITHMS.values():
        value = stored.get(algorithm.header)
        if value is not None:
            sub_element(parent, algorithm.xml_element, value)
    checksum_type = stored.get(checksums.TYPE_HEADER)
    if with_type and checksum_type is not None:
        sub_element(parent, "ChecksumType", checksum_type)


def parse_complete_checksums(body: bytes) -> dict[int, dict[str, str]]:
    """Per part number, the ``<ChecksumCRC32>``... values of a CompleteMultipartUpload body, as
    ``x-amz-checksum-*`` names (the document was already checked by :func:`parse_complete`)."""
    elements = {a.xml_element: a.header for a in checksums.ALGORITHMS.values()}
    found: dict[int, dict[str, str]] = {}
    for element in parse_document(body):
        if local_name(element.tag) != "Part":
            continue
        number: int | None = None
        values: dict[str, str] = {}
        for field_ in element:
            name = local_name(field_.tag)
            if name == "PartNumber":
                number = int((field_.text or "").strip())
            elif name in elements:
                values[elements[name]] = (field_.text or "").strip()
        if number is not None and values:
            found[number] = values
    return found


def list_parts_result(
    upload: UploadRecord,
    parts: list[PartRecord],
    owner: Owner,
    part_number_marker: int,
    max_parts: int,
    is_truncated: bool,
    url_encoded: bool,
) -> bytes:
    root = root_element("ListPartsResult")
    sub_element(root, "Bucket", upload.bucket)
    sub_element(root, "Key", url_encode(upload.key) if url_encoded else upload.key)
    sub_element(root, "UploadId", upload.upload_id)
    owner_element(root, owner, "Initiator")
    owner_element(root, owner)
    sub_element(root, "StorageClass", "STANDARD")
    sub_element(root, "PartNumberMarker", str(part_number_marker))
    next_marker = parts[-1].part_number if parts else part_number_marker
    sub_element(root, "NextPartNumberMarker", str(next_marker))
    sub_element(root, "MaxParts", str(max_parts))
    sub_element(root, "IsTruncated", "true" if is_truncated else "false")
    if url_encoded:
        sub_element(root, "EncodingType", "url")
    if upload.checksum_algorithm is not None:
        sub_element(root, "ChecksumAlgorithm", upload.checksum_algorithm)
        sub_element(root, "ChecksumType", upload.checksum_type or "")
    for part in parts:
        element = sub_element(root, "Part")
        sub_element(element, "PartNumber", str(part.part_number))
        sub_element(element, "LastModified", iso8601(part.last_modified))
        sub_element(element, "ETag", part.etag)
        sub_element(element, "Size", str(part.size))
        _checksum_elements(element, part.checksums, with_type=False)
    return serialise(root)


def list_uploads_result(
    bucket: str,
    page: UploadPage,
    owner: Owner,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
    url_encoded: bool,
) -> bytes:
    def text(value: str) -> str:
        return url_encode(value) if url_encoded else value

    root = root_element("ListMultipartUploadsResult")
    sub_element(root, "Bucket", bucket)
    sub_element(root, "KeyMarker", text(key_marker))
    sub_element(root, "UploadIdMarker", upload_id_marker)
    sub_element(root, "NextKeyMarker", text(page.next_key_marker or ""))
    sub_element(root, "NextUploadIdMarker", page.next_upload_id_marker or "")
    sub_element(root, "Prefix", text(prefix))
    if delimiter:
        sub_element(root, "Delimiter", text(delimiter))
    sub_element(root, "MaxUploads", str(max_uploads))
    sub_element(root, "IsTruncated", "true" if page.is_truncated else "false")
    if url_encoded:
        sub_element(root, "EncodingType", "url")
    for upload in page.uploads:
        element = sub_element(root, "Upload")
        sub_element(element, "Key", text(upload.key))
        sub_element(element, "UploadId", upload.upload_id)
        owner_element(element, owner, "Initiator")
        owner_element(element, owner)
        sub_element(element, "StorageClass", "STANDARD")
        sub_element(element, "Initiated", iso8601(upload.initiated))
    for common in page.common_prefixes:
        element = sub_element(root, "CommonPrefixes")
        sub_element(element, "Prefix", text(common))
    return serialise(root)


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """``(part number, ETag)`` pairs of a CompleteMultipartUpload body, in document order.

    :raises S3Error: MalformedXML when it is not such a document, a part lacks its number or
        ETag, the number is not an integer, or no part is listed.
    """
    root = parse_document(body)
    if local_name(root.tag) != "CompleteMultipartUpload":
        raise errors.MalformedXML()
    parts: list[tuple[int, str]] = []
    for element in root:
        if local_name(element.tag) != "Part":
            continue
        number_text: str | None = None
        etag: str | None = None
        for field_ in element:
            name = local_name(field_.tag)
            if name == "PartNumber":
                number_text = (field_.text or "").strip()
            elif name == "ETag":
                etag = (field_.text or "").strip()
        if number_text is None or not etag:
            raise errors.MalformedXML()
        try:
            number = parse_decimal(number_text)
        except ValueError:
            raise errors.MalformedXML() from None
        parts.append((number, etag))
    if not parts:
        raise errors.MalformedXML()
    return parts


# -- query parameters --------------------------------------------------------------------------


def _upload_id(ctx: RequestContext) -> str:
    return ctx.query("uploadId") or ""


# -- the long completion -----------------------------------------------------------------------


def _shielded(work: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """A Deferred following ``work`` whose cancellation leaves ``work`` running."""
    outer: defer.Deferred[Any] = defer.Deferred(lambda _: None)

    def forward(result: Any) -> None:
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Failure):
            log.failure("multipart completion failed after its client left", result)

    work.addBoth(forward)
    return outer


class _KeepAlive:
    """Commits a slow answer as 200 and writes a space every ``interval`` seconds."""

    def __init__(self, request: Any, clock: IReactorTime, interval: float) -> None:
        self.request = request
        self.committed = False
        self._loop = Periodic(clock, self._tick, "multipart completion keepalive")
        self._loop.start(interval, now=False)

    def _tick(self) -> None:
        request = self.request
        if lifecycle.is_over(request):
            self.stop()
            return
        if not self.committed:
            self.committed = True
            request.setResponseCode(200)
            request.responseHeaders.setRawHeaders(b"content-type", [b"application/xml"])
            request.write(_DECLARATION)
        else:
            request.write(b" ")

    def stop(self) -> None:
        self._loop.stop()

    def finish(self, document: bytes) -> None:
        """End the committed answer with ``document`` (its own declaration dropped)."""
        self.stop()
        if document.startswith(_DECLARATION):
            document = document[len(_DECLARATION):]
        self.request.write(document)
        self.request.finish()


# -- the handler -------------------------------------------------------------------------------


class MultipartHandler:
    """The multipart operations of the S3 front (see the module docstring).

    :param uploads: the multipart core.
    :param keepalive_interval: seconds before a slow CompleteMultipartUpload is committed as 200,
        and between the spaces that follow.
    """

    def __init__(
        self, uploads: MultipartUploads, keepalive_interval: float = KEEPALIVE_INTERVAL
    ) -> None:
        self.uploads = uploads
        self.keepalive_interval = keepalive_interval

    async def handle_CreateMultipartUpload(self, request: Any, ctx: RequestContext) -> Answer:
        validate_key(ctx.key)
        refuse_unsupported(ctx)
        fields = requested_fields(ctx)
        answer_headers: list[tuple[str, str]] = [("Content-Type", "application/xml")]
        answer_headers.extend(encryption_headers(fields.headers))
        algorithm, checksum_type = checksumming.upload_settings(ctx)
        if algorithm is not None and checksum_type is not None:
            answer_headers.append(("x-amz-checksum-algorithm", algorithm))
            answer_headers.append(("x-amz-checksum-type", checksum_type))
        upload = await self.uploads.create(
            ctx.bucket, ctx.key, fields.headers, fields.metadata, algorithm, checksum_type,
            tags=fields.tags, acl=fields.acl,
        )
        body = initiate_result(ctx.bucket, ctx.key, upload.upload_id)
        return Answer(200, answer_headers, body)

    async def handle_UploadPart(self, request: Any, ctx: RequestContext) -> Answer:
        part_number = parse_part_number(ctx.query("partNumber"))
        length = declared_length(ctx)
        if length > MAX_PART_SIZE:
            raise errors.EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(MAX_PART_SIZE))
        upload = await self.uploads.get_upload(ctx.bucket, ctx.key, _upload_id(ctx))
        upload_algorithm, _ = upload_algorithm_of(upload)
        extra = checksumming.part_checksums(ctx, upload_algorithm)
        body, checksum_filters = upload_body(ctx, length, extra)

        def part_checksums() -> dict[str, str]:
            return {f.header: f.value_b64 for f in checksum_filters if f.value_b64 is not None}

        part = await self.uploads.upload_part(
            ctx.bucket, ctx.key, _upload_id(ctx), part_number, body, length, part_checksums
        )
        answer_headers = [("ETag", part.etag)]
        answer_headers.extend(checksumming.answer_headers(part.checksums))
        # S3 repeats the upload's encryption on each part's answer (the part is stored: an
        # upload completed or aborted meanwhile only costs the header).
        try:
            upload = await self.uploads.get_upload(ctx.bucket, ctx.key, _upload_id(ctx))
        except errors.S3Error:
            pass
        else:
            answer_headers.extend(encryption_headers(upload.headers))
        return Answer(200, answer_headers)

    async def handle_UploadPartCopy(self, request: Any, ctx: RequestContext) -> Answer:
        part_number = parse_part_number(ctx.query("partNumber"))
        upload_id = _upload_id(ctx)
        source_bucket, source_key = copy_source(ctx)
        await self.uploads.get_upload(ctx.bucket, ctx.key, upload_id)
        source = await ctx.gateway.get_object_record(source_bucket, source_key)
        check_copy_source_conditions(ctx, source)
        byte_range = parse_copy_range(ctx.header("x-amz-copy-source-range"), source.size)
        part = await self.uploads.upload_part_copy(
            ctx.bucket, ctx.key, upload_id, part_number, source, byte_range
        )
        return Answer.xml(copy_part_result(part))

    async def handle_CompleteMultipartUpload(self, request: Any, ctx: RequestContext) -> Any:
        condition = write_condition(ctx)
        document_body = ctx.read_body()
        requested = parse_complete(document_body)
        checksum_request = checksumming.completion_request(
            ctx, parse_complete_checksums(document_body)
        )
        work = defer.ensureDeferred(
            self.uploads.complete(
                ctx.bucket, ctx.key, _upload_id(ctx), requested,
                checksum_request=checksum_request, condition=condition,
            )
        )
        keepalive = _KeepAlive(request, ctx.clock, self.keepalive_interval)
        try:
            record: ObjectRecord = await _shielded(work)
        except defer.CancelledError:
            keepalive.stop()
            raise
        except Exception as error:
            if not keepalive.committed:
                keepalive.stop()
                raise
            if not isinstance(error, errors.S3Error):
                log.failure(
                    "request {request_id}: completing an upload failed",
                    Failure(error),
                    request_id=ctx.request_id,
                )
                error = errors.InternalError()
            keepalive.finish(error.to_xml(ctx.route.path, ctx.request_id))
            return STREAMED
        document = complete_result(self._location(request, ctx), record)
        if not keepalive.committed:
            keepalive.stop()
            answer = Answer.xml(document)
            answer.headers.extend(encryption_headers(record.headers))
            return answer
        keepalive.finish(document)
        return STREAMED

    def _location(self, request: Any, ctx: RequestContext) -> str:
        host = ctx.header("host") or "localhost"
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host}{ctx.route.path}"

    async def handle_AbortMultipartUpload(self, request: Any, ctx: RequestContext) -> Answer:
        await self.uploads.abort(ctx.bucket, ctx.key, _upload_id(ctx))
        return Answer(204)

    async def handle_ListParts(self, request: Any, ctx: RequestContext) -> Answer:
        max_parts = count_param(ctx.query("max-parts"), "max-parts", MAX_LISTING, cap=MAX_LISTING)
        marker = count_param(ctx.query("part-number-marker"), "part-number-marker", 0)
        encoded = url_encoded(ctx.query("encoding-type"))
        upload, parts, truncated = await self.uploads.list_parts(
            ctx.bucket, ctx.key, _upload_id(ctx), marker, max_parts
        )
        return Answer.xml(
            list_parts_result(upload, parts, ctx.owner, marker, max_parts, truncated, encoded)
        )

    async def handle_ListMultipartUploads(self, request: Any, ctx: RequestContext) -> Answer:
        max_uploads = count_param(
            ctx.query("max-uploads"), "max-uploads", MAX_LISTING, cap=MAX_LISTING
        )
        encoded = url_encoded(ctx.query("encoding-type"))
        prefix = ctx.query("prefix") or ""
        delimiter = ctx.query("delimiter") or ""
        key_marker = ctx.query("key-marker") or ""
        upload_id_marker = ctx.query("upload-id-marker") or ""
        page = await self.uploads.list_uploads(
            ctx.bucket, prefix, delimiter, key_marker, upload_id_marker, max_uploads
        )
        return Answer.xml(
            list_uploads_result(
                ctx.bucket, page, ctx.owner, prefix, delimiter, key_marker, upload_id_marker,
                max_uploads, encoded,
            )
        )


__all__ = [
    "KEEPALIVE_INTERVAL",
    "MultipartHandler",
    "parse_complete",
]
