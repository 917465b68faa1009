"""AWS Signature Version 2 for S3 (``Authorization: AWS key:sig`` and ``?Signature=`` URLs).

Still sent by s3cmd's ``signurl`` and older tools.  The string to sign uses the path exactly as
sent (no re-encoding) plus the sub-resources S3 lists; in virtual-host style it starts with
``/bucket``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import unquote

from s3balance.auth.headers import RequestHeaders, encode_signed_text

#: Query parameters that are part of the signed resource (S3's list plus what botocore signs).
SUB_RESOURCES = frozenset(
    {
        "accelerate", "acl", "analytics", "cors", "delete", "encryption", "inventory",
        "legal-hold", "lifecycle", "location", "logging", "metrics", "notification",
        "object-lock", "partNumber", "policy", "replication", "requestPayment",
        "response-cache-control", "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires", "restore",
        "retention", "select", "select-type", "tagging", "torrent", "uploadId", "uploads",
        "versionId", "versioning", "versions", "website",
    }
)  # fmt: skip


def canonical_resource(raw_path: bytes, raw_query: bytes, bucket_from_host: str | None) -> str:
    """``[/bucket]<path as sent>[?sub-resources]``; sub-resource values are decoded, not names."""
    path = raw_path.decode("utf-8", "surrogateescape") or "/"
    if bucket_from_host:
        path = "/" + bucket_from_host + path
    selected: list[str] = []
    pairs = []
    for part in raw_query.decode("utf-8", "surrogateescape").split("&"):
        name, equals, value = part.partition("=")
        if name in SUB_RESOURCES:
            pairs.append((name, equals, value))
    pairs.sort(key=lambda pair: pair[0])
    for name, equals, value in pairs:
        selected.append(f"{name}={unquote(value)}" if equals else name)
    return path + ("?" + "&".join(selected) if selected else "")


def canonical_resources(
    raw_path: bytes, raw_query: bytes, bucket_from_host: str | None
) -> list[str]:
    """The resources a client may have signed for this request, the usual form first.

    For a request on a bucket itself, clients disagree on the trailing slash: botocore and s3cmd
    sign ``/bucket/`` whether they send ``/bucket`` or ``/bucket/`` (and S3 accepts it), while a
    client following S3's documentation to the letter signs the path as sent.  Both name the
    same bucket, so both are accepted; any other request has exactly one canonical resource.
    """
    resource = canonical_resource(raw_path, raw_query, bucket_from_host)
    path, mark, query = resource.partition("?")
    segments = path.split("/")
    bucket_only = (len(segments) == 2 and segments[1]) or (
        len(segments) == 3 and segments[1] and not segments[2]
    )
    if not bucket_only:
        return [resource]
    bare = "/" + segments[1]
    return [bare + "/" + mark + query, bare + mark + query]


def amz_headers(headers: RequestHeaders) -> str:
    """``x-amz-name:v1,v2\\n`` for each ``x-amz-*`` header, sorted by name."""
    lines = []
    for name in sorted(n for n in headers.names() if n.startswith("x-amz-")):
        lines.append(f"{name}:{','.join(v.strip() for v in headers.get_all(name))}\n")
    return "".join(lines)


def string_to_sign(
    method: str,
    headers: RequestHeaders,
    date_or_expires: str,
    resource: str,
) -> str:
    return "".join(
        [
            method.upper(), "\n",
            (headers.get("content-md5") or "").strip(), "\n",
            (headers.get("content-type") or "").strip(), "\n",
            date_or_expires, "\n",
            amz_headers(headers),
            resource,
        ]
    )  # fmt: skip


def sign(secret: str, text: str) -> str:
    """Base64 HMAC-SHA1 of the string to sign."""
    digest = hmac.new(secret.encode("utf-8"), encode_signed_text(text), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")
