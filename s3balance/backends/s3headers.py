"""The headers of S3 requests and answers: what an object carries (stored headers, user metadata,
checksums, encryption) in the form S3 services send and accept."""

from __future__ import annotations

import base64
import re

from twisted.web.http_headers import Headers

from s3balance.backends.interface import ENCRYPTION_HEADER, STORED_HEADERS

#: Headers besides :data:`STORED_HEADERS` forwarded on uploads so the backend verifies the bytes.
CHECKSUM_HEADERS = ("content-md5",)
CHECKSUM_PREFIX = "x-amz-checksum-"
METADATA_PREFIX = "x-amz-meta-"

_RFC2047 = re.compile(r"^=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=$", re.IGNORECASE)


def encode_metadata_value(value: str) -> str:
    """Header-safe form of a metadata value: non-ASCII as RFC 2047 ``=?UTF-8?B?...?=``, as AWS
    SDKs and S3 itself present such values."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def decode_metadata_value(value: str) -> str:
    """Inverse of :func:`encode_metadata_value`; other values are returned unchanged."""
    match = _RFC2047.match(value.strip())
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return value


def request_headers(headers: dict[str, str], metadata: dict[str, str]) -> dict[str, str]:
    """A write's headers for the service: stored headers, checksums for the backend to verify,
    the encryption asked for, and ``x-amz-meta-*``."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in STORED_HEADERS or lower in CHECKSUM_HEADERS or lower == ENCRYPTION_HEADER:
            out[lower] = value
        elif lower.startswith(CHECKSUM_PREFIX):
            out[lower] = value
    for name, value in metadata.items():
        out[f"{METADATA_PREFIX}{name.lower()}"] = encode_metadata_value(value)
    return out


def stored_headers_and_metadata(headers: Headers) -> tuple[dict[str, str], dict[str, str]]:
    """What a GET or HEAD answer says was stored with the object: the headers of
    :data:`STORED_HEADERS` and the user metadata (names without ``x-amz-meta-``)."""
    stored = {}
    metadata = {}
    for raw_name, raw_values in headers.getAllRawHeaders():
        name = raw_name.decode("latin-1").lower()
        value = raw_values[-1].decode("latin-1")
        if name in STORED_HEADERS:
            stored[name] = value
        elif name.startswith(METADATA_PREFIX):
            metadata[name[len(METADATA_PREFIX):]] = decode_metadata_value(value)
    return stored, metadata


def reported_checksums(headers: Headers) -> dict[str, str]:
    """The ``x-amz-checksum-*`` values of an answer (the service computed them)."""
    checksums = {}
    for raw_name, raw_values in headers.getAllRawHeaders():
        name = raw_name.decode("latin-1").lower()
        if name.startswith(CHECKSUM_PREFIX) and name != "x-amz-checksum-type":
            checksums[name] = raw_values[-1].decode("latin-1")
    return checksums


def encryption_asked(headers: dict[str, str]) -> str | None:
    """The ``x-amz-server-side-encryption`` value of a write's headers, if any."""
    for name, value in headers.items():
        if name.lower() == ENCRYPTION_HEADER:
            return value
    return None
