"""Multipart uploads into a bucket with ``replicas: N``: one backend upload per copy.

The design follows a replicated PUT (:mod:`s3balance.replicated`), part by part:

- **CreateMultipartUpload** asks the pool for N backends as a replicated PUT does
  (:meth:`~s3balance.pool.BackendPool.choose_replicas`: distinct backends, distinct zones first)
  and creates an upload on each, at one real key (one write id: a rebuild sees the completed
  copies as one object).  The upload's row records every copy.  When some refuse, the others are
  aborted and other backends tried, as for single uploads; with ``write_quorum: W`` the upload
  goes on with the copies made if at least W were.
- **UploadPart** streams the body to every copy at once through one
  :class:`~s3balance.fanout.FanOut` (paced by the slowest, never buffered whole).  The part is
  recorded when at least W copies took it (W = N by default) with one ETag (the MD5 of identical
  bytes, the same on every S3 service).  A copy that failed it is dropped from the upload, its
  backend upload queued in ``pending_deletions`` and aborted by the deletion sweep: the object
  will have fewer copies, and repair makes the others.  Fewer than W: nothing is recorded, no copy
  is dropped, and the client may send the part again (a part number sent again replaces the
  part on every copy).  UploadPartCopy does the same from the source object: server-side on each
  copy whose backend holds a replica of the source, and one read of the source streamed into
  the others.
- **CompleteMultipartUpload** completes every copy left.  When at least W completed (with the
  parts' size and multipart ETag), the object becomes visible with them as its locations and the
  others are dropped as above (a copy assembled wrong is deleted at once; one whose completion
  failed without saying whether it assembled is left to scrub, as for single uploads: a queued
  deletion of that key could remove a copy repair makes there later).  Fewer than W: nothing
  becomes visible, and the upload is abandoned: every copy's backend upload is aborted and its
  key deleted, through the same queues, so a backend down now is cleaned up when it is back.
- **AbortMultipartUpload** and expiry abandon the upload likewise
  (:func:`s3balance.multipart.discard_upload`).

A copy that cannot take a part because its backend is full or unavailable is treated like one
that failed it.  ``write_quorum`` is read when each part arrives; when the copies left are fewer
(a reload raised it), all of them are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer

from s3balance import errors
from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    BackendCannotEncrypt,
    BackendError,
    BackendUnavailable,
    PartResult,
    PutResult,
    backend_error_to_s3,
)
from s3balance.db.records import Location, ObjectRecord, PartRecord, UploadCopy, UploadRecord
from s3balance.db.store import Condition, MetadataStore
from s3balance.etags import bare_etag, is_multipart_etag, multipart_etag
from s3balance.fanout import FanOut, ReplicaLost
from s3balance.gateway import Gateway, Pool
from s3balance.logs import make_logger
from s3balance.newupload import NewUpload
from s3balance.operations import Operation
from s3balance.replicated import abandon_the_others
from s3balance.retirement import remove_abandoned

__all__ = ["ReplicatedUploads"]

log = make_logger()

#: What one copy's attempt at a part gave: its result, or why it failed.
Outcome = PartResult | Failure


class UploadsCore(Protocol):
    """What these operations share with the multipart core
    (:class:`s3balance.multipart.MultipartUploads`)."""

    @property
    def gateway(self) -> Gateway: ...
    @property
    def store(self) -> MetadataStore: ...
    @property
    def pool(self) -> Pool: ...

    def new_upload_id(self) -> str: ...

    async def record_upload(self, upload: UploadRecord) -> UploadRecord: ...

    async def abort_quietly(self, real_key: str, copies: Sequence[UploadCopy]) -> None: ...

    def has_room(self, name: str, size: int) -> bool: ...

    async def record_part(
        self,
        upload: UploadRecord,
        result: PartResult,
        checksums: dict[str, str] | None = None,
        backends: Sequence[str] | None = None,
    ) -> PartRecord: ...

    async def assemble(
        self, upload: UploadRecord, copy: UploadCopy, chosen: Sequence[PartRecord], size: int
    ) -> PutResult: ...

    def completed_record(
        self,
        upload: UploadRecord,
        chosen: Sequence[PartRecord],
        result: PutResult,
        locations: tuple[Location, ...],
        object_checksums: dict[str, str],
        part_checksums: tuple[str, ...],
    ) -> ObjectRecord: ...

    async def commit_completion(
        self,
        upload: UploadRecord,
        record: ObjectRecord,
        stored_parts: Sequence[PartRecord],
        condition: Condition,
    ) -> ObjectRecord: ...


class ReplicatedUploads:
    """The multipart operations on uploads with copies (see the module docstring).

    :param uploads: the multipart core, whose helpers (backends, room, recording parts,
        assembling and committing) these share.
    """

    def __init__(self, uploads: UploadsCore) -> None:
        self.uploads = uploads
        self.gateway = uploads.gateway
        self.store = uploads.store
        self.pool = uploads.pool

    def _quorum(self, bucket: str, copies: int) -> int:
        """Copies a part or a completion needs: ``write_quorum``, at most the copies there are."""
        return max(1, min(self.gateway.replicas.quorum(bucket), copies))

    # -- CreateMultipartUpload -----------------------------------------------------------

    async def create(self, new: NewUpload, min_free: int) -> UploadRecord:
        """Create an upload on ``replicas`` backends at once, each with ``min_free`` bytes of
        room at least.

        :raises S3Error: InsufficientStorage (503) when fewer backends than copies can take a
            new upload, a backend's error mapped for clients, NoSuchBucket.
        """
        gateway = self.gateway
        bucket, key = new.bucket, new.key
        count = gateway.replicas.copies(bucket)
        quorum = self._quorum(bucket, count)
        refused: set[str] = set()
        if ENCRYPTION_HEADER in new.headers:
            everyone = gateway.pool.names()
            refused.update(set(everyone) - set(gateway.encrypting(everyone)))
        target, extra_metadata = gateway.new_location(bucket, key)
        stored = new.stored_metadata(extra_metadata)
        settings = gateway.settings
        last_error: BackendUnavailable | None = None
        for attempt in range(max(1, settings.retry_attempts)):
            names = gateway.pool.choose_replicas(bucket, key, min_free, count, refused)
            if len(names) < count:
                if last_error is not None:
                    break
                raise errors.InsufficientStorage(
                    f"This bucket keeps {count} copies of each object, and only {len(names)} "
                    "storage backends can take a new upload now."
                )
            if attempt:
                await task.deferLater(gateway.clock, settings.retry_delay, lambda: None)
            made, failures = await self._create_each(names, target, new.headers, stored)
            if len(made) == count or (failures and len(made) >= quorum):
                if failures:
                    log.warn(
                        "upload of {bucket}/{key} created with {made} of {count} copies "
                        "(write_quorum)",
                        bucket=bucket, key=key, made=len(made), count=count,
                    )  # fmt: skip
                upload = new.record(
                    self.uploads.new_upload_id(), target, made, gateway.clock.seconds()
                )
                return await self.uploads.record_upload(upload)
            await self.uploads.abort_quietly(target, made)
            for failure in failures:
                cause = failure.value
                if not isinstance(cause, BackendUnavailable):
                    if isinstance(cause, BackendError):
                        raise backend_error_to_s3(cause) from cause
                    failure.raiseException()
                refused.add(cause.backend)
                last_error = cause
        assert last_error is not None
        raise backend_error_to_s3(last_error)

    async def _create_each(
        self, names: Sequence[str], target: str, headers: Mapping[str, str],
        stored: Mapping[str, str],
    ) -> tuple[list[UploadCopy], list[Failure]]:  # fmt: skip
        """One backend upload on each of ``names`` at once: those made (in ``names``' order) and
        the failures."""
        creating = [
            defer.maybeDeferred(
                self.pool.get(name).create_multipart_upload, target, dict(headers), dict(stored)
            )
            for name in names
        ]
        outcomes = await defer.DeferredList(creating, consumeErrors=True)
        made: list[UploadCopy] = []
        failures: list[Failure] = []
        for name, (ok, value) in zip(names, outcomes, strict=True):
            if ok:
                assert isinstance(value, str)
                self.pool.record_operation(name, "CreateMultipartUpload")
                made.append(UploadCopy(name, value))
                continue
            assert isinstance(value, Failure)
            failures.append(value)
            cause = value.value
            if isinstance(cause, BackendUnavailable) and not isinstance(
                cause, BackendCannotEncrypt
            ):
                self.gateway.health.mark_failure(name, cause.detail)
        return made, failures

    # -- UploadPart / UploadPartCopy ------------------------------------------------------

    async def upload_part(
        self,
        upload: UploadRecord,
        part_number: int,
        body: IBodyProducer,
        length: int,
        checksums: Callable[[], dict[str, str]] | None,
    ) -> PartRecord:
        """Stream one part to every copy of ``upload`` at once and record it.

        :raises S3Error: ServiceUnavailable when fewer than the quorum can take it, the body's
            own error, a backend's error mapped for clients, NoSuchUpload.
        """
        targets, quorum = self._targets(upload, length)
        releases = [self.pool.reserve(copy.backend, length) for copy in targets]
        try:
            fan = FanOut(body, len(targets), quorum)
            puts = []
            for copy, branch in zip(targets, fan.branches, strict=True):
                put = defer.maybeDeferred(
                    self.pool.get(copy.backend).upload_part,
                    upload.real_key, copy.backend_upload_id, part_number, branch, length,
                )  # fmt: skip
                put.addErrback(abandon_the_others, fan, branch)
                puts.append(put)
            outcomes = await defer.DeferredList(puts, consumeErrors=True)
        finally:
            for release in releases:
                release()
        if fan.failed:
            raise self._part_failed(
                [value for _, value in outcomes if isinstance(value, Failure)], "uploading a part"
            )
        results = _outcomes(targets, outcomes)
        return await self._settle(upload, results, quorum, checksums() if checksums else None)

    async def upload_part_copy(
        self,
        upload: UploadRecord,
        part_number: int,
        source: ObjectRecord,
        byte_range: tuple[int, int] | None,
        size: int,
    ) -> PartRecord:
        """Make a part on every copy from (a range of) ``source``: server-side on a copy whose
        backend holds a replica of it, one streamed read of it feeding the others.

        :raises S3Error: as :meth:`upload_part`; NoSuchKey when the source changed meanwhile.
        """
        targets, quorum = self._targets(upload, size)
        here = {
            location.backend: location
            for location in source.locations
            if self.pool.is_available(location.backend)
        }
        server_side = [copy for copy in targets if copy.backend in here]
        streamed = [copy for copy in targets if copy.backend not in here]
        releases = [self.pool.reserve(copy.backend, size) for copy in targets]
        try:
            copying = [
                defer.ensureDeferred(
                    self._copy_here(upload, copy, part_number, here[copy.backend], byte_range)
                )
                for copy in server_side
            ]
            attempts: list[defer.Deferred[Any]] = [
                defer.DeferredList(copying, consumeErrors=True)
            ]
            if streamed:
                attempts.append(
                    defer.ensureDeferred(
                        self._stream_to(upload, streamed, part_number, source, byte_range)
                    )
                )
            outcomes = await defer.gatherResults(attempts, consumeErrors=True)
        finally:
            for release in releases:
                release()
        results = _outcomes(server_side, outcomes[0])
        if streamed:
            results.update(outcomes[1])
        return await self._settle(
            upload, results, quorum, None, copied_here={copy.backend for copy in server_side}
        )

    async def _copy_here(
        self,
        upload: UploadRecord,
        copy: UploadCopy,
        part_number: int,
        source: Location,
        byte_range: tuple[int, int] | None,
    ) -> PartResult:
        async with self.gateway.holding_source(source):
            return await self.pool.get(copy.backend).upload_part_copy(
                upload.real_key, copy.backend_upload_id, part_number, source.real_key,
                byte_range,
            )  # fmt: skip

    async def _stream_to(
        self,
        upload: UploadRecord,
        targets: Sequence[UploadCopy],
        part_number: int,
        source: ObjectRecord,
        byte_range: tuple[int, int] | None,
    ) -> dict[str, Outcome]:
        """One read of ``source`` written to every copy of ``targets`` at once (each may fail
        on its own: the quorum is judged over all copies).  When the source cannot be read,
        every one of them failed with that error."""
        try:
            async with self.gateway.copy_source(source, byte_range) as body:
                fan = FanOut(body, len(targets), 1)
                puts = []
                for copy, branch in zip(targets, fan.branches, strict=True):
                    put = defer.maybeDeferred(
                        self.pool.get(copy.backend).upload_part,
                        upload.real_key, copy.backend_upload_id, part_number, branch,
                        body.length,
                    )  # fmt: skip
                    put.addErrback(abandon_the_others, fan, branch)
                    puts.append(put)
                outcomes = await defer.DeferredList(puts, consumeErrors=True)
        except Exception:
            unreadable = Failure()
            return {copy.backend: unreadable for copy in targets}
        return _outcomes(targets, outcomes)

    def _targets(self, upload: UploadRecord, size: int) -> tuple[list[UploadCopy], int]:
        """The copies that can take ``size`` more bytes now, and the quorum over all copies.

        :raises S3Error: ServiceUnavailable when fewer than the quorum can.
        """
        copies = upload.all_copies()
        quorum = self._quorum(upload.bucket, len(copies))
        targets = [copy for copy in copies if self.uploads.has_room(copy.backend, size)]
        if len(targets) < quorum:
            raise errors.ServiceUnavailable(
                "The storage holding the copies of this upload cannot take this part now (full, "
                "unhealthy or over its write budget); retry later."
            )
        return targets, min(quorum, len(targets))

    async def _settle(
        self,
        upload: UploadRecord,
        results: dict[str, Outcome],
        quorum: int,
        checksums: dict[str, str] | None,
        copied_here: Collection[str] = (),
    ) -> PartRecord:
        """Record a part the quorum of copies took with one ETag; drop every other copy.

        :param copied_here: the backends whose part was an UploadPartCopy (others' an UploadPart).

        :raises S3Error: the failure of a copy when fewer than the quorum took it (nothing is
            recorded and no copy dropped: the part may be sent again).
        """
        stored = {name: r for name, r in results.items() if isinstance(r, PartResult)}
        for name, result in stored.items():
            operation: Operation = "UploadPartCopy" if name in copied_here else "UploadPart"
            self.pool.record_operation(name, operation, bytes_in=result.size)
        agreed = _agreeing(stored, upload.backends)
        if len(agreed) < quorum:
            failures = [r for r in results.values() if isinstance(r, Failure)]
            if failures:
                raise self._part_failed(failures, "uploading a part")
            log.error(
                "the copies of upload {upload_id} stored part {number} with different ETags: "
                "{etags}",
                upload_id=upload.upload_id, number=next(iter(stored.values())).part_number,
                etags=sorted({r.etag for r in stored.values()}),
            )  # fmt: skip
            raise errors.InternalError()
        kept = [name for name in upload.backends if name in agreed]
        await self._drop(upload, [n for n in upload.backends if n not in agreed], results)
        return await self.uploads.record_part(upload, agreed[kept[0]], checksums, kept)

    async def _drop(
        self, upload: UploadRecord, names: Sequence[str], results: Mapping[str, Any]
    ) -> None:
        """Drop the copies on ``names`` from the upload (their backend uploads are queued for
        the deletion sweep to abort).  :raises S3Error: NoSuchUpload."""
        if not names:
            return
        for name in names:
            cause = results.get(name)
            if isinstance(cause, Failure) and isinstance(cause.value, BackendUnavailable):
                if not isinstance(cause.value, BackendCannotEncrypt):
                    self.gateway.health.mark_failure(name, cause.value.detail)
        try:
            dropped = await self.store.drop_upload_copies(
                upload.upload_id, names, self.gateway.clock.seconds()
            )
        except KeyError:
            raise errors.NoSuchUpload(UploadId=upload.upload_id) from None
        for name, size in dropped.released.items():
            self.gateway.usage.adjust(name, -size, 0)
        log.warn(
            "upload {upload_id} of {bucket}/{key} dropped its copies on {names}; the object will "
            "have {left} copies until repair makes the others",
            upload_id=upload.upload_id, bucket=upload.bucket, key=upload.key,
            names=", ".join(sorted(names)), left=len(upload.backends) - len(names),
        )  # fmt: skip

    def _part_failed(self, failures: Sequence[Failure], what: str) -> errors.S3Error:
        """The client's error for a part the quorum did not take: the first failure that is not
        only the consequence of another (the body's own error, or a backend's mapped)."""
        causes = [f for f in failures if not f.check(ReplicaLost)] or list(failures)
        cause = causes[0].value
        if isinstance(cause, errors.S3Error):
            return cause
        if isinstance(cause, BackendError):
            if isinstance(cause, BackendUnavailable):
                if not isinstance(cause, BackendCannotEncrypt):
                    self.gateway.health.mark_failure(cause.backend, cause.detail)
            else:
                log.warn("{what} on {backend} failed: {detail}", what=what,
                         backend=cause.backend, detail=cause.detail)  # fmt: skip
            return backend_error_to_s3(cause)
        causes[0].raiseException()
        raise AssertionError("unreachable")

    # -- CompleteMultipartUpload ---------------------------------------------------------

    async def complete(
        self,
        upload: UploadRecord,
        chosen: Sequence[PartRecord],
        size: int,
        object_checksums: dict[str, str],
        part_checksums: tuple[str, ...],
        condition: Condition,
        stored_parts: Sequence[PartRecord],
    ) -> ObjectRecord:
        """Complete every copy and commit those that completed alike, at least the quorum.

        :raises S3Error: the failure of a copy when fewer than the quorum completed (the
            upload is abandoned then: nothing is visible, no copy is left); as
            :meth:`s3balance.multipart.MultipartUploads.commit_completion`.
        """
        copies = upload.all_copies()
        quorum = self._quorum(upload.bucket, len(copies))
        assembling = [
            defer.ensureDeferred(self.uploads.assemble(upload, copy, chosen, size))
            for copy in copies
        ]
        outcomes = await defer.DeferredList(assembling, consumeErrors=True)
        wanted = bare_etag(multipart_etag([part.etag for part in chosen]) or "")
        done: dict[str, PutResult] = {}
        failures: list[Failure] = []
        for copy, (ok, value) in zip(copies, outcomes, strict=True):
            if not ok:
                assert isinstance(value, Failure)
                failures.append(value)
            elif value.size != size or (
                is_multipart_etag(value.etag) and wanted and bare_etag(value.etag) != wanted
            ):
                log.error(
                    "backend {backend} assembled {real_key} as {got} bytes with ETag {etag}; "
                    "the parts say {want} bytes, {wanted}: that copy is dropped",
                    backend=copy.backend, real_key=upload.real_key, got=value.size,
                    etag=value.etag, want=size, wanted=wanted,
                )  # fmt: skip
                failures.append(Failure(errors.InternalError()))
                await self.gateway.retirement.delete_bytes(copy.backend, upload.real_key)
            else:
                done[copy.backend] = value
        if len(done) < quorum:
            await self._abandon(upload)
            cause = failures[0].value
            if isinstance(cause, errors.S3Error):
                raise cause
            failures[0].raiseException()
        kept = [copy.backend for copy in copies if copy.backend in done]
        await self._drop(upload, [copy.backend for copy in copies if copy.backend not in done], {})
        record = self.uploads.completed_record(
            upload, chosen, done[kept[0]],
            tuple(Location(name, upload.real_key) for name in kept),
            object_checksums, part_checksums,
        )  # fmt: skip
        return await self.uploads.commit_completion(upload, record, stored_parts, condition)

    async def _abandon(self, upload: UploadRecord) -> None:
        """Give up an upload whose completion failed: forget it, and abort every copy (deleting
        what any assembled) now, or later in the deletion sweep."""
        abandoned = await self.store.abandon_upload(upload.upload_id, self.gateway.clock.seconds())
        if abandoned is None:
            return
        for name, size in abandoned.released.items():
            self.gateway.usage.adjust(name, -size, 0)
        await remove_abandoned(self.store, self.pool, abandoned.queued)
        # No row has this upload's real key: whatever a copy assembled there goes.
        await self.gateway.retirement.discard(
            [Location(name, upload.real_key) for name in abandoned.upload.backends]
        )
        log.warn(
            "upload {upload_id} of {bucket}/{key} completed on fewer copies than write_quorum; "
            "abandoned",
            upload_id=upload.upload_id, bucket=upload.bucket, key=upload.key,
        )  # fmt: skip


def _outcomes(
    targets: Sequence[UploadCopy], outcomes: Sequence[tuple[bool, Any]]
) -> dict[str, Outcome]:
    """Each copy's result or failure, by backend."""
    return {copy.backend: value for copy, (_, value) in zip(targets, outcomes, strict=True)}


def _agreeing(stored: Mapping[str, PartResult], order: Sequence[str]) -> dict[str, PartResult]:
    """The copies whose part has the ETag and size most copies gave (ties: the first copy's)."""
    votes: dict[tuple[str, int], list[str]] = {}
    for name in order:
        if name in stored:
            result = stored[name]
            votes.setdefault((bare_etag(result.etag), result.size), []).append(name)
    if not votes:
        return {}
    best = max(votes.values(), key=len)
    return {name: stored[name] for name in best}
