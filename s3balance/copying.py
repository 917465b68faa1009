"""Copying one object's stored bytes from one backend location to another.

Repair re-creates lost and corrupt copies with it, and data-moving jobs (drain, rebalance) move
objects with it; neither's bookkeeping (claims, rows, metrics) is here.  A copy:

- HEADs the source first and refuses it (:class:`BackendError` naming the source backend) when
  its size is not the row's, or its ETag says its bytes are not the row's (:func:`etag_agrees`);
- is *server-side* when the target backend can read the source's bucket itself
  (:meth:`IBackend.can_copy_from`: one S3 service and account, local directories of this host,
  in-memory backends of this process): CopyObject, or UploadPartCopy part by part above the
  multipart threshold, and no byte passes through this process;
- is *streamed* otherwise: the source's GET feeds the target's PUT with backpressure
  (:class:`~s3balance.streams.StreamBodyProducer`), never buffered whole; above the threshold,
  one ranged GET per part feeds that part's UploadPart;
- goes multipart above ``multipart_threshold`` (5 GiB by default: what one PUT or CopyObject
  takes on S3), with the row's own part layout when it has a usable one (so the copy of a
  multipart object gets the row's ETag back), else parts of
  ``max(min(threshold, PART_SIZE), ceil(size / MAX_PARTS))``; a failure aborts the target's
  upload, so no upload is left behind;
- keeps the source's stored headers and metadata (what :mod:`s3balance.rebuild` reads back);
- checks the ETag the target reports when it can be compared, and deletes a copy that does not
  match (:func:`~s3balance.retirement.delete_unreferenced`: free, as every delete);
- counts every request it sends by its name (:meth:`BackendPool.record_operation`, classed by
  :mod:`s3balance.operations`): the source's HeadObject, a GetObject (its bytes out) on the
  source and a PutObject or UploadPart (its bytes in) on the target per streamed object or part,
  and each CopyObject, UploadPartCopy, Create, Complete and AbortMultipartUpload.  The
  target's room is reserved (:meth:`BackendPool.reserve`) while the copy runs, and the source
  location counts as being read (``holding``) so it is not deleted under the copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from s3balance.backends.interface import BackendError, ObjectInfo, PartResult
from s3balance.db.records import Location, ObjectRecord
from s3balance.etags import bare_etag, etag_agrees
from s3balance.logs import make_logger
from s3balance.multipart import MIN_PART_SIZE
from s3balance.pool import BackendPool
from s3balance.retirement import delete_unreferenced
from s3balance.streams import StreamBodyProducer

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "ObjectCopier",
    "part_ranges",
]

log = make_logger()

#: Above this size a copy goes multipart: what one PUT or CopyObject takes on S3.
MULTIPART_THRESHOLD = 5 * 1024**3
#: The most parts an S3 multipart upload may have.
MAX_PARTS = 10_000
#: The largest part S3 accepts.
MAX_PART_SIZE = 5 * 1024**3
#: Part size of a multipart copy (when the threshold is larger and the object has no layout of
#: its own): a failed part costs at most this much again.
PART_SIZE = 512 * 1024**2

def _layout_usable(part_sizes: Sequence[int], size: int) -> bool:
    """Whether an object's recorded part sizes can be a multipart copy's parts on S3."""
    return (
        0 < len(part_sizes) <= MAX_PARTS
        and sum(part_sizes) == size
        and all(0 < part <= MAX_PART_SIZE for part in part_sizes)
        and all(part >= MIN_PART_SIZE for part in part_sizes[:-1])
    )


def part_ranges(record: ObjectRecord, threshold: int) -> list[tuple[int, int]]:
    """The inclusive byte ranges of a multipart copy of ``record``: the row's own part layout
    when usable, else equal parts (see the module docstring)."""
    if _layout_usable(record.part_sizes, record.size):
        sizes = list(record.part_sizes)
    else:
        part = max(min(threshold, PART_SIZE), -(-record.size // MAX_PARTS), 1)
        sizes = [min(part, record.size - start) for start in range(0, record.size, part)]
    return _ranges(sizes)


def _ranges(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The inclusive byte ranges of consecutive parts of ``sizes``."""
    ranges = []
    first = 0
    for size in sizes:
        ranges.append((first, first + size - 1))
        first += size
    return ranges


def _has_parts(record: ObjectRecord) -> bool:
    """Whether ``record`` is a multipart object whose part sizes are known."""
    return len(record.part_sizes) > 1 and sum(record.part_sizes) == record.size


class ObjectCopier:
    """Copies objects' bytes between backend locations (see the module docstring).

    :param pool: the backends, their reservations and operation counts.
    :param holding: counts a reader of a location while the copy reads it
        (:meth:`Gateway.holding <s3balance.gateway.Gateway.holding>`).
    :param multipart_threshold: sizes above this are copied by multipart.
    """

    def __init__(
        self,
        pool: BackendPool,
        holding: Callable[[Location], AbstractAsyncContextManager[None]],
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        self.pool = pool
        self.holding = holding
        self.multipart_threshold = multipart_threshold

    def server_side(self, source: Location, target: Location) -> bool:
        """Whether a copy from ``source`` to ``target`` runs on the storage side."""
        return self.pool.get(target.backend).can_copy_from(self.pool.get(source.backend))

    async def copy(
        self, record: ObjectRecord, source: Location, target: Location, keep_parts: bool = False
    ) -> int:
        """Copy ``record``'s bytes from ``source`` to ``target`` (its real key, replacing what
        is there) with the source's stored headers and metadata; the bytes written.

        :param keep_parts: a multipart object (its ``part_sizes`` add up to its size) is
            streamed part by part with its own part sizes, whatever its size and wherever the
            backends are, so that the copy keeps the object's ETag on every service (a
            server-side copy gets another one on some): what a move (drain, rebalance) wants.
        :raises BackendError: either side failed (``error.backend`` names which), the source is
            not the row's object (size or ETag), or the target reported another ETag.
        """
        if source == target:
            raise ValueError(f"copying {source} onto itself")
        reader, writer = self.pool.get(source.backend), self.pool.get(target.backend)
        release = self.pool.reserve(target.backend, record.size)
        try:
            async with self.holding(source):
                info = await reader.head_object(source.real_key)
                self.pool.record_operation(source.backend, "HeadObject")
                _check_source(record, source, info)
                if keep_parts and _has_parts(record):
                    size, etag = await self._multipart(
                        source, target, info, _ranges(record.part_sizes), streamed=True
                    )
                elif record.size > self.multipart_threshold:
                    ranges = part_ranges(record, self.multipart_threshold)
                    size, etag = await self._multipart(source, target, info, ranges)
                elif writer.can_copy_from(reader):
                    size, etag = await self._copy_object(source, target, info)
                else:
                    size, etag = await self._stream(record, source, target, info)
        finally:
            release()
        if size != record.size or etag_agrees(record.etag, etag) is False:
            await delete_unreferenced(self.pool, target)
            raise BackendError(
                target.backend,
                f"the copy has {size} bytes and ETag {etag}, not {record.size} and {record.etag}",
            )
        return size

    async def _copy_object(
        self, source: Location, target: Location, info: ObjectInfo
    ) -> tuple[int, str]:
        reader, writer = self.pool.get(source.backend), self.pool.get(target.backend)
        result = await writer.copy_object(
            source.real_key, target.real_key, dict(info.headers), dict(info.metadata),
            source_backend=reader,
        )  # fmt: skip
        self.pool.record_operation(target.backend, "CopyObject")
        return result.size, result.etag

    async def _stream(
        self, record: ObjectRecord, source: Location, target: Location, info: ObjectInfo
    ) -> tuple[int, str]:
        stream = await self.pool.get(source.backend).get_object(source.real_key)
        producer = StreamBodyProducer(stream)
        try:
            _check_stream_etag(source, info, stream.etag)
            result = await self.pool.get(target.backend).put_object(
                target.real_key, producer, record.size, dict(info.headers), dict(info.metadata)
            )
        finally:
            producer.discard()
        self.pool.record_operation(source.backend, "GetObject", bytes_out=record.size)
        self.pool.record_operation(target.backend, "PutObject", bytes_in=result.size)
        return result.size, result.etag

    async def _multipart(
        self,
        source: Location,
        target: Location,
        info: ObjectInfo,
        ranges: Sequence[tuple[int, int]],
        streamed: bool = False,
    ) -> tuple[int, str]:
        """A multipart copy of the byte ``ranges``, server-side part by part (unless
        ``streamed``) or streamed from ranged GETs; the target's upload is aborted on any
        failure."""
        reader, writer = self.pool.get(source.backend), self.pool.get(target.backend)
        server_side = not streamed and writer.can_copy_from(reader)
        upload_id = await writer.create_multipart_upload(
            target.real_key, dict(info.headers), dict(info.metadata)
        )
        self.pool.record_operation(target.backend, "CreateMultipartUpload")
        try:
            parts: list[tuple[int, str]] = []
            for number, byte_range in enumerate(ranges, start=1):
                if server_side:
                    part = await writer.upload_part_copy(
                        target.real_key, upload_id, number, source.real_key, byte_range,
                        source_backend=reader,
                    )  # fmt: skip
                    self.pool.record_operation(target.backend, "UploadPartCopy")
                else:
                    part = await self._stream_part(
                        source, target, info, upload_id, number, byte_range
                    )
                parts.append((number, part.etag))
            result = await writer.complete_multipart_upload(target.real_key, upload_id, parts)
            self.pool.record_operation(target.backend, "CompleteMultipartUpload")
        except BaseException:
            await self._abort(target, upload_id)
            raise
        return result.size, result.etag

    async def _stream_part(
        self,
        source: Location,
        target: Location,
        info: ObjectInfo,
        upload_id: str,
        number: int,
        byte_range: tuple[int, int],
    ) -> PartResult:
        stream = await self.pool.get(source.backend).get_object(source.real_key, byte_range)
        producer = StreamBodyProducer(stream)
        length = byte_range[1] - byte_range[0] + 1
        try:
            _check_stream_etag(source, info, stream.etag)
            part = await self.pool.get(target.backend).upload_part(
                target.real_key, upload_id, number, producer, length
            )
        finally:
            producer.discard()
        self.pool.record_operation(source.backend, "GetObject", bytes_out=length)
        self.pool.record_operation(target.backend, "UploadPart", bytes_in=part.size)
        return part

    async def _abort(self, target: Location, upload_id: str) -> None:
        try:
            await self.pool.get(target.backend).abort_multipart_upload(target.real_key, upload_id)
            self.pool.record_operation(target.backend, "AbortMultipartUpload")
        except BackendError as error:
            log.warn(
                "copy to {backend}: cannot abort the upload of {real_key}: {error}",
                backend=target.backend, real_key=target.real_key, error=error,
            )  # fmt: skip

def _check_source(record: ObjectRecord, source: Location, info: ObjectInfo) -> None:
    """:raises BackendError: the source does not hold the row's bytes (size, ETag)."""
    if info.size != record.size:
        raise BackendError(source.backend, f"holds {info.size} bytes, not {record.size}")
    if etag_agrees(record.etag, info.etag) is False:
        raise BackendError(source.backend, f"holds ETag {info.etag}, not {record.etag}")


def _check_stream_etag(source: Location, info: ObjectInfo, etag: str | None) -> None:
    """:raises BackendError: the object read is not the one HEAD described."""
    if etag and info.etag and bare_etag(etag) != bare_etag(info.etag):
        raise BackendError(source.backend, f"changed during the copy ({info.etag} -> {etag})")
