"""The S3 backend adapter: one real bucket on an S3-compatible service.

What each :class:`IBackend` operation means in S3 requests lives here: which request to send,
what its answer says about the object, encryption that must be confirmed, pages to follow.
Sending and reading the requests is :class:`s3balance.backends.s3client.S3Client`; XML answers
are read by :mod:`s3balance.backends.s3xml`, headers by :mod:`s3balance.backends.s3headers`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from s3balance.backends import s3xml
from s3balance.backends.deferreds import probe_within, returns_deferred
from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    BackendAccessDenied,
    BackendCannotEncrypt,
    BackendError,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    BackendUnavailable,
    Capacity,
    IBackend,
    IObjectStream,
    ListedObject,
    ObjectInfo,
    PartResult,
    PutResult,
)
from s3balance.backends.objectrules import in_key_range
from s3balance.backends.putetag import PutETags
from s3balance.backends.s3answer import (
    Answer,
    answer_error,
    http_date,
    require_etag,
    result_etag,
)
from s3balance.backends.s3client import S3Client, S3Request
from s3balance.backends.s3headers import (
    encryption_asked,
    reported_checksums,
    request_headers,
    stored_headers_and_metadata,
)
from s3balance.backends.s3signing import BucketAddress, Signer, aws_endpoint
from s3balance.backends.s3stream import S3ObjectStream, content_range_total
from s3balance.config import BucketConfig
from s3balance.etags import quoted_etag
from s3balance.net.httpclient import ConnectionPool, make_http_pool
from s3balance.net.responses import first_header


@implementer(IBackend)
class S3Backend:
    """One real bucket on an S3-compatible service.

    :param endpoint: ``http(s)://host[:port]``; empty means AWS in ``region``.
    :param path_style: ``endpoint/bucket/key`` instead of ``bucket.host/key``.
    :param pool: a shared connection pool; without one the backend makes (and closes) its own.
    :param ca_bundle: a PEM file of CA certificates trusted for this endpoint instead of the
        system's (private endpoints).
    """

    can_presign = True
    #: S3 services encrypt with SSE-S3 when asked; each write checks that the service confirmed.
    can_encrypt = True

    def __init__(
        self,
        name: str,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        path_style: bool,
        reactor: Any,
        pool: ConnectionPool | None = None,
        ca_bundle: str | None = None,
        connect_timeout: float = 10,
        stall_timeout: float = 60,
    ) -> None:
        self.name = name
        self.region = region or "us-east-1"
        self.address = BucketAddress.from_endpoint(
            endpoint or aws_endpoint(self.region), bucket, path_style
        )
        self._reactor = reactor
        self._own_pool = pool is None
        self._pool = pool if pool is not None else make_http_pool(reactor)
        self._client = S3Client(
            name,
            self.address,
            Signer(access_key, secret_key, self.region),
            reactor,
            self._pool,
            ca_bundle,
            connect_timeout,
            stall_timeout,
        )
        self._put_etags = PutETags(name)
        #: What two buckets must share for one to copy from the other server-side: the
        #: service (endpoint) and the account (credentials; the secret only as a digest).
        self._service = (
            self.address.scheme,
            self.address.host,
            self.address.port,
            self.address.base_path,
            access_key,
            hashlib.sha256(secret_key.encode()).hexdigest(),
        )

    @classmethod
    def from_config(
        cls,
        config: BucketConfig,
        reactor: Any,
        pool: ConnectionPool | None,
        stall_timeout: float = 60,
    ) -> S3Backend:
        """A backend for a ``buckets[]`` entry; an endpoint without scheme gets ``https://``
        unless ``use_ssl`` is false.

        :param stall_timeout: ``server.write_timeout``: how long the backend may make no
            progress on a transfer before it is failed."""
        endpoint = config.endpoint.strip()
        if endpoint and "://" not in endpoint:
            endpoint = ("https://" if config.use_ssl else "http://") + endpoint
        return cls(
            name=config.name,
            endpoint=endpoint,
            bucket=config.real_name,
            region=config.region,
            access_key=config.access_key_id,
            secret_key=config.secret_access_key,
            path_style=config.path_style,
            reactor=reactor,
            pool=pool,
            ca_bundle=config.ca_bundle,
            stall_timeout=stall_timeout,
        )

    def __repr__(self) -> str:
        return f"<S3Backend {self.name}>"

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
        encryption = encryption_asked(headers)
        try:
            answer, md5 = await self._client.upload(
                self.address.object_path(key), None, request_headers(headers, metadata),
                body, length, self._put_etags.hash_next,
            )
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        await self._check_encrypted(encryption, answer, key)
        etag = await self._put_etags.etag(
            answer.header("etag"), md5, lambda: self._etag_of(key), lambda: self.delete_object(key)
        )
        return PutResult(etag=etag, size=length, checksums=reported_checksums(answer.headers))

    async def _etag_of(self, key: str) -> str:
        return (await self.head_object(key)).etag

    @returns_deferred
    async def get_object(
        self, key: str, byte_range: tuple[int, int] | None = None
    ) -> IObjectStream:
        headers = {}
        if byte_range is not None:
            headers["range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        request = S3Request("GET", self.address.object_path(key), None, headers)
        response, watch = await self._client.open(request, retry=True)
        if response.code not in (200, 206):
            raise answer_error(self.name, await self._client.read(response, watch))
        # Until the caller takes the body, waiting is not the backend's stall.
        watch.suspend()
        length = response.length
        size = content_range_total(first_header(response, "content-range"))
        if size is None:
            size = length if length is not UNKNOWN_LENGTH else 0
        etag = first_header(response, "etag")
        return S3ObjectStream(
            self.name, response, watch, size, quoted_etag(etag) if etag else ""
        )

    @returns_deferred
    async def head_object(self, key: str) -> ObjectInfo:
        answer = await self._client.call("HEAD", self.address.object_path(key), retry=True)
        stored, metadata = stored_headers_and_metadata(answer.headers)
        size_text = answer.header("content-length")
        return ObjectInfo(
            key=key,
            size=int(size_text) if size_text else 0,
            etag=require_etag(self.name, answer),
            last_modified=http_date(answer.header("last-modified")),
            headers=stored,
            metadata=metadata,
        )

    @returns_deferred
    async def delete_object(self, key: str) -> None:
        try:
            await self._client.call(
                "DELETE", self.address.object_path(key), retry=True, ok=(200, 204)
            )
        except BackendNoSuchKey:
            pass

    def can_copy_from(self, source: IBackend) -> bool:
        return isinstance(source, S3Backend) and source._service == self._service

    def _copy_source(self, source_key: str, source: IBackend | None) -> str:
        """``x-amz-copy-source`` for ``source_key`` in ``source``'s bucket (this one's when
        ``None``)."""
        if source is None:
            return self.address.copy_source(source_key)
        if not isinstance(source, S3Backend) or not self.can_copy_from(source):
            raise BackendError(self.name, f"cannot copy server-side from {source.name}")
        return source.address.copy_source(source_key)

    @returns_deferred
    async def copy_object(
        self,
        source_key: str,
        key: str,
        headers: dict[str, str],
        metadata: dict[str, str],
        source_backend: IBackend | None = None,
    ) -> PutResult:
        to_send = request_headers(headers, metadata)
        to_send["x-amz-copy-source"] = self._copy_source(source_key, source_backend)
        to_send["x-amz-metadata-directive"] = "REPLACE"
        encryption = encryption_asked(headers)
        try:
            answer = await self._client.call(
                "PUT", self.address.object_path(key), None, to_send
            )
            etag = result_etag(self.name, answer)
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        await self._check_encrypted(encryption, answer, key)
        # CopyObject does not report the size; the copy is there now, so ask.
        info = await self.head_object(key)
        return PutResult(etag=etag, size=info.size, checksums=reported_checksums(answer.headers))

    # -- encryption ----------------------------------------------------------------------------

    def _encryption_refused(self, encryption: str | None, error: BackendError) -> BackendError:
        """What a failed encrypted write means: the service's refusal of the encryption (a 5xx
        answer other than 503 throttling, or a 4xx naming encryption or NotImplemented; services
        without SSE-S3 answer either way), or ``error`` itself."""
        if encryption is None or isinstance(error, (BackendAccessDenied, BackendNoSuchKey)):
            return error
        detail = error.detail
        if not detail.startswith("HTTP ") or detail.startswith("HTTP 503"):
            return error  # not an answer (connection failure), or throttling
        if not detail.startswith("HTTP 5") and "NotImplemented" not in detail and (
            "ncrypt" not in detail
        ):
            return error  # a 4xx about something else (the key, the size...)
        started = isinstance(error, BackendUnavailable) and error.body_started
        return BackendCannotEncrypt(self.name, f"encrypted write refused: {detail}", started)

    async def _check_encrypted(self, encryption: str | None, answer: Answer, key: str) -> None:
        """A write that asked for encryption must have been answered with it; otherwise the
        service ignored the header, and the unencrypted object it stored is removed.

        :raises BackendCannotEncrypt:
        """
        if encryption is None or answer.header(ENCRYPTION_HEADER) == encryption:
            return
        await self.delete_object(key)
        raise BackendCannotEncrypt(
            self.name, "the service stored the object without confirming encryption", True
        )

    # -- multipart uploads ---------------------------------------------------------------------

    @returns_deferred
    async def create_multipart_upload(
        self, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> str:
        encryption = encryption_asked(headers)
        try:
            answer = await self._client.call(
                "POST",
                self.address.object_path(key),
                [("uploads", "")],
                request_headers(headers, metadata),
                b"",
            )
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        try:
            upload_id = s3xml.parse_initiate(answer.body)
        except s3xml.MalformedResponse as e:
            raise BackendError(self.name, str(e)) from e
        if encryption is not None and answer.header(ENCRYPTION_HEADER) != encryption:
            await self.abort_multipart_upload(key, upload_id)
            raise BackendCannotEncrypt(
                self.name, "the service did not confirm encryption of the upload"
            )
        return upload_id

    @returns_deferred
    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> PartResult:
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        # No MD5: a part's ETag has to come from the backend (CompleteMultipartUpload names it).
        answer, _ = await self._client.upload(
            self.address.object_path(key), query, {}, body, length
        )
        return PartResult(part_number, require_etag(self.name, answer), length)

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
        headers = {"x-amz-copy-source": self._copy_source(source_key, source_backend)}
        if byte_range is not None:
            headers["x-amz-copy-source-range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            size = byte_range[1] - byte_range[0] + 1
        else:
            size = (await (source_backend or self).head_object(source_key)).size
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        answer = await self._client.call("PUT", self.address.object_path(key), query, headers)
        return PartResult(part_number, result_etag(self.name, answer), size)

    @returns_deferred
    async def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> PutResult:
        # Not retried: a repeat after a lost answer would find the upload gone (NoSuchUpload).
        answer = await self._client.call(
            "POST",
            self.address.object_path(key),
            [("uploadId", upload_id)],
            {"content-type": "application/xml"},
            s3xml.build_complete_body(parts),
        )
        etag = result_etag(self.name, answer)
        info = await self.head_object(key)
        return PutResult(etag=etag, size=info.size, checksums=reported_checksums(answer.headers))

    @returns_deferred
    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._client.call(
                "DELETE",
                self.address.object_path(key),
                [("uploadId", upload_id)],
                retry=True,
                ok=(200, 204),
            )
        except BackendNoSuchUpload:
            pass

    @returns_deferred
    async def list_parts(self, key: str, upload_id: str) -> list[PartResult]:
        parts: list[PartResult] = []
        marker = ""
        for _ in range(10_001):  # at most 10,000 parts, at least one per page
            query = [("uploadId", upload_id)]
            if marker:
                query.append(("part-number-marker", marker))
            answer = await self._client.call(
                "GET", self.address.object_path(key), query, retry=True
            )
            try:
                page = s3xml.parse_list_parts(answer.body)
            except s3xml.MalformedResponse as e:
                raise BackendError(self.name, str(e)) from e
            parts.extend(page.parts)
            if not page.truncated or not page.next_marker or page.next_marker == marker:
                break
            marker = page.next_marker
        return sorted(parts, key=lambda part: part.part_number)

    # -- the bucket ----------------------------------------------------------------------------

    @returns_deferred
    async def list_objects(
        self, prefix: str, start_after: str = "", until: str | None = None
    ) -> list[ListedObject]:
        objects: list[ListedObject] = []
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            if token:
                query.append(("continuation-token", token))
            elif start_after:
                query.append(("start-after", start_after))
            answer = await self._client.call(
                "GET", self.address.bucket_path(), query, retry=True
            )
            try:
                page = s3xml.parse_list_objects_v2(answer.body)
            except s3xml.MalformedResponse as e:
                raise BackendError(self.name, str(e)) from e
            objects.extend(page.objects)
            if until is not None and objects and not in_key_range(objects[-1].key, "", until):
                # Past ``until``: the rest of the listing is too.
                return [entry for entry in objects if in_key_range(entry.key, "", until)]
            if not page.truncated:
                return objects
            if not page.continuation_token or page.continuation_token == token:
                raise BackendError(self.name, "truncated listing without a new token")
            token = page.continuation_token

    def presign_get(self, key: str, expires_in: int, response_overrides: dict[str, str]) -> str:
        for name in response_overrides:
            if not name.startswith("response-"):
                raise ValueError(f"not a response override: {name!r}")
        return self._client.presign(
            self.address.object_path(key), expires_in, response_overrides
        )

    def probe(self, timeout: float) -> Deferred[None]:
        return probe_within(self.name, self._probe(), timeout, self._reactor)

    @returns_deferred
    async def _probe(self) -> None:
        await self._client.call("HEAD", self.address.bucket_path())

    def capacity(self) -> Deferred[Capacity]:
        # S3 has no notion of free space; configured limits are the core's business.
        return succeed(Capacity(None, None))

    def close(self) -> Deferred[None]:
        if self._own_pool:
            return self._pool.closeCachedConnections()
        return succeed(None)
