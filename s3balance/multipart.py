"""Multipart uploads through virtual buckets, independent of HTTP.

An upload lives on one backend, chosen when it is created; every part streams to that backend,
and completing assembles the object there.  In a bucket with ``replicas`` an upload has a copy on
each of N backends, and every part streams to all of them at once
(:mod:`s3balance.multipart_replicas`).  Clients only ever see our own opaque upload
id (random, URL-safe); the backend's id stays in the metadata store.  An id that is unknown, or
belongs to another bucket or key, is ``NoSuchUpload``.

Capacity, when the final size is unknown:

- CreateMultipartUpload ranks backends as for a new object of :data:`MIN_FREE_FOR_UPLOAD` bytes
  (one minimum-size part, 5 MiB): a backend with less room than that never gets a new upload.
- Each part is checked against the room left on the upload's backend when it arrives (the bytes
  of parts already stored count as used, those of parts streaming right now are reserved): a
  backend that filled up, became unhealthy or used its write budget meanwhile answers 503
  ``ServiceUnavailable`` for that part, and the upload stays intact.

Consistency follows :mod:`s3balance.gateway`: an upload's target is a real key of its own, chosen
at CreateMultipartUpload, so completing it on the backend never touches the bytes of the visible
object; a part is recorded only after the backend confirmed it; the commit switches the object
row to the completed location (with the compare and swap of ``If-None-Match``/``If-Match``), and
the replaced bytes are retired as for any write.

A CompleteMultipartUpload repeated after it succeeded answers the same result, as S3 does, for as
long as the result is kept (``multipart.expiry``).  A completion interrupted after the backend
assembled the object but before the commit (the daemon killed) can be retried: the backend may
then no longer know the upload, and the assembled object at the upload's real key is taken when
its size is the parts' total.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from twisted.internet import task
from twisted.web.iweb import IBodyProducer

from s3balance import errors
from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    BackendCannotEncrypt,
    BackendError,
    BackendUnavailable,
    IBackend,
    PartResult,
    PutResult,
    backend_error_to_s3,
)
from s3balance.db.records import (
    Location,
    ObjectRecord,
    PartRecord,
    UploadCopy,
    UploadPage,
    UploadRecord,
)
from s3balance.db.store import (
    UNCONDITIONAL,
    CompletedUpload,
    Condition,
    MetadataStore,
    NoSuchBucketError,
)
from s3balance.etags import bare_etag, is_multipart_etag, multipart_etag
from s3balance.gateway import Gateway
from s3balance.integers import BEYOND_ANY_VALUE, TooManyDigits, parse_decimal
from s3balance.logs import make_logger
from s3balance.multipart_checksums import CompletionChecksums, completion_checksums
from s3balance.multipart_replicas import ReplicatedUploads
from s3balance.names import check_client_metadata, validate_key
from s3balance.newupload import NewUpload
from s3balance.operations import Operation
from s3balance.parts import MAX_PART_NUMBER, validate_part_number
from s3balance.retirement import remove_abandoned

log = make_logger()

#: S3's smallest part, except the last one.
MIN_PART_SIZE = 5 * 1024**2
#: S3's largest part.
MAX_PART_SIZE = 5 * 1024**3
#: Room a backend needs to be chosen for a new upload (see the module docstring).
MIN_FREE_FOR_UPLOAD = MIN_PART_SIZE
#: Most parts or uploads one listing page returns.
MAX_LISTING = 1000


@runtime_checkable
class RoomCheck(Protocol):
    """What :class:`s3balance.pool.BackendPool` offers to check a backend's room for a part."""

    def candidates(self, size: int, drained_too: bool = False) -> Sequence[Any]: ...


class UploadPool(Protocol):
    """The part of the backend pool that aborting an upload needs."""

    def get(self, name: str) -> IBackend: ...

    def record_operation(
        self, name: str, operation: Operation, bytes_in: int = 0, bytes_out: int = 0
    ) -> None: ...


def new_upload_id() -> str:
    """An opaque, URL-safe upload id (32 characters, 192 random bits)."""
    return secrets.token_urlsafe(24)


def parse_copy_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``x-amz-copy-source-range: bytes=first-last`` against a source of ``size`` bytes.

    :returns: the inclusive range, or ``None`` for the whole source.
    :raises S3Error: InvalidArgument when malformed, InvalidRange when beyond the source.
    """
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes=([0-9]+)-([0-9]+)\s*", header)
    bounds = [_copy_bound(text) for text in match.groups()] if match is not None else []
    if not bounds or bounds[0] > bounds[1]:
        raise errors.InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            ArgumentName="x-amz-copy-source-range",
            ArgumentValue=header,
        )
    first, last = bounds
    if last >= size:
        raise errors.InvalidRange(RangeRequested=header.strip(), ActualObjectSize=str(size))
    return first, last


def _copy_bound(text: str) -> int:
    """A copy range bound (ASCII digits); a huge one is beyond any source."""
    try:
        return parse_decimal(text)
    except TooManyDigits:
        return BEYOND_ANY_VALUE


async def discard_upload(
    store: MetadataStore, pool: UploadPool, upload: UploadRecord
) -> dict[str, int] | None:
    """Abort ``upload`` on its backend, then forget it in the store.

    An upload with copies (a replicated bucket) is forgotten first, every copy's backend upload
    queued for abortion in the same transaction, and then aborted: one whose backend cannot do
    it now stays queued for the deletion sweep, so a backend that is down does not hold up the
    others.

    :returns: the bytes of parts released, by backend, or ``None`` when the store no longer had
        the upload (completed or aborted meanwhile).
    :raises BackendError: the backend could not abort it; the row is kept for a later attempt.
    :raises KeyError: the upload's backend is not configured (any more); the row is kept.
    """
    if upload.copies:
        abandoned = await store.abandon_upload(upload.upload_id, 0.0)
        if abandoned is None:
            return None
        await remove_abandoned(store, pool, abandoned.queued)
        return abandoned.released
    backend = pool.get(upload.backend)
    await backend.abort_multipart_upload(upload.real_key, upload.backend_upload_id)
    pool.record_operation(upload.backend, "AbortMultipartUpload")
    released = sum(part.size for part in await all_parts(store, upload.upload_id))
    dropped = await store.abort_upload(upload.upload_id)
    return None if dropped is None else {upload.backend: released}


async def all_parts(store: MetadataStore, upload_id: str) -> list[PartRecord]:
    """Every recorded part of an upload, ascending (at most 10,000, in pages)."""
    parts: list[PartRecord] = []
    marker = 0
    for _ in range(MAX_PART_NUMBER // MAX_LISTING + 1):
        page = await store.list_parts(upload_id, marker, MAX_LISTING)
        parts.extend(page)
        if len(page) < MAX_LISTING:
            break
        marker = page[-1].part_number
    return parts


class MultipartUploads:
    """The seven multipart operations over virtual buckets.

    :param gateway: the core (store, pool, health, usage, clock, settings and the key locks).
    :param min_part_size: smallest non-last part CompleteMultipartUpload accepts (S3's 5 MiB).
    :param id_factory: makes new upload ids.
    """

    def __init__(
        self,
        gateway: Gateway,
        min_part_size: int = MIN_PART_SIZE,
        id_factory: Callable[[], str] = new_upload_id,
    ) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.pool = gateway.pool
        self.clock = gateway.clock
        self.min_part_size = min_part_size
        self._new_id = id_factory
        #: The operations on uploads with copies (buckets with ``replicas``).
        self.replicated = ReplicatedUploads(self)

    # -- helpers -------------------------------------------------------------------------

    def _backend(self, name: str) -> IBackend:
        try:
            return self.pool.get(name)
        except KeyError:
            raise errors.ServiceUnavailable(
                "The storage backend holding this upload is not configured."
            ) from None

    def _backend_failed(self, name: str, error: BackendError, what: str) -> errors.S3Error:
        if isinstance(error, BackendUnavailable):
            self.gateway.health.mark_failure(name, error.detail)
        else:
            log.warn("{what} on {backend} failed: {detail}", what=what, backend=name,
                     detail=error.detail)
        return backend_error_to_s3(error)

    def has_room(self, name: str, size: int) -> bool:
        """Whether backend ``name`` can take ``size`` more bytes of an upload now.

        A drained backend still takes the parts of the uploads it holds: they finish there,
        then the drain moves the object (:mod:`s3balance.drain`).
        """
        if not isinstance(self.pool, RoomCheck):
            return True
        return any(
            candidate.name == name for candidate in self.pool.candidates(size, drained_too=True)
        )

    def _require_room(self, name: str, size: int) -> None:
        """:raises S3Error: ServiceUnavailable when ``name`` cannot take ``size`` more bytes."""
        if not self.has_room(name, size):
            raise errors.ServiceUnavailable(
                "The storage holding this upload cannot take this part now (full, unhealthy "
                "or over its write budget); retry later."
            )

    async def get_upload(self, bucket: str, key: str, upload_id: str) -> UploadRecord:
        """The upload ``upload_id`` of ``bucket``/``key``.

        :raises S3Error: NoSuchUpload (also for another bucket's or key's id), NoSuchBucket.
        """
        upload = await self.store.get_upload(upload_id) if upload_id else None
        if upload is None or upload.bucket != bucket or upload.key != key:
            await self.gateway.get_bucket(bucket)
            raise errors.NoSuchUpload(UploadId=upload_id)
        return upload

    # -- CreateMultipartUpload -----------------------------------------------------------

    async def create(
        self,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        checksum_algorithm: str | None = None,
        checksum_type: str | None = None,
        tags: Mapping[str, str] | None = None,
        acl: str = "private",
    ) -> UploadRecord:
        """Start an upload on the best backend with room for at least one part.

        A backend refusing the creation is replaced by the next choice (nothing was sent yet).

        :param checksum_algorithm: the upload's ``x-amz-checksum-algorithm`` (validated), and
            ``checksum_type`` its type (see :mod:`s3balance.multipart_checksums`).

        :raises S3Error: NoSuchBucket, KeyTooLongError, ServiceUnavailable.
        """
        validate_key(key)
        check_client_metadata(metadata)
        await self.gateway.get_bucket(bucket)
        new = NewUpload(
            bucket, key, headers, metadata, checksum_algorithm, checksum_type, tags, acl
        )
        if self.gateway.replicas.copies(bucket) > 1:
            return await self.replicated.create(new, MIN_FREE_FOR_UPLOAD)
        candidates = self.pool.choose(bucket, key, MIN_FREE_FOR_UPLOAD)
        if ENCRYPTION_HEADER in headers:
            candidates = self.gateway.encrypting(list(candidates))
        if not candidates:
            raise errors.InsufficientStorage()
        target, extra_metadata = self.gateway.new_location(bucket, key)
        settings = self.gateway.settings
        last_error: BackendError | None = None
        for attempt, name in enumerate(candidates[: max(1, settings.retry_attempts)]):
            if attempt:
                await task.deferLater(self.clock, settings.retry_delay, lambda: None)
            backend = self._backend(name)
            try:
                stored = new.stored_metadata(extra_metadata)
                backend_id = await backend.create_multipart_upload(target, dict(headers), stored)
            except BackendUnavailable as error:
                if not isinstance(error, BackendCannotEncrypt):
                    self.gateway.health.mark_failure(name, error.detail)
                last_error = error
                continue
            except BackendError as error:
                raise self._backend_failed(name, error, "creating an upload") from error
            self.pool.record_operation(name, "CreateMultipartUpload")
            upload = new.record(
                self._new_id(), target, [UploadCopy(name, backend_id)], self.clock.seconds()
            )
            return await self.record_upload(upload)
        assert last_error is not None
        raise backend_error_to_s3(last_error)

    def new_upload_id(self) -> str:
        return self._new_id()

    async def record_upload(self, upload: UploadRecord) -> UploadRecord:
        """Store a new upload whose backend uploads exist; they are aborted when it cannot be
        stored.  :raises S3Error: NoSuchBucket."""
        try:
            await self.store.create_upload(upload)
        except BaseException as error:
            await self.abort_quietly(upload.real_key, upload.all_copies())
            if isinstance(error, NoSuchBucketError):
                raise errors.NoSuchBucket(BucketName=upload.bucket) from None
            raise
        return upload

    async def abort_quietly(self, real_key: str, copies: Sequence[UploadCopy]) -> None:
        """Abort backend uploads no row references (a creation that did not complete)."""
        for copy in copies:
            try:
                await self.pool.get(copy.backend).abort_multipart_upload(
                    real_key, copy.backend_upload_id
                )
            except Exception as error:
                log.warn("could not abort upload {id} on {backend}: {error}",
                         id=copy.backend_upload_id, backend=copy.backend, error=error)

    # -- UploadPart / UploadPartCopy ---------------------------------------------------------

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        body: IBodyProducer,
        length: int,
        checksums: Callable[[], dict[str, str]] | None = None,
    ) -> PartRecord:
        """Stream one part to the upload's backend and record it (replacing that number).

        :param checksums: called once the body was read whole: the part's
            ``x-amz-checksum-*`` values to record.

        :raises S3Error: InvalidArgument, EntityTooLarge, NoSuchUpload, ServiceUnavailable
            (backend full or down), the body's own error (BadDigest, IncompleteBody...).
        """
        validate_part_number(part_number)
        if length > MAX_PART_SIZE:
            raise errors.EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(MAX_PART_SIZE))
        upload = await self.get_upload(bucket, key, upload_id)
        if upload.copies:
            return await self.replicated.upload_part(upload, part_number, body, length, checksums)
        backend = self._backend(upload.backend)
        self._require_room(upload.backend, length)
        release = self.pool.reserve(upload.backend, length)
        try:
            try:
                result = await backend.upload_part(
                    upload.real_key, upload.backend_upload_id, part_number, body, length
                )
            except BackendError as error:
                raise self._backend_failed(upload.backend, error, "uploading a part") from error
            self.pool.record_operation(upload.backend, "UploadPart", bytes_in=result.size)
            return await self.record_part(upload, result, checksums() if checksums else None)
        finally:
            release()

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        source: ObjectRecord,
        byte_range: tuple[int, int] | None,
    ) -> PartRecord:
        """Make a part from (a range of) a visible object: server-side when the source is on the
        upload's backend, streamed from the source's backend otherwise.

        :param byte_range: inclusive, within the source (see :func:`parse_copy_range`).
        :raises S3Error: as :meth:`upload_part`; InvalidRange for a range beyond the source,
            NoSuchKey when the source's bytes are gone.
        """
        validate_part_number(part_number)
        if byte_range is not None and not 0 <= byte_range[0] <= byte_range[1] < source.size:
            raise errors.InvalidRange(
                RangeRequested=f"bytes={byte_range[0]}-{byte_range[1]}",
                ActualObjectSize=str(source.size),
            )
        size = source.size if byte_range is None else byte_range[1] - byte_range[0] + 1
        if size > MAX_PART_SIZE:
            raise errors.InvalidRequest(
                "The specified copy source is larger than the maximum allowable size for a copy "
                "source: 5368709120"
            )
        upload = await self.get_upload(bucket, key, upload_id)
        if upload.copies:
            return await self.replicated.upload_part_copy(
                upload, part_number, source, byte_range, size
            )
        backend = self._backend(upload.backend)
        self._require_room(upload.backend, size)
        local = next((loc for loc in source.locations if loc.backend == upload.backend), None)
        release = self.pool.reserve(upload.backend, size)
        try:
            try:
                operation: Operation = "UploadPart"
                if local is not None and self.pool.is_available(local.backend):
                    operation = "UploadPartCopy"
                    async with self.gateway.holding_source(local):
                        result = await backend.upload_part_copy(
                            upload.real_key, upload.backend_upload_id, part_number,
                            local.real_key, byte_range,
                        )
                else:
                    result = await self._streamed_part(upload, backend, part_number, source,
                                                       byte_range)
            except BackendError as error:
                raise self._backend_failed(upload.backend, error, "copying a part") from error
            self.pool.record_operation(upload.backend, operation, bytes_in=result.size)
            return await self.record_part(upload, result)
        finally:
            release()

    async def _streamed_part(
        self,
        upload: UploadRecord,
        backend: IBackend,
        part_number: int,
        source: ObjectRecord,
        byte_range: tuple[int, int] | None,
    ) -> PartResult:
        async with self.gateway.copy_source(source, byte_range) as body:
            return await backend.upload_part(
                upload.real_key, upload.backend_upload_id, part_number, body, body.length
            )

    async def record_part(
        self,
        upload: UploadRecord,
        result: PartResult,
        checksums: dict[str, str] | None = None,
        backends: Sequence[str] | None = None,
    ) -> PartRecord:
        """Record a part the upload's backends confirmed (replacing one of the same number).

        :param backends: the backends the part counts on (default: every copy's).
        """
        previous = await self.store.list_parts(upload.upload_id, result.part_number - 1, 1)
        replaced = sum(p.size for p in previous if p.part_number == result.part_number)
        part = PartRecord(
            upload.upload_id, result.part_number, result.etag, result.size, self.clock.seconds(),
            dict(checksums or {}),
        )
        try:
            await self.store.put_part(part)
        except KeyError:
            # Completed or aborted while the part streamed: what the backend kept went with it.
            raise errors.NoSuchUpload(UploadId=upload.upload_id) from None
        for name in upload.backends if backends is None else backends:
            self.gateway.usage.adjust(name, result.size - replaced, 0)
        return part

    # -- CompleteMultipartUpload ---------------------------------------------------------

    async def complete(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        requested: Sequence[tuple[int, str]],
        *,
        checksum_request: CompletionChecksums | None = None,
        condition: Condition = UNCONDITIONAL,
    ) -> ObjectRecord:
        """Assemble the listed parts into the visible object.

        :param requested: ``(part number, ETag)`` pairs from the client's document (quotes
            optional in the ETag).
        :param checksum_request: what the request says about checksums (checked, see
            :func:`s3balance.multipart_checksums.completion_checksums`).
        :param condition: ``If-None-Match``/``If-Match`` on the key, checked before assembling
            and again at the commit.
        :raises S3Error: MalformedXML (no parts), InvalidPartOrder, InvalidPart, EntityTooSmall,
            NoSuchUpload, ServiceUnavailable, BadDigest, InvalidRequest, PreconditionFailed,
            NoSuchKey.
        """
        if not requested:
            raise errors.MalformedXML()
        numbers = [number for number, _ in requested]
        if any(later <= earlier for earlier, later in zip(numbers, numbers[1:], strict=False)):
            raise errors.InvalidPartOrder()
        for number in numbers:
            validate_part_number(number)
        try:
            upload = await self.get_upload(bucket, key, upload_id)
        except errors.S3Error as error:
            if error.code != "NoSuchUpload":
                raise
            done = await self.store.completed_upload(upload_id) if upload_id else None
            if done is None or done.bucket != bucket or done.key != key:
                raise
            return _record_of(done)
        await self.gateway.check_before_write(bucket, key, condition)
        stored_parts = await all_parts(self.store, upload_id)
        stored = {part.part_number: part for part in stored_parts}
        chosen: list[PartRecord] = []
        for number, etag in requested:
            part = stored.get(number)
            if part is None or bare_etag(part.etag) != bare_etag(etag):
                raise errors.InvalidPart(UploadId=upload_id, PartNumber=str(number),
                                         ETag=etag)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < self.min_part_size:
                raise errors.EntityTooSmall(
                    ProposedSize=str(part.size),
                    MinSizeAllowed=str(self.min_part_size),
                    PartNumber=str(part.part_number),
                    ETag=part.etag,
                )
        object_checksums, part_checksums = completion_checksums(
            upload, chosen, checksum_request or CompletionChecksums()
        )
        size = sum(part.size for part in chosen)
        if upload.copies:
            return await self.replicated.complete(
                upload, chosen, size, object_checksums, part_checksums, condition,
                stored_parts,
            )  # fmt: skip
        result = await self.assemble(upload, upload.all_copies()[0], chosen, size)
        if result.size != size:
            log.error(
                "backend {backend} assembled {real_key} as {got} bytes, parts say {want}",
                backend=upload.backend, real_key=upload.real_key, got=result.size, want=size,
            )
        record = self.completed_record(
            upload, chosen, result, (Location(upload.backend, upload.real_key),),
            object_checksums, part_checksums,
        )  # fmt: skip
        return await self.commit_completion(upload, record, stored_parts, condition)

    def completed_record(
        self,
        upload: UploadRecord,
        chosen: Sequence[PartRecord],
        result: PutResult,
        locations: tuple[Location, ...],
        object_checksums: dict[str, str],
        part_checksums: tuple[str, ...],
    ) -> ObjectRecord:
        """The row of a completed upload whose assembled bytes are at ``locations``."""
        etag = result.etag
        if not is_multipart_etag(etag):
            etag = multipart_etag([part.etag for part in chosen]) or etag
        return ObjectRecord(
            bucket=upload.bucket,
            key=upload.key,
            size=result.size,
            etag=etag,
            last_modified=self.clock.seconds(),
            headers=dict(upload.headers),
            metadata=dict(upload.metadata),
            checksums=object_checksums or dict(result.checksums),
            part_sizes=tuple(part.size for part in chosen),
            locations=locations,
            part_checksums=part_checksums,
            tags=dict(upload.tags),
            acl=upload.acl,
        )

    async def commit_completion(
        self,
        upload: UploadRecord,
        record: ObjectRecord,
        stored_parts: Sequence[PartRecord],
        condition: Condition,
    ) -> ObjectRecord:
        """Commit an assembled upload as ``record``, releasing its parts on the backends of
        ``record``'s locations (the copies left).  A concurrent completion of the same upload
        that won answers its result."""
        upload_id, parts_bytes = upload.upload_id, sum(p.size for p in stored_parts)
        try:
            await self.gateway.commit(record, condition, upload_id=upload_id)
        except errors.S3Error as error:
            if error.code == "NoSuchUpload":
                done = await self.store.completed_upload(upload_id)
                if done is not None and done.bucket == upload.bucket and done.key == upload.key:
                    return _record_of(done)  # a concurrent completion of the same upload won
            elif error.code in ("PreconditionFailed", "NoSuchKey"):
                # Lost a conditional race after the backend assembled it: the upload is spent.
                dropped = await self.store.abort_upload(upload_id)
                if dropped is not None:
                    for location in record.locations:
                        self.gateway.usage.adjust(location.backend, -parts_bytes, 0)
            raise
        for location in record.locations:
            self.gateway.usage.adjust(location.backend, -parts_bytes, 0)
        return record

    async def assemble(
        self, upload: UploadRecord, copy: UploadCopy, chosen: Sequence[PartRecord], size: int
    ) -> PutResult:
        """Complete one backend upload of ``upload``.  A backend that no longer knows the upload
        may have completed it for an attempt that died before its commit: the assembled object
        at the upload's real key is taken when it has the parts' total size.

        :raises S3Error: the backend's error, mapped for clients.
        """
        backend = self._backend(copy.backend)
        try:
            result = await backend.complete_multipart_upload(
                upload.real_key,
                copy.backend_upload_id,
                [(part.part_number, part.etag) for part in chosen],
            )
        except BackendError as error:
            assembled = await self._assembled_already(upload, copy, backend, size, error)
            if assembled is None:
                raise self._backend_failed(copy.backend, error, "completing an upload") \
                    from error
            return assembled
        self.pool.record_operation(copy.backend, "CompleteMultipartUpload")
        return result

    async def _assembled_already(
        self,
        upload: UploadRecord,
        copy: UploadCopy,
        backend: IBackend,
        size: int,
        error: BackendError,
    ) -> PutResult | None:
        if isinstance(error, BackendUnavailable):
            return None
        try:
            info = await backend.head_object(upload.real_key)
        except BackendError:
            return None
        self.pool.record_operation(copy.backend, "HeadObject")
        if info.size != size:
            return None
        log.info(
            "upload {upload_id} was assembled on {backend} by an earlier attempt; committing it",
            upload_id=upload.upload_id, backend=copy.backend,
        )
        return PutResult(info.etag, info.size)

    # -- AbortMultipartUpload ------------------------------------------------------------

    async def abort(self, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload on its backend and in the store.

        :raises S3Error: NoSuchUpload, ServiceUnavailable (the row stays: retry later).
        """
        upload = await self.get_upload(bucket, key, upload_id)
        try:
            released = await discard_upload(self.store, self.pool, upload)
        except KeyError:
            raise self._backend_failed_missing() from None
        except BackendError as error:
            raise self._backend_failed(upload.backend, error, "aborting an upload") from error
        if released is None:
            raise errors.NoSuchUpload(UploadId=upload_id)
        for name, size in released.items():
            self.gateway.usage.adjust(name, -size, 0)

    def _backend_failed_missing(self) -> errors.S3Error:
        return errors.ServiceUnavailable(
            "The storage backend holding this upload is not configured."
        )

    # -- listings ------------------------------------------------------------------------

    async def list_parts(
        self, bucket: str, key: str, upload_id: str, part_number_marker: int, max_parts: int
    ) -> tuple[UploadRecord, list[PartRecord], bool]:
        """A page of an upload's parts: ``(upload, parts, is_truncated)``."""
        upload = await self.get_upload(bucket, key, upload_id)
        max_parts = min(max(max_parts, 0), MAX_LISTING)
        if max_parts == 0:
            return upload, [], False
        parts = await self.store.list_parts(upload_id, part_number_marker, max_parts + 1)
        return upload, parts[:max_parts], len(parts) > max_parts

    async def list_uploads(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        key_marker: str = "",
        upload_id_marker: str = "",
        max_uploads: int = MAX_LISTING,
    ) -> UploadPage:
        """A page of the bucket's uploads in progress. :raises S3Error: NoSuchBucket."""
        await self.gateway.get_bucket(bucket)
        max_uploads = min(max(max_uploads, 0), MAX_LISTING)
        if max_uploads == 0:
            return UploadPage([], [], False, None, None)
        try:
            return await self.store.list_uploads(
                bucket, prefix, delimiter, key_marker, upload_id_marker, max_uploads
            )
        except NoSuchBucketError:
            raise errors.NoSuchBucket(BucketName=bucket) from None


def _record_of(done: CompletedUpload) -> ObjectRecord:
    """What a repeated completion answers: the kept result."""
    return ObjectRecord(
        bucket=done.bucket,
        key=done.key,
        size=done.size,
        etag=done.etag,
        last_modified=done.completed_at,
        checksums=dict(done.checksums),
    )


__all__ = [
    "MAX_PART_SIZE",
    "MIN_FREE_FOR_UPLOAD",
    "MIN_PART_SIZE",
    "MultipartUploads",
    "all_parts",
    "discard_upload",
    "new_upload_id",
    "parse_copy_range",
]
