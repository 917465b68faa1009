"""Decide who sent an S3 request: SigV4 (header or presigned), SigV2 (header or query), anonymous.

Inputs are plain values (method, raw request target, headers) so the HTTP front stays thin and
this stays testable against botocore's reference signers.  Verifying the *body* is left to the
filter :meth:`Authenticator.body_filter` returns, since bodies stream after the headers.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from s3balance import errors
from s3balance.auth import sigv2, sigv4
from s3balance.auth.chunked import AwsChunkedDecoder, ChunkSigner, Sha256PayloadVerifier
from s3balance.auth.credentials import Identity, KeyRing
from s3balance.auth.headers import RequestHeaders, encode_signed_text
from s3balance.errors import S3Error
from s3balance.integers import parse_decimal

#: S3 rejects requests whose time is further than this from ours.
MAX_SKEW_SECONDS = 15 * 60
#: Longest lifetime of a SigV4 presigned URL.
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

HeadersLike = RequestHeaders | Mapping[str, Sequence[str] | str]
BodyFilterLike = Sha256PayloadVerifier | AwsChunkedDecoder

_PRESIGN_V4_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_UNSUPPORTED_STREAMING = (
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    "STREAMING-AWS4-HMAC-SHA256-EVENTS",
)
#: ``x-amz-*`` headers a SigV4 request may carry unsigned.  ``x-amz-content-sha256`` is the
#: payload hash: its value is the last line of the canonical request, so a changed value fails
#: the signature whether or not the header is listed as signed (S3, Ceph and MinIO accept it
#: unsigned; botocore's presigner never signs it).  Nothing else: ``x-amz-date`` and
#: ``x-amz-security-token`` travel in the query of a presigned URL, and a header-signed request
#: signs them (botocore leaves only ``expect``, ``user-agent``, ``transfer-encoding`` and
#: ``x-amzn-trace-id`` unsigned, none of them ``x-amz-*``).
UNSIGNED_AMZ_HEADERS_ALLOWED = frozenset({"x-amz-content-sha256"})
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z", re.ASCII)
_EPOCH = datetime(1970, 1, 1)
_NO_DATE = "AWS authentication requires a valid Date or x-amz-date header"


@dataclass(frozen=True)
class AuthResult:
    """The outcome of :meth:`Authenticator.authenticate`.

    :param identity: the verified signer; ``None`` for anonymous requests or when auth is off.
    :param payload: the ``x-amz-content-sha256`` mode (``""`` when the request names none).
    :param access_key: the access key the request claims, verified or not (for logs).
    :param scheme: ``sigv4``, ``sigv4-presigned``, ``sigv2``, ``sigv2-presigned`` or
        ``anonymous``.
    :param signer: what aws-chunked signature verification needs; ``None`` when chunk
        signatures cannot be checked (no signed chunks, or auth off with an unknown key).
    """

    identity: Identity | None
    payload: str
    access_key: str = ""
    scheme: str = "anonymous"
    signer: ChunkSigner | None = None


class _V4Claim(NamedTuple):
    """What a SigV4 request asserts, parsed but not yet verified (a tuple: one is made per
    signed request, and a frozen dataclass took several times as long to build)."""

    access_key: str
    scope_date: str
    region: str
    signed_headers: list[str]
    signature: str
    timestamp: str
    request_time: float
    payload: str
    presigned: bool

    @property
    def scope(self) -> str:
        return f"{self.scope_date}/{self.region}/{sigv4.SERVICE}/{sigv4.TERMINATOR}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _bytes_listing(text: str) -> str:
    """S3's ``*Bytes`` rendering: each byte as two hex digits, space separated."""
    return " ".join(f"{b:02x}" for b in encode_signed_text(text))


@functools.lru_cache(maxsize=64)
def _parse_amz_date(value: str) -> float | None:
    """``YYYYMMDDTHHMMSSZ`` as seconds since the epoch; None when it is no such time.

    The form every client sends is read by slicing (``strptime`` was a sixth of verifying a
    signature); anything else goes to ``strptime``, which accepts what it always accepted.
    Kept for the last few values: a busy client signs many requests in the same second.
    """
    try:
        if _AMZ_DATE.fullmatch(value):
            parsed = datetime(
                int(value[0:4]),
                int(value[4:6]),
                int(value[6:8]),
                int(value[9:11]),
                int(value[11:13]),
                int(value[13:15]),
            )
        else:
            parsed = datetime.strptime(value, sigv4.TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return (parsed - _EPOCH).total_seconds()


def _parse_http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def unsigned_amz_headers(hdrs: RequestHeaders, signed_names: Sequence[str]) -> list[str]:
    """The ``x-amz-*`` headers of a SigV4 request that its signature does not cover, sorted.

    S3 refuses these on header-signed *and* presigned requests alike: an ``x-amz-*`` header
    changes what a request does (``x-amz-copy-source`` turns an upload into a copy of another
    object, ``x-amz-meta-*``, ``x-amz-acl``... change what is stored), so a presigned URL signed
    for ``host`` alone must not carry any.  The one exception, :data:`UNSIGNED_AMZ_HEADERS_ALLOWED`,
    is bound into the signature through its value anyway.
    """
    # Every signed request has some (``x-amz-date`` at least), and every client lists them as
    # they are named (lower case): the names are normalised only for one not found as listed.
    unlisted = [
        name
        for name in hdrs.names()
        if name.startswith("x-amz-")
        and name not in UNSIGNED_AMZ_HEADERS_ALLOWED
        and name not in signed_names
    ]
    if not unlisted:
        return []
    signed = {name.strip().lower() for name in signed_names}
    return sorted(name for name in unlisted if name not in signed)


def _is_sha256_hex(value: str) -> bool:
    return _SHA256_HEX.fullmatch(value) is not None


class Authenticator:
    """Verifies request signatures against a :class:`KeyRing`.

    :param required: reject anonymous requests; when ``False`` signatures are not checked
        (identity is always ``None``) but payload modes are still reported so aws-chunked
        bodies get decoded.
    :param region: the region signatures' scope must name.
    :param host_override: the ``host`` value clients signed, when a proxy in front rewrites it.
    :param clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        keyring: KeyRing,
        required: bool,
        region: str,
        host_override: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._required = required
        self._region = region
        self._host_override = host_override
        self._clock = clock

    # -- public API -----------------------------------------------------------------------------

    @property
    def required(self) -> bool:
        """Whether signatures are required (unsigned requests are refused unless allowed)."""
        return self._required

    def authenticate(
        self,
        method: str,
        raw_target: bytes,
        headers: HeadersLike,
        bucket_from_host: str | None = None,
        allow_anonymous: bool = False,
    ) -> AuthResult:
        """Verify the request's signature and say who sent it.

        :param raw_target: the request target exactly as received (path and query, still
            percent-encoded).
        :param bucket_from_host: the bucket named by a virtual-host style ``Host``; SigV2
            signs ``/bucket`` in front of the path.
        :param allow_anonymous: an unsigned request is answered with the ``anonymous`` scheme
            even when signatures are required, for the caller to check against the resource's
            ACL (:mod:`s3balance.acl`); a request that carries a signature is verified as ever.
        :raises S3Error: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
            AuthorizationHeaderMalformed, AuthorizationQueryParametersError,
            RequestTimeTooSkewed, InvalidRequest, InvalidArgument, NotImplemented.
        """
        hdrs = RequestHeaders.coerce(headers)
        raw_path, raw_query = sigv4.split_target(raw_target)
        pairs = sigv4.query_pairs(raw_query)
        query = {name: value for name, value in reversed(pairs)}
        try:
            scheme = self._scheme(hdrs, query)
        except S3Error:
            if self._required:
                raise
            scheme = "anonymous"  # auth off: an unintelligible Authorization is just ignored
        if scheme == "anonymous":
            if self._required and not allow_anonymous:
                raise errors.AccessDenied()
            return AuthResult(None, self._declared_payload(hdrs, default=""))
        if not self._required:
            return self._unverified(scheme, method, raw_path, pairs, query, hdrs)
        if scheme in ("sigv4", "sigv4-presigned"):
            claim = self._parse_v4(scheme, hdrs, query)
            self._check_v4_claim(claim)
            return self._verify_v4(claim, method, raw_path, pairs, hdrs)
        if scheme == "sigv2":
            return self._verify_v2_header(method, raw_path, raw_query, hdrs, bucket_from_host)
        return self._verify_v2_query(method, raw_path, raw_query, query, hdrs, bucket_from_host)

    def body_filter(self, result: AuthResult, headers: HeadersLike) -> BodyFilterLike | None:
        """A filter verifying the body as it streams, or ``None`` when there is nothing to check.

        :raises S3Error: InvalidRequest for an unsupported ``x-amz-trailer`` algorithm,
            InvalidArgument for a bad ``x-amz-decoded-content-length``.
        """
        hdrs = RequestHeaders.coerce(headers)
        payload = result.payload
        if payload in sigv4.STREAMING_MODES:
            signed = payload != sigv4.STREAMING_UNSIGNED_TRAILER
            trailer = payload != sigv4.STREAMING_SIGNED
            expected_trailer = hdrs.get("x-amz-trailer") if trailer else None
            return AwsChunkedDecoder(
                signed_chunks=signed,
                trailer=trailer,
                signer=result.signer if signed else None,
                expected_trailer=expected_trailer.strip() if expected_trailer else None,
                decoded_length=self.decoded_length(hdrs),
            )
        if _is_sha256_hex(payload):
            return Sha256PayloadVerifier(payload)
        return None

    def decoded_length(self, headers: HeadersLike) -> int | None:
        """``x-amz-decoded-content-length``: the payload length inside aws-chunked framing.

        :raises S3Error: InvalidArgument when present but not a non-negative integer.
        """
        value = RequestHeaders.coerce(headers).get("x-amz-decoded-content-length")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or len(value) > 19:
            raise errors.InvalidArgument(
                "x-amz-decoded-content-length must be a non-negative integer.",
                ArgumentName="x-amz-decoded-content-length",
                ArgumentValue=value,
            )
        return int(value)

    # -- scheme detection and the auth-off path -------------------------------------------------

    @staticmethod
    def _scheme(hdrs: RequestHeaders, query: Mapping[str, str]) -> str:
        authorizations = hdrs.get_all("authorization")
        found = []
        if authorizations:
            if len(authorizations) > 1:
                raise errors.InvalidArgument(
                    "Only one Authorization header is allowed.", ArgumentName="Authorization"
                )
            value = authorizations[0].strip()
            if value.startswith(sigv4.ALGORITHM + " "):
                found.append("sigv4")
            elif value.startswith("AWS "):
                found.append("sigv2")
            else:
                raise errors.InvalidArgument(
                    "Unsupported Authorization Type",
                    ArgumentName="Authorization",
                    ArgumentValue=value.split(" ", 1)[0],
                )
        if query:
            if any(name in query for name in _PRESIGN_V4_PARAMS):
                found.append("sigv4-presigned")
            if "Signature" in query or "AWSAccessKeyId" in query:
                found.append("sigv2-presigned")
        if len(found) > 1:
            raise errors.InvalidArgument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
                ArgumentName="Authorization",
            )
        return found[0] if found else "anonymous"

    @staticmethod
    def _declared_payload(hdrs: RequestHeaders, default: str) -> str:
        return (hdrs.get("x-amz-content-sha256") or default).strip()

    def _unverified(
        self,
        scheme: str,
        method: str,
        raw_path: bytes,
        pairs: list[tuple[str, str]],
        query: Mapping[str, str],
        hdrs: RequestHeaders,
    ) -> AuthResult:
        """Auth is off: report the payload mode, and chunk-signing data when the key is known."""
        if not scheme.startswith("sigv4"):
            return AuthResult(None, self._declared_payload(hdrs, ""), scheme=scheme)
        try:
            claim = self._parse_v4(scheme, hdrs, query)
        except S3Error:
            default = sigv4.UNSIGNED_PAYLOAD if scheme == "sigv4-presigned" else ""
            return AuthResult(None, self._declared_payload(hdrs, default), scheme=scheme)
        secret = self._keyring.secret_for(claim.access_key)
        signer = None
        if secret is not None:
            key = sigv4.signing_key(secret, claim.scope_date, claim.region)
            signer = ChunkSigner(key, claim.timestamp, claim.scope, claim.signature)
        return AuthResult(None, claim.payload, claim.access_key, scheme, signer)

    # -- SigV4 ----------------------------------------------------------------------------------

    def _parse_v4(self, scheme: str, hdrs: RequestHeaders, query: Mapping[str, str]) -> _V4Claim:
        if scheme == "sigv4":
            return self._parse_v4_header(hdrs)
        return self._parse_v4_query(hdrs, query)

    def _parse_v4_header(self, hdrs: RequestHeaders) -> _V4Claim:
        malformed = errors.AuthorizationHeaderMalformed
        value = (hdrs.get("authorization") or "").strip()[len(sigv4.ALGORITHM) :]
        fields: dict[str, str] = {}
        for component in value.split(","):
            name, equals, field_value = component.strip().partition("=")
            if equals:
                fields[name.strip()] = field_value.strip()
        if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
            raise malformed(
                "The authorization header is malformed; the authorization header requires three "
                "components: Credential, SignedHeaders, and Signature."
            )
        access_key, scope_date, region = self._split_credential(
            fields["Credential"], malformed, "The authorization header is malformed; "
        )
        amz_date = hdrs.get("x-amz-date")
        if amz_date is not None:
            request_time = _parse_amz_date(amz_date.strip())
            timestamp = amz_date.strip()
        else:
            http_date = hdrs.get("date")
            request_time = _parse_http_date(http_date) if http_date else None
            timestamp = (
                time.strftime(sigv4.TIMESTAMP_FORMAT, time.gmtime(request_time))
                if request_time is not None
                else ""
            )
        if request_time is None:
            raise errors.AccessDenied(_NO_DATE)
        if timestamp[:8] != scope_date:
            raise malformed(
                "The authorization header is malformed; Invalid credential date. "
                "Date is not the same as X-Amz-Date."
            )
        payload = hdrs.get("x-amz-content-sha256")
        if payload is None:
            raise errors.InvalidRequest(
                "Missing required header for this request: x-amz-content-sha256"
            )
        return _V4Claim(
            access_key=access_key,
            scope_date=scope_date,
            region=region,
            signed_headers=fields["SignedHeaders"].split(";"),
            signature=fields["Signature"],
            timestamp=timestamp,
            request_time=request_time,
            payload=payload.strip(),
            presigned=False,
        )

    def _parse_v4_query(self, hdrs: RequestHeaders, query: Mapping[str, str]) -> _V4Claim:
        bad = errors.AuthorizationQueryParametersError
        if not all(name in query for name in _PRESIGN_V4_PARAMS):
            raise bad(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
                "X-Amz-Expires parameters."
            )
        if query["X-Amz-Algorithm"] != sigv4.ALGORITHM:
            raise bad('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
        access_key, scope_date, region = self._split_credential(
            query["X-Amz-Credential"], bad, "Error parsing the X-Amz-Credential parameter; "
        )
        timestamp = query["X-Amz-Date"]
        request_time = _parse_amz_date(timestamp)
        if request_time is None:
            raise bad("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        expires_text = query["X-Amz-Expires"]
        try:
            expires = parse_decimal(expires_text)
        except ValueError:
            raise bad("X-Amz-Expires should be a number") from None
        if expires > MAX_PRESIGN_EXPIRES:
            raise bad(
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            )
        if timestamp[:8] != scope_date:
            raise bad(
                "Error parsing the X-Amz-Credential parameter; Invalid credential date. "
                "Date is not the same as X-Amz-Date."
            )
        now = self._clock()
        # A URL valid for 0 seconds has expired whatever the clocks say (S3: 403, not 400).
        if expires == 0 or now > request_time + expires:
            raise errors.AccessDenied(
                "Request has expired",
                **{
                    "X-Amz-Expires": expires_text,
                    "Expires": _iso(request_time + expires),
                    "ServerTime": _iso(now),
                },
            )
        if request_time > now + MAX_SKEW_SECONDS:
            raise errors.AccessDenied("Request is not valid yet", ServerTime=_iso(now))
        payload = hdrs.get("x-amz-content-sha256") or query.get("X-Amz-Content-Sha256")
        return _V4Claim(
            access_key=access_key,
            scope_date=scope_date,
            region=region,
            signed_headers=query["X-Amz-SignedHeaders"].split(";"),
            signature=query["X-Amz-Signature"],
            timestamp=timestamp,
            request_time=request_time,
            payload=(payload or sigv4.UNSIGNED_PAYLOAD).strip(),
            presigned=True,
        )

    def _split_credential(
        self, credential: str, error: Callable[..., S3Error], prefix: str
    ) -> tuple[str, str, str]:
        parts = credential.split("/")
        if len(parts) != 5 or not all(parts):
            raise error(
                prefix + "the Credential is mal-formed; expecting "
                '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
            )
        access_key, scope_date, region, service, terminator = parts
        if len(scope_date) != 8 or not scope_date.isdigit():
            raise error(prefix + f"incorrect date format \"{scope_date}\". "
                        "This date in the credential must be in the format \"yyyyMMdd\".")
        if region != self._region:
            raise error(
                prefix + f"the region '{region}' is wrong; expecting '{self._region}'",
                Region=self._region,
            )
        if service != sigv4.SERVICE:
            raise error(prefix + f"incorrect service '{service}'. This endpoint belongs to 's3'.")
        if terminator != sigv4.TERMINATOR:
            raise error(
                prefix + f"incorrect terminal '{terminator}'. This endpoint uses 'aws4_request'."
            )
        return access_key, scope_date, region

    def _check_v4_claim(self, claim: _V4Claim) -> None:
        """Checks that need no secret, in the order S3 reports them."""
        if "host" not in claim.signed_headers:
            error = (
                errors.AuthorizationQueryParametersError
                if claim.presigned
                else errors.AuthorizationHeaderMalformed
            )
            raise error("The host header must be signed.")
        if not claim.presigned:
            self._check_skew(claim.request_time, claim.timestamp)
        payload = claim.payload
        if payload in _UNSUPPORTED_STREAMING:
            raise errors.NotImplementedError_(
                f"x-amz-content-sha256 {payload} is not implemented."
            )
        if not (
            payload == sigv4.UNSIGNED_PAYLOAD
            or payload in sigv4.STREAMING_MODES
            or _is_sha256_hex(payload)
        ):
            raise errors.InvalidArgument(
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
                "or a valid sha256 value.",
                ArgumentName="x-amz-content-sha256",
                ArgumentValue=payload,
            )

    def _check_skew(self, request_time: float, shown: str) -> None:
        now = self._clock()
        if abs(now - request_time) > MAX_SKEW_SECONDS:
            raise errors.RequestTimeTooSkewed(
                RequestTime=shown,
                ServerTime=_iso(now),
                MaxAllowedSkewMilliseconds=str(MAX_SKEW_SECONDS * 1000),
            )

    def _secret(self, access_key: str) -> str:
        secret = self._keyring.secret_for(access_key)
        if secret is None:
            raise errors.InvalidAccessKeyId(AWSAccessKeyId=access_key)
        return secret

    def _verify_v4(
        self,
        claim: _V4Claim,
        method: str,
        raw_path: bytes,
        pairs: list[tuple[str, str]],
        hdrs: RequestHeaders,
    ) -> AuthResult:
        secret = self._secret(claim.access_key)
        unsigned = unsigned_amz_headers(hdrs, claim.signed_headers)
        if unsigned:
            raise errors.AccessDenied(
                "There were headers present in the request which were not signed",
                HeadersNotSigned=", ".join(unsigned),
            )
        canonical = sigv4.canonical_request(
            method,
            raw_path,
            pairs,
            hdrs,
            claim.signed_headers,
            claim.payload,
            self._host_override,
            exclude_params=frozenset({"X-Amz-Signature"}) if claim.presigned else frozenset(),
        )
        to_sign = sigv4.string_to_sign(claim.timestamp, claim.scope, canonical)
        key = sigv4.signing_key(secret, claim.scope_date, claim.region)
        expected = sigv4.sign(key, to_sign)
        if not sigv4.signatures_equal(expected, claim.signature):
            raise errors.SignatureDoesNotMatch(
                AWSAccessKeyId=claim.access_key,
                StringToSign=to_sign,
                SignatureProvided=claim.signature,
                StringToSignBytes=_bytes_listing(to_sign),
                CanonicalRequest=canonical,
                CanonicalRequestBytes=_bytes_listing(canonical),
            )
        identity = self._keyring.identity_for(claim.access_key)
        return AuthResult(
            identity,
            claim.payload,
            claim.access_key,
            "sigv4-presigned" if claim.presigned else "sigv4",
            ChunkSigner(key, claim.timestamp, claim.scope, claim.signature),
        )

    # -- SigV2 ----------------------------------------------------------------------------------

    def _verify_v2_header(
        self,
        method: str,
        raw_path: bytes,
        raw_query: bytes,
        hdrs: RequestHeaders,
        bucket_from_host: str | None,
    ) -> AuthResult:
        credential = (hdrs.get("authorization") or "").strip()[len("AWS ") :]
        access_key, colon, signature = credential.strip().rpartition(":")
        if not colon or not access_key or not signature:
            raise errors.InvalidArgument(
                "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature",
                ArgumentName="Authorization",
                ArgumentValue=hdrs.get("authorization") or "",
            )
        amz_date = hdrs.get("x-amz-date")
        http_date = hdrs.get("date")
        shown = amz_date if amz_date is not None else http_date
        request_time = _parse_http_date(shown) if shown else None
        if request_time is None or shown is None:
            raise errors.AccessDenied(_NO_DATE)
        self._check_skew(request_time, shown)
        secret = self._secret(access_key)
        resources = sigv2.canonical_resources(raw_path, raw_query, bucket_from_host)
        # S3 signs an empty Date when x-amz-date is present; some clients (botocore) sign the
        # Date they send regardless.  Both values are the client's own, so accept either.
        dates = [""] if amz_date is not None else []
        if http_date is not None:
            dates.append(http_date.strip())
        return self._check_v2(
            access_key, secret, signature, method, hdrs, dates, resources, "sigv2"
        )

    def _verify_v2_query(
        self,
        method: str,
        raw_path: bytes,
        raw_query: bytes,
        query: Mapping[str, str],
        hdrs: RequestHeaders,
        bucket_from_host: str | None,
    ) -> AuthResult:
        if not all(name in query for name in ("AWSAccessKeyId", "Expires", "Signature")):
            raise errors.AccessDenied(
                "Query-string authentication requires the Signature, Expires and "
                "AWSAccessKeyId parameters"
            )
        expires_text = query["Expires"]
        try:
            expires_at = parse_decimal(expires_text)
        except ValueError:
            raise errors.AccessDenied("Invalid date (should be seconds since epoch)") from None
        now = self._clock()
        if now > expires_at:
            raise errors.AccessDenied(
                "Request has expired", Expires=_iso(expires_at), ServerTime=_iso(now)
            )
        access_key = query["AWSAccessKeyId"]
        secret = self._secret(access_key)
        # Presigning tools move Content-Type/MD5 and x-amz-* headers into the query string.
        pairs = [(name, [value]) for name, value in _iter_pairs(hdrs)]
        for name, value in query.items():
            lower = name.lower()
            if (lower.startswith("x-amz-") or lower in ("content-type", "content-md5")) and (
                lower not in hdrs
            ):
                pairs.append((lower, [value]))
        merged = RequestHeaders((name, v) for name, values in pairs for v in values)
        resources = sigv2.canonical_resources(raw_path, raw_query, bucket_from_host)
        return self._check_v2(
            access_key, secret, query["Signature"], method, merged, [expires_text], resources,
            "sigv2-presigned",
        )  # fmt: skip

    def _check_v2(
        self,
        access_key: str,
        secret: str,
        signature: str,
        method: str,
        hdrs: RequestHeaders,
        dates: list[str],
        resources: list[str],
        scheme: str,
    ) -> AuthResult:
        """Accept the signature if it matches one of the strings to sign the client may have
        meant (each date it sent, each spelling of the resource)."""
        first_to_sign = ""
        for resource in resources:
            for date in dates:
                to_sign = sigv2.string_to_sign(method, hdrs, date, resource)
                first_to_sign = first_to_sign or to_sign
                expected = sigv2.sign(secret, to_sign)
                if sigv4.signatures_equal(expected, signature):
                    identity = self._keyring.identity_for(access_key)
                    return AuthResult(
                        identity, self._declared_payload(hdrs, ""), access_key, scheme
                    )
        raise errors.SignatureDoesNotMatch(
            AWSAccessKeyId=access_key,
            StringToSign=first_to_sign,
            SignatureProvided=signature,
            StringToSignBytes=_bytes_listing(first_to_sign),
        )


def _iter_pairs(hdrs: RequestHeaders) -> list[tuple[str, str]]:
    return [(name, value) for name in hdrs.names() for value in hdrs.get_all(name)]
