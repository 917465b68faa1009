"""The root resource: where every request enters, is authenticated, routed and answered.

Order of work for an S3 request (one place, so it can be audited):

1. Reserved children first: ``/health``, ``/metrics``, ``/api`` (the ``reserved`` dict) are
   served by their own resources; no bucket can have those names.
2. Routing (:mod:`s3balance.web.routing`): the operation, from the query string, then the method.
3. **Authentication hook** (:meth:`S3Resource.authenticate`): with an
   :class:`~s3balance.auth.authenticator.Authenticator`, the signature is verified for every S3
   request, the identity's bucket scope and read-only flag are checked, and the payload filter
   (SigV4 payload hash, aws-chunked decoding with chunk signatures or trailer checksum) is put
   in front of the streamed body.  Without one, requests are anonymous and allowed, and
   aws-chunked bodies are still decoded (an unverifying authenticator is used).
4. The handler for the operation, from the one registry
   :data:`~s3balance.web.operations.OPERATIONS` (which also says which operations write),
   returns an :class:`~s3balance.web.answer.Answer` (written here) or streams the object itself.

Multipart hook: the root resource takes an optional ``multipart`` handler object, handed to the
handlers as ``ctx.multipart``; the seven multipart operations call its method
``handle_<Operation>(request, ctx)``.  Without it they answer 501 NotImplemented.

Every response carries ``x-amz-request-id`` and ``x-amz-id-2``; every error is S3's XML document
(no body for HEAD); unexpected exceptions are logged with the request id and answered
InternalError.  The request is finished exactly once, here (the lifecycle, shared with the
admin API, is :mod:`s3balance.web.lifecycle`).  A client that goes away stops the
backend work through the data itself: an upload's body fails (the backend keeps nothing) and a
download's relay stops the backend stream.  Handlers are deliberately *not* cancelled: cancelling a
Deferred does not stop a database transaction already running in its thread, and abandoning a
write between the backend's confirmation and the commit would leave rows and bytes disagreeing.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import random
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from s3balance import errors, metrics
from s3balance.auth.authenticator import Authenticator
from s3balance.auth.chunked import Sha256PayloadVerifier
from s3balance.auth.credentials import KeyRing
from s3balance.auth.headers import RequestHeaders
from s3balance.auth.sigv4 import EMPTY_SHA256
from s3balance.config import Config
from s3balance.db.errors import MetadataUnavailable
from s3balance.gateway import Gateway
from s3balance.labelled import labelled
from s3balance.logs import access_operation, make_logger
from s3balance.web import lifecycle
from s3balance.web.answer import STREAMED, Answer, RequestContext, add_response_headers
from s3balance.web.bodies import ADMIN_BODY, BODY_LIMITS, DEFAULT_BODY
from s3balance.web.labels import OTHER_BUCKET, BucketLabels
from s3balance.web.operations import OPERATIONS, writes
from s3balance.web.public import ANONYMOUS_READS, authorize_anonymous
from s3balance.web.queryparams import is_ignored
from s3balance.web.requestids import new_request_id
from s3balance.web.routing import (
    METHOD_NOT_ALLOWED,
    NOT_IMPLEMENTED,
    Route,
    Router,
    streams,
)
from s3balance.web.xml import Owner

log = make_logger()

#: ``x-amz-id-2`` is an opaque token, not a secret: drawn from a generator seeded once, not from
#: the kernel on every request.
_host_ids = random.Random()

#: The operation of a request whose path is not valid percent-encoded UTF-8.
INVALID_URI = "InvalidURI"

#: A stalled download (client not reading, backend not sending) is abandoned after this long.
DEFAULT_STALL_TIMEOUT = 60.0


def owner_for(access_key: str) -> Owner:
    """The single owner every bucket and object shows: stable for one access key."""
    seed = f"s3balance:{access_key}".encode()
    return Owner(hashlib.sha256(seed).hexdigest(), "s3balance")


class S3Resource(Resource):
    """The daemon's root resource.

    :param gateway: the core.
    :param config: for the region, virtual-host domain and the owner's access key.
    :param reserved: children served before any bucket, by first path segment.
    :param authenticator: verifies signatures; ``None`` means anonymous access (see module doc).
    :param multipart: the multipart handler object, or ``None`` (501 for those operations).
    :param clock: for stall timers of downloads and durations.
    """

    def __init__(
        self,
        gateway: Gateway,
        config: Config | None = None,
        reserved: Mapping[bytes, IResource] | None = None,
        authenticator: Authenticator | None = None,
        multipart: Any = None,
        clock: IReactorTime | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        super().__init__()
        config = config or Config()
        self.gateway = gateway
        self.config = config
        self.reserved = dict(reserved or {})
        self.region = config.s3api.region
        domain = config.s3api.domain if config.s3api.virtual_host else ""
        self.router = Router(domain or None)
        self.auth_enabled = authenticator is not None
        self.authenticator = authenticator or Authenticator(
            KeyRing(), required=False, region=config.s3api.region
        )
        self.multipart = multipart
        self.clock: IReactorTime = clock or gateway.clock
        self.stall_timeout = stall_timeout or max(
            config.server.write_timeout, DEFAULT_STALL_TIMEOUT
        )
        self.owner = owner_for(config.s3api.access_key or "s3balance")
        #: The ``bucket`` label of request metrics comes from this bounded set.
        self.bucket_labels = BucketLabels(self._bucket_names, self.clock)
        self._operation = _S3Operation(self)

    async def _bucket_names(self) -> list[str]:
        return [record.name for record in await self.gateway.list_buckets()]

    def route_of(self, request: Request) -> Route:
        """The request's route, worked out once: the first to ask (the site, deciding whether
        the body streams and how large it may be) keeps it on the request for the others."""
        route: Route | None = getattr(request, "s3_route", None)
        if route is None:
            try:
                route = self.router.route(request.method, request.uri, request.requestHeaders)
            except ValueError:
                route = Route(INVALID_URI, None, None)
            request.s3_route = route  # type: ignore[attr-defined]
        return route

    def should_stream(self, request: Request) -> bool:
        """The predicate for :class:`~s3balance.web.site.S3Site` (addressing-style aware)."""
        return streams(self.route_of(request), request.method, request.requestHeaders)

    def body_limit(self, request: Request) -> int:
        """For :class:`~s3balance.web.site.S3Site`: asked before a buffered body is read.

        The request's signature, bucket scope and read-only flag are checked on its headers
        alone (the payload hash is checked over the body later, as are the rest of the checks),
        so an unauthenticated client never gets to park a body in memory.

        :returns: the largest body the operation may send (:mod:`s3balance.web.bodies`).
        :raises S3Error: the authentication error, AccessDenied.
        """
        headers = request.requestHeaders
        first = request.uri.partition(b"?")[0].lstrip(b"/").partition(b"/")[0]
        if first in self.reserved and self.router.host_bucket(headers) is None:
            return ADMIN_BODY  # the admin API checks its own token
        route = self.route_of(request)
        if route.operation == INVALID_URI:
            return DEFAULT_BODY  # answered InvalidURI once the body is in
        if self.auth_enabled:
            result = self.authenticator.authenticate(
                request.method.decode("latin-1"),
                request.uri,
                RequestHeaders.from_twisted(headers),
                bucket_from_host=self.router.host_bucket(headers),
            )
            identity = result.identity
            write = writes(route.operation)
            if identity is not None and not identity.may_access(route.bucket or "", write):
                raise errors.AccessDenied()
        return BODY_LIMITS.get(route.operation, DEFAULT_BODY)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path in self.reserved and self.router.host_bucket(request.requestHeaders) is None:
            return self.reserved[path]
        # Everything else is S3: one leaf reads the whole target itself.
        return self._operation

    def render(self, request: Request) -> Any:
        return self._operation.render(request)

    # -- the authentication hook -------------------------------------------------------------

    def authenticate(
        self, request: Request, route: Route, ctx: RequestContext | None = None
    ) -> Any:
        """Verify the request and return the identity (``None`` when anonymous).

        With authentication on, an unsigned request for one of
        :data:`~s3balance.web.public.ANONYMOUS_READS` is let through with ``ctx.anonymous`` set,
        to be judged by the resource's ACL before its handler runs.

        Also installs the payload filter on a streamed body and refuses operations outside the
        identity's bucket scope or beyond a read-only key.

        :raises S3Error: any authentication error, AccessDenied.
        """
        headers = RequestHeaders.from_twisted(request.requestHeaders)
        # The daemon always has an authenticator; only a requiring one refuses unsigned requests.
        signed_only = self.authenticator.required
        result = self.authenticator.authenticate(
            request.method.decode("latin-1"),
            request.uri,
            headers,
            bucket_from_host=self.router.host_bucket(request.requestHeaders),
            allow_anonymous=(
                ctx is not None and signed_only and route.operation in ANONYMOUS_READS
            ),
        )
        if signed_only and result.scheme == "anonymous" and ctx is not None:
            ctx.anonymous = True
        body = getattr(request, "body", None)
        if body is not None:
            payload_filter = self.authenticator.body_filter(result, headers)
            if payload_filter is not None:
                body.add_filter(payload_filter)
                # Handlers reuse what it verified (an aws-chunked trailer's checksum).
                request.payload_filter = payload_filter  # type: ignore[attr-defined]
        elif result.identity is not None:
            # A buffered body is whole by now: its signed SHA-256 can be checked at once (its
            # headers were authenticated before it was read, see body_limit). No body signed as
            # none (every GET, HEAD and DELETE an SDK sends) has nothing to hash.
            buffered = _buffered_body(request)
            if buffered or result.payload != EMPTY_SHA256:
                payload_filter = self.authenticator.body_filter(result, headers)
                if isinstance(payload_filter, Sha256PayloadVerifier):
                    payload_filter.feed(buffered)
                    payload_filter.finish()
        identity = result.identity
        if identity is not None:
            write = writes(route.operation)
            if not identity.may_access(route.bucket or "", write):
                raise errors.AccessDenied()
        return identity


class _S3Operation(Resource):
    """The leaf that serves every S3 request (see the module docstring for the order)."""

    isLeaf = True

    def __init__(self, root: S3Resource) -> None:
        super().__init__()
        self.root = root

    def render(self, request: Request) -> Any:
        root = self.root
        request_id = getattr(request, "request_id", None) or new_request_id()
        request.responseHeaders.setRawHeaders(b"x-amz-request-id", [request_id.encode()])
        request.responseHeaders.setRawHeaders(
            b"x-amz-id-2", [base64.b64encode(_host_ids.randbytes(24))]
        )
        started = root.clock.seconds()
        route = root.route_of(request)
        refused = route.operation in (NOT_IMPLEMENTED, METHOD_NOT_ALLOWED)
        request.access_operation = access_operation(  # type: ignore[attr-defined]
            route.operation,
            (name for name in route.query if not is_ignored(name)) if refused else (),
        )
        ctx = RequestContext(
            request=request,
            route=route,
            request_id=request_id,
            gateway=root.gateway,
            owner=root.owner,
            clock=root.clock,
            region=root.region,
            stall_timeout=root.stall_timeout,
            zero_copy=root.config.server.zero_copy,
            read_body=lambda: _buffered_body(request),
            multipart=root.multipart,
        )
        request.notifyFinish().addBoth(self._count, request, route, started)
        return lifecycle.serve(
            request,
            self._serve(request, ctx),
            lambda answer: self._answer(request, ctx, answer),
            lambda failure: self._fail(request, ctx, failure),
            lambda: f"request {request_id} ({route.operation})",
        )

    async def _serve(self, request: Request, ctx: RequestContext) -> Any:
        route = ctx.route
        if route.operation == INVALID_URI:
            raise errors.S3Error("InvalidURI", 400, "Couldn't parse the specified URI.")
        ctx.identity = self.root.authenticate(request, route, ctx)
        if ctx.anonymous:
            await authorize_anonymous(ctx)
        if route.operation == NOT_IMPLEMENTED:
            raise errors.NotImplementedError_(route.refusal or None)
        if route.operation == METHOD_NOT_ALLOWED:
            raise errors.MethodNotAllowed(Method=request.method.decode("latin-1"))
        result = OPERATIONS[route.operation].handler(ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _answer(self, request: Request, ctx: RequestContext, answer: Any) -> None:
        if answer is STREAMED:
            return
        assert isinstance(answer, Answer)
        body = getattr(request, "body", None)
        if body is not None and not body.complete:
            request.prepare_early_response()  # type: ignore[attr-defined]
        request.setResponseCode(answer.status)
        add_response_headers(request, answer.headers)
        if answer.status not in (204, 304) and not request.responseHeaders.hasHeader(
            b"content-length"
        ):
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(answer.body)])
        if answer.body and request.method != b"HEAD":
            request.write(answer.body)
        request.finish()

    def _fail(self, request: Request, ctx: RequestContext, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, MetadataUnavailable):
            # The metadata database is unreachable (restarting, network): a condition clients
            # should retry, as S3 says with 503, not a bug of ours.
            log.warn(
                "request {request_id} ({operation}): the database is unavailable: {error}",
                request_id=ctx.request_id,
                operation=ctx.route.operation,
                error=failure.getErrorMessage(),
            )
            error = errors.ServiceUnavailable("The metadata store is unavailable; retry later.")
        elif not isinstance(error, errors.S3Error):
            log.failure(
                "request {request_id} ({operation}) failed",
                failure,
                request_id=ctx.request_id,
                operation=ctx.route.operation,
            )
            error = errors.InternalError()
        request.respond_error(error, ctx.route.path)  # type: ignore[attr-defined]

    def _count(self, _: Any, request: Request, route: Route, started: float) -> None:
        status = str(request.code) if request.finished else "disconnected"
        labelled(metrics.S3_OPERATION_DURATION, route.operation).observe(
            max(0.0, self.root.clock.seconds() - started)
        )
        # Only the first requests wait for the label set to be loaded (the others count at once,
        # without a Deferred per request).
        labels = self.root.bucket_labels
        if labels.loaded:
            self._count_operation(route, status)
            return
        labels.ready().addCallback(lambda _: self._count_operation(route, status))

    def _count_operation(self, route: Route, status: str) -> None:
        labels = self.root.bucket_labels
        bucket = labels.label(route.bucket)
        if route.bucket and route.operation == "CreateBucket" and status == "200":
            labels.added(route.bucket)
            bucket = route.bucket
        elif route.bucket and route.operation == "DeleteBucket" and status == "204":
            # A deleted bucket's series go with it, so creating and deleting names cannot grow
            # the series either; the deletion itself is counted under the fixed label.
            labels.removed(route.bucket)
            metrics.forget_virtual_bucket(route.bucket)
            bucket = OTHER_BUCKET
        labelled(metrics.S3_OPERATIONS, route.operation, bucket, status).inc()

def _buffered_body(request: Request) -> bytes:
    """The body twisted.web buffered for a non-streamed request (XML documents, small PUTs)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data
