"""Signed requests to one bucket of an S3 service, over pooled persistent connections.

Object bytes go through :class:`s3balance.net.httpclient.HTTPClient` in both directions and are
never held whole.  Every request is signed by :mod:`s3balance.backends.s3signing` (tested
against botocore).

Timeouts: the endpoint's connect timeout bounds connecting; a stall watch aborts a request when
nothing moves for ``stall_timeout`` while the backend is the one expected to act (answering,
reading the body we send, sending the body we read).  Waiting for the client (a slow upload, a
paused download) is not a backend stall and does not count.

What the requests mean for S3 (which to send, what an answer says about the object) is the
adapter's, :class:`s3balance.backends.s3.S3Backend`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.task import deferLater
from twisted.web.iweb import IBodyProducer, IResponse

from s3balance.backends.guardedbody import GuardedBody, drain_empty
from s3balance.backends.interface import BackendUnavailable
from s3balance.backends.s3answer import Answer, answer_error
from s3balance.backends.s3signing import BucketAddress, Signer
from s3balance.net.httpclient import ConnectionPool, HTTPClient
from s3balance.net.responses import BodyCollector, close_body, describe_failure
from s3balance.net.stallwatch import StallWatch

#: Delay before the single retry of a request that carries no body.
RETRY_DELAY = 0.25
#: Error and XML answers are small; refuse to buffer more than this from a misbehaving server.
MAX_CONTROL_BODY = 32 * 1024 * 1024
#: Statuses that mean a PUT was stored: S3 answers 200, WebDAV-style stores 201 or 204.
PUT_SUCCESS = (200, 201, 204)

Query = list[tuple[str, str]]


@dataclass(frozen=True)
class S3Request:
    """One request without a streamed body: a control call, or a GET whose body is streamed
    back.  ``path`` comes from :class:`BucketAddress` (``object_path``, ``bucket_path``)."""

    method: str
    path: str
    query: Query | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None


class S3Client:
    """Sends signed requests for one bucket and reads their answers.

    :param name: the backend's configured name, for its exceptions.
    :param pool: the connection pool (shared between backends, or the adapter's own).
    :param ca_bundle: a PEM file of CA certificates trusted instead of the system's.
    """

    def __init__(
        self,
        name: str,
        address: BucketAddress,
        signer: Signer,
        reactor: Any,
        pool: ConnectionPool,
        ca_bundle: str | None,
        connect_timeout: float,
        stall_timeout: float,
    ) -> None:
        self.name = name
        self.address = address
        self._signer = signer
        self._reactor = reactor
        self._stall_timeout = stall_timeout
        self._http = HTTPClient(
            reactor,
            pool,
            address.scheme,
            address.connect_host,
            address.connect_port,
            connect_timeout,
            ca_bundle,
        )

    def presign(self, path: str, expires_in: int, response_overrides: dict[str, str]) -> str:
        """A presigned GET URL for ``path`` (query-string SigV4)."""
        url = self.address.url(path)
        return self._signer.presign(url, self.address.netloc, expires_in, response_overrides)

    def _prepare(self, request: S3Request, streamed: bool) -> tuple[str, dict[str, str]]:
        """The request target and the signed headers (sent as the UTF-8 text they were signed
        as)."""
        query = self.address.query_string(request.query)
        to_sign = {"Host": self.address.netloc}
        if request.headers:
            to_sign.update(request.headers)
        signed = self._signer.sign_target(
            request.method, request.path, query, to_sign, request.body, streamed
        )
        return (f"{request.path}?{query}" if query else request.path), signed

    async def _attempt(
        self,
        request: S3Request,
        producer: IBodyProducer | None = None,
        length: int = 0,
        hash_body: bool = False,
    ) -> tuple[IResponse, StallWatch, GuardedBody | None]:
        """Send one request and wait for the response headers.

        :param producer: a streamed body of ``length`` bytes (then ``request.body`` is unset).
        :raises BackendUnavailable: connection refused, connect timeout, stall, connection lost
            before the response; ``body_started`` says whether the body had begun.
        """
        target, headers = self._prepare(request, producer is not None)
        watch = StallWatch(self._reactor, self._stall_timeout)
        guard: GuardedBody | None = None
        if producer is not None:
            guard = GuardedBody(self.name, producer, length, watch, hash_body)
            sending = self._http.request(request.method, target, headers, guard, length)
        else:
            sending = self._http.request(
                request.method, target, headers, small_body=request.body
            )
        watch.on_stall = sending.cancel
        watch.resume()
        try:
            response: IResponse = await sending
        except Exception as e:
            watch.stop()
            started = guard.started if guard is not None else False
            if guard is not None and guard.failure is not None:
                guard.failure.raiseException()
            if watch.fired:
                raise BackendUnavailable(
                    self.name, f"no progress for {self._stall_timeout}s", started
                ) from e
            if isinstance(e, ConnectingCancelledError | CancelledError):
                raise
            raise BackendUnavailable(
                self.name, f"{request.method} failed: {describe_failure(e)}", started
            ) from e
        if guard is not None and guard.failure is not None:
            # The body failed but the backend answered anyway; the body's failure wins.
            watch.stop()
            close_body(response)
            guard.failure.raiseException()
        return response, watch, guard

    async def open(self, request: S3Request, retry: bool = False) -> tuple[IResponse, StallWatch]:
        """Send a request without streamed body; retried once (when ``retry``) on connection
        errors and 5xx, which is safe only for idempotent requests.

        :returns: the response, its body unread, and the stall watch that guards reading it.
        """
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response, watch, _ = await self._attempt(request)
            except BackendUnavailable:
                if attempt == attempts:
                    raise
            else:
                if response.code < 500 or attempt == attempts:
                    return response, watch
                watch.stop()
                close_body(response)
            await deferLater(self._reactor, RETRY_DELAY, lambda: None)
        raise AssertionError("unreachable")

    async def read(self, response: IResponse, watch: StallWatch) -> Answer:
        """Read a (small) answer whole.

        :raises BackendUnavailable: the backend stalled or the answer broke off.
        """
        collector = BodyCollector(watch, MAX_CONTROL_BODY)
        response.deliverBody(collector)
        try:
            body = await collector.done
        except Exception as e:
            if watch.fired:
                raise BackendUnavailable(self.name, "backend stalled while answering") from e
            raise BackendUnavailable(self.name, f"answer broke off: {describe_failure(e)}") from e
        return Answer(response, body)

    async def call(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        retry: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> Answer:
        """A control request whose answer is read whole; statuses outside ``ok`` raise the
        interface's exception (:func:`s3balance.backends.s3answer.answer_error`)."""
        request = S3Request(method, path, query, headers, body)
        answer = await self.read(*await self.open(request, retry))
        if answer.status not in ok:
            raise answer_error(self.name, answer)
        return answer

    async def upload(
        self,
        path: str,
        query: Query | None,
        headers: dict[str, str],
        body: IBodyProducer,
        length: int,
        hash_body: bool = False,
    ) -> tuple[Answer, str | None]:
        """PUT a streamed body; never retried (the body cannot be replayed).

        :param hash_body: measure the MD5 of the bytes sent (costs about as much CPU as the
            rest of the upload path).
        :returns: the answer and, when ``hash_body``, the MD5 of the bytes sent.
        """
        if length == 0:
            # With nothing to hold back, wait for the body to succeed before the backend sees
            # the request at all.
            await drain_empty(self.name, body, StallWatch(self._reactor, self._stall_timeout))
            answer = await self.call("PUT", path, query, headers, b"", ok=PUT_SUCCESS)
            return answer, hashlib.md5(b"").hexdigest()
        response, watch, guard = await self._attempt(
            S3Request("PUT", path, query, headers), body, length, hash_body
        )
        assert guard is not None
        answer = await self.read(response, watch)
        if answer.status not in PUT_SUCCESS:
            raise answer_error(self.name, answer, body_started=guard.started)
        return answer, guard.md5.hexdigest() if guard.md5 is not None else None
