"""Helpers shared by the ``test_auth_*`` modules (no tests here).

Reference signatures come from botocore's own signers, never from the code under test.
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

from botocore.auth import HmacV1Auth, HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence

from s3balance.auth.authenticator import Authenticator
from s3balance.auth.credentials import Identity, KeyRing
from s3balance.auth.headers import RequestHeaders

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
ENDPOINT = "http://127.0.0.1:8080"
CREDS = Credentials(ACCESS_KEY, SECRET_KEY)


def keyring() -> KeyRing:
    ring = KeyRing()
    ring.add(ACCESS_KEY, SECRET_KEY, Identity(ACCESS_KEY))
    ring.add("READER", "reader-secret", Identity("READER", frozenset({"photos"}), True))
    return ring


def authenticator(required: bool = True, offset: float = 0.0, **kwargs: object) -> Authenticator:
    """An authenticator whose clock runs ``offset`` seconds ahead of real time."""
    return Authenticator(
        keyring(), required, REGION, clock=lambda: time.time() + offset, **kwargs  # type: ignore[arg-type]
    )


def key_path(bucket: str, key: str) -> str:
    """The path botocore's S3 serializer builds for a key (quote with ``/~`` safe)."""
    return "/" + bucket + "/" + quote(key, safe="/~")


class Wire:
    """A request as it reaches the server: method, raw target bytes, headers."""

    def __init__(self, method: str, target: bytes, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.target = target
        self.headers = headers

    def hdrs(self) -> RequestHeaders:
        return RequestHeaders(self.headers)

    def with_header(self, name: str, value: str) -> Wire:
        kept = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        return Wire(self.method, self.target, kept + [(name, value)])

    def without_header(self, name: str) -> Wire:
        return Wire(
            self.method, self.target, [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        )

    def with_target(self, target: bytes) -> Wire:
        return Wire(self.method, target, self.headers)

    def verify(self, auth: Authenticator, bucket_from_host: str | None = None):  # type: ignore[no-untyped-def]
        return auth.authenticate(self.method, self.target, self.hdrs(), bucket_from_host)


def _url(path: str, params: dict[str, str] | None) -> str:
    """Query built the way botocore's S3 serializer builds it (``%20`` for spaces)."""
    return ENDPOINT + path + ("?" + percent_encode_sequence(params) if params else "")


def _to_wire(request: AWSRequest) -> Wire:
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + (("?" + parts.query) if parts.query else "")
    headers = [(str(k), str(v)) for k, v in prepared.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.insert(0, ("Host", parts.netloc))
    return Wire(prepared.method, target.encode("ascii"), headers)


def sigv4_request(
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    unsigned_payload: bool = False,
    region: str = REGION,
    creds: Credentials = CREDS,
) -> Wire:
    """A header-signed request from :class:`botocore.auth.S3SigV4Auth`."""
    request = AWSRequest(method=method, url=_url(path, params), headers=headers or {}, data=body)
    if unsigned_payload:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(creds, "s3", region).add_auth(request)
    return _to_wire(request)


def sigv4_presigned(
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    expires: int = 3600,
    region: str = REGION,
) -> Wire:
    """A presigned URL from :class:`botocore.auth.S3SigV4QueryAuth`."""
    request = AWSRequest(method=method, url=_url(path, params))
    S3SigV4QueryAuth(CREDS, "s3", region, expires=expires).add_auth(request)
    return _to_wire(request)


def sigv2_request(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    auth_path: str | None = None,
    url_path: str | None = None,
) -> Wire:
    """A header-signed SigV2 request from :class:`botocore.auth.HmacV1Auth`."""
    request = AWSRequest(method=method, url=ENDPOINT + (url_path or path), headers=headers or {})
    request.auth_path = auth_path
    HmacV1Auth(CREDS).add_auth(request)
    return _to_wire(request)


def sigv2_presigned(method: str, path: str, expires: int = 3600) -> Wire:
    request = AWSRequest(method=method, url=ENDPOINT + path)
    request.auth_path = None
    HmacV1QueryAuth(CREDS, expires=expires).add_auth(request)
    return _to_wire(request)
