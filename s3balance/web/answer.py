"""What a handler receives (:class:`RequestContext`) and returns (:class:`Answer`).

Handlers never finish the request themselves: they return an :class:`Answer` and the root
resource writes it, or they return :data:`STREAMED` after handing the request to the relay, which
finishes it.  That keeps "finish exactly once" in one place (:mod:`s3balance.web.resource`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from s3balance.gateway import Gateway
from s3balance.web.routing import Route
from s3balance.web.xml import Owner


@dataclass
class Answer:
    """A complete response: status, headers (in order) and a small body."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def xml(cls, body: bytes, status: int = 200) -> Answer:
        return cls(status, [("Content-Type", "application/xml")], body)


class _Streamed:
    def __repr__(self) -> str:
        return "STREAMED"


#: Returned by a handler that already handed the request to the relay.
STREAMED: Final = _Streamed()


@dataclass
class RequestContext:
    """One S3 request on its way through the handlers.

    :ivar identity: the verified signer (:class:`s3balance.auth.credentials.Identity`) or
        ``None`` for an anonymous request when authentication is off.
    :ivar read_body: reads a small, already-buffered request body (XML documents).
    :ivar anonymous: see the attribute.
    """

    request: Request
    route: Route
    request_id: str
    gateway: Gateway
    owner: Owner
    clock: IReactorTime
    region: str
    stall_timeout: float
    zero_copy: bool = False
    identity: Any = None
    read_body: Callable[[], bytes] = lambda: b""
    #: An unsigned request while signatures are required, let through authentication only to
    #: be checked against the resource's canned ACL (:mod:`s3balance.web.public`).
    anonymous: bool = False
    #: The multipart operations' handler (:class:`s3balance.web.multipart.MultipartHandler`),
    #: None when the daemon serves no multipart uploads.
    multipart: Any = None

    @property
    def bucket(self) -> str:
        assert self.route.bucket is not None
        return self.route.bucket

    @property
    def key(self) -> str:
        assert self.route.key is not None
        return self.route.key

    def header(self, name: str) -> str | None:
        """A request header's first value, decoded byte for byte (latin-1), or None."""
        values = self.request.requestHeaders.getRawHeaders(name.encode("ascii"))
        if not values:
            return None
        return values[0].decode("latin-1")

    def headers_with_prefix(self, prefix: str) -> dict[str, str]:
        """Request headers whose lower-case name starts with ``prefix``, prefix removed."""
        found: dict[str, str] = {}
        for raw_name, values in self.request.requestHeaders.getAllRawHeaders():
            name = raw_name.decode("latin-1").lower()
            if name.startswith(prefix):
                found[name[len(prefix):]] = ",".join(v.decode("latin-1") for v in values)
        return found

    def query(self, name: str) -> str | None:
        return self.route.query.get(name)


def add_response_headers(request: Request, headers: list[tuple[str, str]]) -> None:
    """Add headers to the response, keeping user metadata names lower-case as S3 sends them.

    twisted.web rewrites names to Header-Case; SDKs read ``x-amz-meta-*`` names as they arrive
    (boto3 would turn a key ``a`` into ``A``), so those are stored as given.
    """
    response = request.responseHeaders
    raw = getattr(response, "_rawHeaders", None)
    for name, value in headers:
        encoded_name = name.encode("latin-1")
        encoded_value = value.encode("latin-1")
        if raw is not None and name.lower().startswith("x-amz-meta-"):
            raw.setdefault(encoded_name.lower(), []).append(encoded_value)
        else:
            response.addRawHeader(encoded_name, encoded_value)

