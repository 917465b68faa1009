"""AWS Signature Version 4 as S3 computes it: canonical request, string to sign, signing key.

Pure functions over the bytes the client sent.  S3 differs from other AWS services in two ways
that matter here: the path is neither normalised (``.``/``..`` stay) nor double-encoded, so the
canonical URI is the request path percent-decoded once and re-encoded per the SigV4 rules.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote_to_bytes

from s3balance.auth.headers import RequestHeaders, encode_signed_text

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Derived signing keys kept (see :func:`signing_key`).
SIGNING_KEYS_CACHED = 512

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = frozenset(
    {STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
)


def split_target(raw_target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into raw path and raw query (absolute-form targets accepted)."""
    target = raw_target
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        after_scheme = target.index(b"//") + 2
        slash = target.find(b"/", after_scheme)
        query_mark = target.find(b"?", after_scheme)
        if slash < 0 or (0 <= query_mark < slash):
            target = b"/" + (target[query_mark:] if query_mark >= 0 else b"")
        else:
            target = target[slash:]
    target = target.split(b"#", 1)[0]
    path, _, query = target.partition(b"?")
    return path, query


#: A path with nothing to decode or encode: its canonical form is itself (most object keys).
_PLAIN_PATH = re.compile(rb"[A-Za-z0-9_.~/-]*")


def uri_encode(data: bytes, keep_slash: bool) -> str:
    """Percent-encode every byte except the unreserved ones (and ``/`` in paths)."""
    return quote(data, safe="/" if keep_slash else "")


def canonical_uri(raw_path: bytes) -> str:
    """The path as S3 canonicalises it: decoded once, re-encoded, never normalised.

    A path of unreserved characters and ``/`` alone comes out as it went in, so it is taken
    as it is (``quote`` was a tenth of verifying a small GET).
    """
    if _PLAIN_PATH.fullmatch(raw_path):
        return raw_path.decode("ascii") or "/"
    return uri_encode(unquote_to_bytes(raw_path), keep_slash=True) or "/"


def query_pairs(raw_query: bytes) -> list[tuple[str, str]]:
    """Decoded ``(name, value)`` pairs in order; a parameter without ``=`` has an empty value.

    Strings keep undecodable bytes as surrogates so :func:`canonical_query` re-encodes them
    exactly.  ``+`` is a literal plus, as in SigV4 (not a form-encoded space).
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        pairs.append(
            (
                unquote_to_bytes(name).decode("utf-8", "surrogateescape"),
                unquote_to_bytes(value).decode("utf-8", "surrogateescape"),
            )
        )
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]], exclude: frozenset[str] = frozenset()) -> str:
    """Encoded ``name=value`` pairs sorted by name then value, joined by ``&``."""
    if not pairs:
        return ""
    encoded = sorted(
        (
            uri_encode(encode_signed_text(name), keep_slash=False),
            uri_encode(encode_signed_text(value), keep_slash=False),
        )
        for name, value in pairs
        if name not in exclude
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def trim_header_value(value: str) -> str:
    """SigV4's Trimall: strip, and collapse inner runs of spaces to one."""
    return " ".join(value.split())


def canonical_headers(
    headers: RequestHeaders, signed_names: list[str], host_override: str = ""
) -> str:
    """``name:value\\n`` lines for the signed headers, in the order given (already sorted).

    A signed header the request lacks is canonicalised with an empty value, as S3 does, so the
    signature simply fails to match.
    """
    lines = []
    for name in signed_names:
        if name == "host" and host_override:
            values: Sequence[str] = (host_override,)
        else:
            values = headers.values_of(name.lower())
        lines.append(f"{name}:{','.join([trim_header_value(v) for v in values])}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    raw_path: bytes,
    pairs: list[tuple[str, str]],
    headers: RequestHeaders,
    signed_names: list[str],
    payload: str,
    host_override: str = "",
    exclude_params: frozenset[str] = frozenset(),
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(pairs, exclude_params),
            canonical_headers(headers, signed_names, host_override),
            ";".join(signed_names),
            payload,
        ]
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(encode_signed_text(text)).hexdigest()


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, timestamp, scope, sha256_hex(canonical)])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=SIGNING_KEYS_CACHED)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The derived key: four HMACs that depend only on the secret and the scope, so they are
    computed once per (secret, date, region, service) and kept (a day's keys for a few
    hundred key pairs), not once per request signed or verified."""
    k_date = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, TERMINATOR)


def sign(key: bytes, text: str) -> str:
    """Hex signature of a string to sign.

    Not ``hmac.digest(key, text, "sha256")``: with OpenSSL 3 it looks the digest up by name at
    every call and lets go of the GIL around it, which took twice as long here and, in the
    daemon, handed the reactor's GIL to the database threads once per request.
    """
    return hmac.new(key, encode_signed_text(text), hashlib.sha256).hexdigest()


def chunk_string_to_sign(
    timestamp: str, scope: str, previous_signature: str, chunk_sha256_hex: str
) -> str:
    """What each aws-chunked data chunk signs, chained to the previous chunk's signature."""
    return "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            timestamp,
            scope,
            previous_signature,
            EMPTY_SHA256,
            chunk_sha256_hex,
        ]
    )


def trailer_string_to_sign(
    timestamp: str, scope: str, previous_signature: str, trailer_sha256_hex: str
) -> str:
    """What the ``x-amz-trailer-signature`` of a signed-trailer body signs."""
    return "\n".join(
        ["AWS4-HMAC-SHA256-TRAILER", timestamp, scope, previous_signature, trailer_sha256_hex]
    )


def signatures_equal(expected: str, provided: str) -> bool:
    """Constant-time comparison, so timing reveals nothing about the expected signature."""
    return hmac.compare_digest(expected.encode("ascii"), provided.encode("ascii", "replace"))
