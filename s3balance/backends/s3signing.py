"""Where a request to a real S3 bucket goes, and its SigV4 signature.

The URL is built once, percent-encoded here, and the very same text is signed and sent:
SigV4 signs the exact request target, so any re-serialisation in between (``..`` segments
collapsed, ``+`` turned into a space, ``~`` encoded) would break the signature or, worse, address
a different key.

The signer is a transcription of botocore's ``S3SigV4Auth`` and ``S3SigV4QueryAuth`` for the
requests built here, not an independent reading of the specification: ``test/test_s3signing.py``
checks that it produces byte for byte the headers and URLs botocore produces for the same input.
It exists because importing botocore (with urllib3 and dateutil) cost the daemon about 3.5 MiB of
resident memory for its whole life, for a few HMACs per request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from s3balance.auth.sigv4 import (
    ALGORITHM,
    EMPTY_SHA256,
    SERVICE,
    TERMINATOR,
    TIMESTAMP_FORMAT,
    UNSIGNED_PAYLOAD,
    signing_key,
)

#: Headers botocore leaves out of a signature (hop-by-hop or rewritten on the way).
UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

#: Headers the signer sets itself; a caller's values for them are dropped.
_REPLACED_HEADERS = frozenset({"authorization", "date", "x-amz-date", "x-amz-content-sha256"})


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

    @property
    def connect_host(self) -> str:
        """The host connections go to (the bucket's own name under virtual-host addressing)."""
        return self.host if self.path_style else f"{self.bucket}.{self.host}"

    @property
    def connect_port(self) -> int:
        if self.port is not None:
            return self.port
        return 443 if self.scheme == "https" else 80

    def query_string(self, query: list[tuple[str, str]] | None) -> str:
        """A query (names and values raw) sorted and encoded canonically, so the target sent
        equals the one signed."""
        if not query:
            return ""
        return "&".join(
            f"{quote_query_value(name)}={quote_query_value(value)}"
            for name, value in sorted(query)
        )

    def url(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        """The full URL for an already-encoded ``path`` and a query (names and values raw)."""
        url = f"{self.scheme}://{self.netloc}{path}"
        if query:
            url += "?" + self.query_string(query)
        return url

    def copy_source(self, key: str) -> str:
        """The ``x-amz-copy-source`` value for ``key`` in this bucket (URL-encoded)."""
        return f"/{quote_key(self.bucket)}/{quote_key(key)}"


class Signer:
    """SigV4 signatures for one set of credentials and region, as botocore's S3 signers make them.

    Payload modes: a request without body signs the empty body's hash; a small in-memory body
    (multipart XML) is hashed and signed; a streamed body is sent as ``UNSIGNED-PAYLOAD``.
    Unsigned streamed payloads are safe enough here: to https endpoints TLS protects integrity;
    to plain-http endpoints (loopback or a private network) the operator chose that trade; and
    whenever the client gave a Content-MD5 (or an ``x-amz-checksum-*``) we forward it, so the
    backend verifies the bytes it stores anyway.  Hashing the body first would mean buffering it.

    S3 flavour of SigV4, as botocore applies it: the canonical URI is the URL's path exactly as
    sent (never normalised nor re-encoded), and the canonical query is the URL's own
    ``name=value`` pairs, sorted as they are written.

    :param clock: seconds since the epoch (``time.time``); the signing time, to the second.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._clock = clock
        self._stamped_second = -1
        self._stamp = ""

    def sign(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, streamed: bool
    ) -> dict[str, str]:
        """Headers to send for ``url``: see :meth:`sign_target`."""
        parts = urlsplit(url)
        return self.sign_target(method, parts.path, parts.query, headers, body, streamed)

    def sign_target(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes | None,
        streamed: bool,
    ) -> dict[str, str]:
        """Headers to send: ``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-SHA256`` and
        ``Authorization``, for a request to ``path?query`` (both as sent).

        ``headers`` must hold every header the request will carry except ``Content-Length``
        (which the client adds; S3 does not require it signed), including ``Host``.  Values the
        caller gives for the three headers above are replaced; a ``Date`` header is re-dated to
        the signing time and then stands for ``X-Amz-Date`` (as botocore does).

        :param body: the whole body when it is in memory; ``None`` for no body or a streamed one.
        :param streamed: the body comes from a producer: sign ``UNSIGNED-PAYLOAD``.
        :raises ValueError: ``headers`` has no ``Host``.
        """
        seconds = math.floor(self._clock())
        timestamp = self._timestamp(seconds)
        dated = False
        signed = {}
        for name, value in headers.items():
            lowered = name.lower()
            if lowered == "date":
                dated = True
            if lowered not in _REPLACED_HEADERS:
                signed[name] = value
        if dated:
            signed["Date"] = formatdate(seconds)
        else:
            signed["X-Amz-Date"] = timestamp
        if streamed:
            payload = UNSIGNED_PAYLOAD
        elif body:
            payload = hashlib.sha256(body).hexdigest()
        else:
            payload = EMPTY_SHA256
        signed["X-Amz-Content-SHA256"] = payload

        # Each value with its runs of whitespace collapsed; several values of one name joined by
        # commas.  Built in one pass: this runs for every backend request.
        values: dict[str, str] = {}
        for name, value in signed.items():
            lowered = name.lower()
            if lowered in UNSIGNED_HEADERS:
                continue
            collapsed = " ".join(value.split())
            earlier = values.get(lowered)
            values[lowered] = collapsed if earlier is None else f"{earlier},{collapsed}"
        if "host" not in values:
            raise ValueError("the headers to sign carry no Host")
        names = sorted(values)
        canonical_headers = "".join([f"{name}:{values[name]}\n" for name in names])
        signed_names = ";".join(name.strip() for name in names)
        canonical = "\n".join(
            [
                method.upper(),
                path,
                _canonical_query(query),
                canonical_headers,
                signed_names,
                payload,
            ]
        )
        signature = self._signature(timestamp, canonical)
        signed["Authorization"] = (
            f"{ALGORITHM} Credential={self._access_key}/{self._scope(timestamp)}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return signed

    def _timestamp(self, seconds: int) -> str:
        """``X-Amz-Date`` for ``seconds``; formatted once per second, not once per request."""
        if seconds != self._stamped_second:
            self._stamped_second = seconds
            self._stamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime(seconds))
        return self._stamp

    def presign(self, url: str, host: str, expires_in: int, params: dict[str, str]) -> str:
        """A query-signed GET URL for ``url`` (without query) carrying ``params``
        (``response-*`` overrides), encoded and signed with the ``X-Amz-*`` parameters."""
        seconds = math.floor(self._clock())
        timestamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime(seconds))
        parts = urlsplit(url)
        operation = {
            name: found[0] for name, found in parse_qs(parts.query, keep_blank_values=True).items()
        }
        operation.update(params)
        authentication = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._access_key}/{self._scope(timestamp)}"),
            ("X-Amz-Date", timestamp),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        query = _percent_encode_pairs(authentication)
        if operation:
            query = f"{_percent_encode_pairs(operation.items())}&{query}"
        presigned = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
        signed_parts = urlsplit(presigned)
        canonical = "\n".join(
            [
                "GET",
                signed_parts.path,
                _canonical_query(signed_parts.query),
                f"host:{' '.join(host.split())}\n",
                "host",
                UNSIGNED_PAYLOAD,
            ]
        )
        return f"{presigned}&X-Amz-Signature={self._signature(timestamp, canonical)}"

    def _scope(self, timestamp: str) -> str:
        return f"{timestamp[:8]}/{self._region}/{SERVICE}/{TERMINATOR}"

    def _signature(self, timestamp: str, canonical: str) -> str:
        key = signing_key(self._secret_key, timestamp[:8], self._region)
        to_sign = "\n".join(
            [
                ALGORITHM,
                timestamp,
                self._scope(timestamp),
                hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            ]
        )
        return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _canonical_query(query: str) -> str:
    """A URL's query as SigV4 signs it: its ``name=value`` pairs, as written, sorted."""
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        pairs.append((name, value))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _percent_encode_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """``name=value`` pairs in order, UTF-8 percent-encoded but for ``-._~``."""
    return "&".join(
        f"{quote(name.encode('utf-8'), safe='-._~')}={quote(value.encode('utf-8'), safe='-._~')}"
        for name, value in pairs
    )
