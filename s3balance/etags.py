"""ETags, the one home of their spelling and comparison rules.

S3 quotes an ETag (``"<md5 hex>"``, ``"<md5 hex>-<parts>"`` for a multipart object); clients and
some servers drop the quotes, or send a weak ``W/"..."`` form in conditional headers.  Every place
that stores, compares or computes an ETag goes through these functions so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r'^"[0-9a-f]{32}-\d+"$')


def quoted_etag(etag: str) -> str:
    """S3's quoted form; some servers (SeaweedFS's CopyObjectResult) drop the quotes.  A weak
    ``W/"..."`` ETag is kept as it is."""
    etag = etag.strip()
    quoted = etag[2:] if etag.startswith("W/") else etag
    if len(quoted) >= 2 and quoted.startswith('"') and quoted.endswith('"'):
        return etag
    return f'"{etag.strip(chr(34))}"'


def unquoted_etag(etag: str) -> str:
    """An ETag without its quotes, as S3 spells it in GetObjectAttributes."""
    return etag.strip().strip('"')


def bare_etag(etag: str) -> str:
    """An ETag without quotes, in lower case: the form two ETags are compared in where S3 takes
    them with or without quotes (CompleteMultipartUpload's part list, a backend's listing)."""
    return unquoted_etag(etag).lower()


def _unweakened(value: str) -> str:
    value = value.strip()
    return unquoted_etag(value[2:] if value.startswith("W/") else value)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` list names ``etag`` (``*`` names any)."""
    wanted = _unweakened(etag)
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or (candidate and _unweakened(candidate) == wanted):
            return True
    return False


def is_multipart_etag(etag: str) -> bool:
    """Whether ``etag`` (quoted) has S3's multipart form ``"<md5 hex>-<parts>"``."""
    return _MULTIPART.match(etag) is not None


def multipart_etag(part_etags: Sequence[str]) -> str | None:
    """S3's multipart ETag (quoted) of parts given by their ETags (quoted or not).

    :returns: ``None`` when a part ETag is not a plain MD5 (then only the backend knows).
    """
    digests = [bare_etag(etag) for etag in part_etags]
    if not all(_MD5_HEX.match(digest) for digest in digests):
        return None
    return multipart_md5_etag(digests)


def multipart_md5_etag(part_md5s: Sequence[str]) -> str:
    """S3's multipart ETag (quoted): MD5 of the concatenated binary part MD5s (given in hex),
    dash, part count."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"'


def etag_agrees(row_etag: str, etag: str) -> bool | None:
    """Whether a copy whose backend reports ``etag`` holds the bytes of a row whose ETag is
    ``row_etag``, as far as ETags tell: ``True`` (same ETag), ``False`` (different bytes),
    ``None`` (they cannot be compared).

    A row keeps one ETag, the client-visible one, which is the backend ETag its write got:

    - a plain ETag (``"<md5>"``) is the MD5 of the bytes, on every backend s3balance writes to
      (S3 without SSE-KMS or SSE-C, which s3balance refuses, local directories, memory), so a
      copy with a plain ETag must have the same one; a copy made by multipart (above the
      threshold) has a multipart ETag instead, which cannot be compared;
    - a multipart ETag (``"<md5>-<n>"``) depends on the part layout and, on some services, on
      more than the bytes (SeaweedFS's UploadPartCopy answers part ETags that are not MD5s): a
      copy assembled with the row's ``part_sizes`` (as :class:`~s3balance.copying.ObjectCopier`
      does) usually has the same ETag, but one that differs, or a plain one (a copy made by one
      PUT or CopyObject), says nothing about the bytes: they cannot be compared.

    Backends whose single-PUT ETag is not the MD5 of the bytes (a bucket encrypting with KMS by
    default) are not supported by this check: their copies would all look corrupt.
    """
    row, got = bare_etag(row_etag), bare_etag(etag)
    if not row or not got:
        return None
    if row == got:
        return True
    if _MD5_HEX.match(row) and _MD5_HEX.match(got):
        return False
    return None


__all__ = [
    "bare_etag",
    "etag_agrees",
    "etag_matches",
    "is_multipart_etag",
    "multipart_etag",
    "multipart_md5_etag",
    "quoted_etag",
    "unquoted_etag",
]
