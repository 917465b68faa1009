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
    """S3's quoted form; some servers (SeaweedFS's CopyObjectResult) drop the quotes."""
    etag = etag.strip()
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"'):
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
    """S3's multipart ETag (quoted): MD5 of the concatenated binary part MD5s, dash, part count.

    :returns: ``None`` when a part ETag is not a plain MD5 (then only the backend knows).
    """
    digests = []
    for etag in part_etags:
        bare = bare_etag(etag)
        if not _MD5_HEX.match(bare):
            return None
        digests.append(bytes.fromhex(bare))
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


__all__ = [
    "bare_etag",
    "etag_matches",
    "is_multipart_etag",
    "multipart_etag",
    "quoted_etag",
    "unquoted_etag",
]
