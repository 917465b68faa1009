"""Where a request to a real S3 bucket goes, and its SigV4 signature.

The URL is built once, percent-encoded here, and the very same bytes are signed (by botocore, never
a hand-rolled signer) and sent by Agent: SigV4 signs the exact request target, so any
re-serialisation in between (``..`` segments collapsed, ``+`` turned into a space, ``~`` encoded)
would break the signature or, worse, address a different key.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotocoreConfig
from botocore.credentials import Credentials


def quote_key(key: str) -> str:
    """Percent-encode a key for a URL path the way S3 expects.

    Every byte except RFC 3986 unreserved characters and ``/`` is encoded, so ``a b``, ``+``,
    ``%`` and non-ASCII keys round-trip, and dot segments (``a/../b``) are sent literally.
    """
    return quote(key, safe="/~")


def quote_query_value(value: str) -> str:
    """Encode a query-string name or value as SigV4's canonical form does (``/`` too)."""
    return quote(value, safe="-_.~")


def aws_endpoint(region: str) -> str:
    """AWS's regional S3 endpoint, used when a bucket has no ``endpoint`` configured."""
    return f"https://s3.{region}.amazonaws.com"


@dataclass(frozen=True)
class BucketAddress:
    """How URLs for one bucket are built: path-style or virtual-host addressing.

    :ivar scheme: ``http`` or ``https``.
    :ivar host: the service's host name (without the bucket for virtual-host addressing).
    :ivar port: explicit port, or ``None`` for the scheme's default.
    :ivar base_path: a path prefix the endpoint carries (``/s3`` behind a proxy), without
        trailing slash; usually empty.
    """

    scheme: str
    host: str
    port: int | None
    bucket: str
    path_style: bool
    base_path: str = ""

    @classmethod
    def from_endpoint(cls, endpoint: str, bucket: str, path_style: bool) -> BucketAddress:
        """Parse ``http(s)://host[:port][/prefix]``.

        :raises ValueError: the endpoint is not an absolute http(s) URL.
        """
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 endpoint must be an http(s) URL, not {endpoint!r}")
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=parts.port,
            bucket=bucket,
            path_style=path_style,
            base_path=parts.path.rstrip("/"),
        )

    @property
    def netloc(self) -> str:
        """The ``Host`` header value (and URL authority); default ports are left out."""
        host = self.host if self.path_style else f"{self.bucket}.{self.host}"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        default_port = 443 if self.scheme == "https" else 80
        if self.port is None or self.port == default_port:
            return host
        return f"{host}:{self.port}"

    def bucket_path(self) -> str:
        """The path addressing the bucket itself (for HeadBucket and listings)."""
        if self.path_style:
            return f"{self.base_path}/{quote_key(self.bucket)}"
        return f"{self.base_path}/"

    def object_path(self, key: str) -> str:
        """The path addressing ``key``, percent-encoded."""
        if self.path_style:
            return f"{self.base_path}/{quote_key(self.bucket)}/{quote_key(key)}"
        return f"{self.base_path}/{quote_key(key)}"

    def url(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        """The full URL for an already-encoded ``path`` and a query (names and values raw).

        The query is sorted and encoded canonically, so the URL sent equals the one signed.
        """
        url = f"{self.scheme}://{self.netloc}{path}"
        if query:
            url += "?" + "&".join(
                f"{quote_query_value(name)}={quote_query_value(value)}"
                for name, value in sorted(query)
            )
        return url

    def copy_source(self, key: str) -> str:
        """The ``x-amz-copy-source`` value for ``key`` in this bucket (URL-encoded)."""
        return f"/{quote_key(self.bucket)}/{quote_key(key)}"


class Signer:
    """SigV4 signatures for one set of credentials and region, by botocore.

    Payload modes: a request without body signs the empty body's hash; a small in-memory body
    (multipart XML) is hashed and signed; a streamed body is sent as ``UNSIGNED-PAYLOAD``.
    Unsigned streamed payloads are safe enough here: to https endpoints TLS protects integrity;
    to plain-http endpoints (loopback or a private network) the operator chose that trade; and
    whenever the client gave a Content-MD5 (or an ``x-amz-checksum-*``) we forward it, so the
    backend verifies the bytes it stores anyway.  Hashing the body first would mean buffering it.
    """

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self._credentials = Credentials(access_key, secret_key)
        self._region = region
        self._unsigned_payload = BotocoreConfig(s3={"payload_signing_enabled": False})
        self._signed_payload = BotocoreConfig(s3={"payload_signing_enabled": True})

    def sign(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, streamed: bool
    ) -> dict[str, str]:
        """Headers to send: ``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-SHA256`` and
        ``Authorization``.

        ``headers`` must hold every header the request will carry except ``Content-Length``
        (which Agent adds; S3 does not require it signed), including ``Host``.

        :param body: the whole body when it is in memory; ``None`` for no body or a streamed one.
        :param streamed: the body comes from a producer: sign ``UNSIGNED-PAYLOAD``.
        """
        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")
        request.context["client_config"] = (
            self._unsigned_payload if streamed else self._signed_payload
        )
        S3SigV4Auth(self._credentials, "s3", self._region).add_auth(request)
        signed = {name: str(value) for name, value in request.headers.items()}
        if streamed:
            assert signed.get("X-Amz-Content-SHA256") == UNSIGNED_PAYLOAD
        return signed

    def presign(self, url: str, host: str, expires_in: int, params: dict[str, str]) -> str:
        """A query-signed GET URL for ``url`` (without query) carrying ``params``
        (``response-*`` overrides), which botocore encodes and signs with its own."""
        request = AWSRequest(method="GET", url=url, headers={"Host": host}, params=dict(params))
        S3SigV4QueryAuth(self._credentials, "s3", self._region, expires=expires_in).add_auth(
            request
        )
        return str(request.url)
