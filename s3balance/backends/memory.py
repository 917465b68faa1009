"""A backend that keeps objects in this process's memory (``path: ":memory:"``).

For tests and for an operator's dry run of a configuration: everything :class:`IBackend` promises
holds (streamed bodies with backpressure, ranges, multipart uploads, listings), but nothing
survives the process, and each process has its own objects (so not with ``server.workers`` above
1).  Bodies arrive through the same guard as on their way to an S3 service
(:class:`s3balance.backends.guardedbody.GuardedBody`: declared length, a failed body stores
nothing) and leave as a push producer, one chunk per reactor turn
(:class:`s3balance.backends.chunkedstream.ChunkedObjectStream`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.backends.chunkedstream import ChunkedObjectStream
from s3balance.backends.deferreds import returns_deferred
from s3balance.backends.guardedbody import GuardedBody
from s3balance.backends.interface import (
    BackendError,
    BackendInvalidPart,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    Capacity,
    IBackend,
    IObjectStream,
    ListedObject,
    ObjectInfo,
    PartResult,
    PresignNotSupported,
    PutResult,
)
from s3balance.backends.objectrules import (
    check_completion,
    check_part_number,
    in_key_range,
    key_bytes,
    refuse_encryption,
    resolve_range,
    stored_headers,
    stored_metadata,
)
from s3balance.etags import bare_etag, multipart_md5_etag, quoted_etag
from s3balance.net.stallwatch import StallWatch

#: The guard's stall timeout (see :meth:`MemoryBackend._receive`); never reached.
_NO_CONSUMER_STALL = 60.0


@dataclass(frozen=True)
class _Stored:
    """One stored object (or part): its bytes and what S3 keeps with them."""

    data: bytes
    md5: str
    etag: str
    last_modified: float
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class _Upload:
    key: str
    headers: dict[str, str]
    metadata: dict[str, str]
    parts: dict[int, _Stored] = field(default_factory=dict)


@implementer(IConsumer)
class _Chunks:
    """Where a body's bytes gather; the guard in front checks them before they count."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class _MemoryStream(ChunkedObjectStream):
    """A GET body sliced from the stored bytes, a chunk per reactor turn."""

    def __init__(self, reactor: Any, data: bytes, first: int, length: int, etag: str) -> None:
        super().__init__(first, length, len(data), etag)
        self._reactor = reactor
        self._data = memoryview(data)

    def _read(self, position: int, count: int) -> Deferred[bytes]:
        chunk = bytes(self._data[position : position + count])
        return deferLater(self._reactor, 0, lambda: chunk)


@implementer(IBackend)
class MemoryBackend:
    """Objects in a dictionary; see the module docstring.

    :param name: the configured bucket name.
    :param reactor: the reactor that paces bodies.
    """

    can_presign = False
    #: Nothing here encrypts at rest.
    can_encrypt = False

    def __init__(self, name: str, reactor: Any) -> None:
        self.name = name
        self._reactor = reactor
        self._objects: dict[str, _Stored] = {}
        self._uploads: dict[str, _Upload] = {}

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.name}>"

    async def _receive(self, body: IBodyProducer, length: int) -> tuple[bytes, str]:
        """The whole body and its MD5 once ``body`` succeeded with exactly ``length`` bytes.

        :raises BackendError: more or fewer bytes than declared; the body's own failure as it is.
        """
        # The guard's stall watch runs only while the consumer holds the body back, which a
        # list never does: waiting on the client is not a stall, so it never fires here.
        watch = StallWatch(self._reactor, _NO_CONSUMER_STALL)
        guard = GuardedBody(self.name, body, length, watch)
        sink = _Chunks()
        try:
            await guard.startProducing(sink)
        finally:
            watch.stop()
        assert guard.md5 is not None
        return b"".join(sink.chunks), guard.md5.hexdigest()

    def _require(self, key: str) -> _Stored:
        try:
            return self._objects[key]
        except KeyError:
            raise BackendNoSuchKey(self.name, "no such key") from None

    def _upload(self, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise BackendNoSuchUpload(self.name, "no such upload")
        return upload

    def _store(
        self,
        key: str,
        data: bytes,
        md5: str,
        etag: str,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> PutResult:
        self._objects[key] = _Stored(
            data, md5, etag, time.time(), stored_headers(headers), stored_metadata(metadata)
        )
        return PutResult(etag=etag, size=len(data))

    # -- objects -------------------------------------------------------------------------------

    @returns_deferred
    async def put_object(
        self,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> PutResult:
        refuse_encryption(self.name, headers)
        data, md5 = await self._receive(body, length)
        return self._store(key, data, md5, quoted_etag(md5), headers, metadata)

    @returns_deferred
    async def get_object(
        self, key: str, byte_range: tuple[int, int] | None = None
    ) -> IObjectStream:
        stored = self._require(key)
        first, last = resolve_range(self.name, byte_range, len(stored.data))
        return _MemoryStream(
            self._reactor, stored.data, first, last - first + 1, stored.etag
        )

    @returns_deferred
    async def head_object(self, key: str) -> ObjectInfo:
        stored = self._require(key)
        return ObjectInfo(
            key=key,
            size=len(stored.data),
            etag=stored.etag,
            last_modified=stored.last_modified,
            headers=dict(stored.headers),
            metadata=dict(stored.metadata),
        )

    def delete_object(self, key: str) -> Deferred[None]:
        self._objects.pop(key, None)
        return succeed(None)

    def can_copy_from(self, source: IBackend) -> bool:
        # Every in-memory backend lives in this process: a copy shares the immutable bytes.
        return isinstance(source, MemoryBackend)

    def _holder(self, source: IBackend | None) -> MemoryBackend:
        if source is None:
            return self
        if not isinstance(source, MemoryBackend):
            raise BackendError(self.name, f"cannot copy server-side from {source.name}")
        return source

    @returns_deferred
    async def copy_object(
        self,
        source_key: str,
        key: str,
        headers: dict[str, str],
        metadata: dict[str, str],
        source_backend: IBackend | None = None,
    ) -> PutResult:
        refuse_encryption(self.name, headers)
        source = self._holder(source_backend)._require(source_key)
        # The copy is one whole object: its ETag is the MD5 of the bytes, even from a multipart
        # source (as S3 and the local adapter do).
        return self._store(key, source.data, source.md5, quoted_etag(source.md5), headers, metadata)

    # -- multipart uploads ---------------------------------------------------------------------

    @returns_deferred
    async def create_multipart_upload(
        self, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> str:
        refuse_encryption(self.name, headers)
        upload_id = secrets.token_hex(16)
        self._uploads[upload_id] = _Upload(key, stored_headers(headers), stored_metadata(metadata))
        return upload_id

    def _add_part(self, upload: _Upload, part_number: int, data: bytes, md5: str) -> PartResult:
        upload.parts[part_number] = _Stored(data, md5, quoted_etag(md5), time.time())
        return PartResult(part_number, quoted_etag(md5), len(data))

    @returns_deferred
    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> PartResult:
        check_part_number(self.name, part_number)
        self._upload(key, upload_id)
        data, md5 = await self._receive(body, length)
        # Asked again: the upload may have been aborted while the body arrived.
        return self._add_part(self._upload(key, upload_id), part_number, data, md5)

    @returns_deferred
    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
        source_backend: IBackend | None = None,
    ) -> PartResult:
        check_part_number(self.name, part_number)
        upload = self._upload(key, upload_id)
        source = self._holder(source_backend)._require(source_key)
        first, last = resolve_range(self.name, byte_range, len(source.data))
        data = source.data[first : last + 1]
        md5 = source.md5 if len(data) == len(source.data) else _md5(data)
        return self._add_part(upload, part_number, data, md5)

    @returns_deferred
    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> PutResult:
        upload = self._upload(key, upload_id)
        check_completion(self.name, parts)
        chosen = []
        for number, etag in parts:
            part = upload.parts.get(number)
            if part is None or part.md5 != bare_etag(etag):
                raise BackendInvalidPart(self.name, f"part {number} with ETag {etag} not found")
            chosen.append(part)
        data = b"".join(part.data for part in chosen)
        etag = multipart_md5_etag([part.md5 for part in chosen])
        del self._uploads[upload_id]
        return self._store(key, data, _md5(data), etag, upload.headers, upload.metadata)

    def abort_multipart_upload(self, key: str, upload_id: str) -> Deferred[None]:
        upload = self._uploads.get(upload_id)
        if upload is not None and upload.key == key:
            del self._uploads[upload_id]
        return succeed(None)

    @returns_deferred
    async def list_parts(self, key: str, upload_id: str) -> list[PartResult]:
        upload = self._upload(key, upload_id)
        return [
            PartResult(number, part.etag, len(part.data))
            for number, part in sorted(upload.parts.items())
        ]

    # -- the bucket ----------------------------------------------------------------------------

    def list_objects(
        self, prefix: str, start_after: str = "", until: str | None = None
    ) -> Deferred[list[ListedObject]]:
        listed = [
            ListedObject(key, len(stored.data), stored.etag, stored.last_modified)
            for key, stored in self._objects.items()
            if key.startswith(prefix) and in_key_range(key, start_after, until)
        ]
        listed.sort(key=lambda entry: key_bytes(entry.key))
        return succeed(listed)

    def presign_get(self, key: str, expires_in: int, response_overrides: dict[str, str]) -> str:
        raise PresignNotSupported(self.name, "an in-memory backend has no URL")

    def probe(self, timeout: float) -> Deferred[None]:
        return succeed(None)

    def capacity(self) -> Deferred[Capacity]:
        # Memory is the process's; configured limits (max_size) are the core's business.
        return succeed(Capacity(None, None))

    def close(self) -> Deferred[None]:
        self._objects.clear()
        self._uploads.clear()
        return succeed(None)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
