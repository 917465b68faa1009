"""What every write carries in its backend metadata so that its index row can be rebuilt.

The real key already names the virtual bucket, the key and the write
(:func:`s3balance.realkeys.new_real_key`); the backend already keeps the stored headers of
:data:`~s3balance.backends.interface.STORED_HEADERS`, the user metadata, the size and the ETag.
What only the index knew goes into reserved backend metadata (``x-amz-meta-s3balance-*``, a
prefix clients may not use), each value plain ASCII so that every S3 service keeps it as sent:

``s3balance-key``
    the virtual key, base64url of its UTF-8: for a hashed real key (already written by
    :func:`~s3balance.realkeys.new_real_key`) and for a key some services would normalise (``//``
    or ``.`` segments), which the listing would give back changed.
``s3balance-headers``
    stored headers outside :data:`STORED_HEADERS` (``x-amz-server-side-encryption``), URL-encoded.
``s3balance-acl``
    the canned ACL when it is not ``private``.
``s3balance-checksums``
    the ``x-amz-checksum-*`` values known before the body is sent (a header's, a copy's),
    URL-encoded.  A value in an aws-chunked trailer is known only after the backend stored the
    object, when its metadata can no longer change: it is not kept.
``s3balance-tags``
    the object's tags at write time, URL-encoded as in ``x-amz-tagging``.

S3 limits user metadata to 2 KiB (names and values, UTF-8).  The entries are added in the order
above while the total, the client's own metadata included, stays within it; an entry that does
not fit is left out (and logged): the write never fails for it, the rebuilt row lacks it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from s3balance.backends.interface import STORED_HEADERS
from s3balance.logs import make_logger
from s3balance.names import RESERVED_METADATA_PREFIX
from s3balance.realkeys import KEY_METADATA, encode_key, key_from_metadata

log = make_logger()

#: Backend metadata names (without ``x-amz-meta-``) under the prefix clients may not use.
HEADERS = RESERVED_METADATA_PREFIX + "headers"
ACL = RESERVED_METADATA_PREFIX + "acl"
CHECKSUMS = RESERVED_METADATA_PREFIX + "checksums"
TAGS = RESERVED_METADATA_PREFIX + "tags"

#: S3's limit on user metadata: the UTF-8 bytes of every name and value.
METADATA_LIMIT = 2048



def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes that count towards S3's user-metadata limit."""
    return sum(len(name.encode("utf-8")) + len(value.encode("utf-8"))
               for name, value in metadata.items())


def _encode_pairs(pairs: Mapping[str, str]) -> str:
    return urllib.parse.urlencode(sorted(pairs.items()), quote_via=urllib.parse.quote)


def _decode_pairs(value: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(value, keep_blank_values=True))


def key_may_be_normalised(key: str) -> bool:
    """Whether a backend may list a real key ending in ``key`` changed: ``//`` or a ``.``
    segment."""
    # The real key goes on after the key (``~w<id>``), so its last segment is never empty.
    return any(segment in ("", ".") for segment in (key + "~").split("/"))


def reserved_metadata(
    key: str,
    headers: Mapping[str, str],
    metadata: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
    acl: str = "private",
    checksums: Callable[[], dict[str, str]] | None = None,
) -> dict[str, str]:
    """The reserved entries to add to ``metadata`` (the client's plus the real key's extra) for
    one write of ``key``.

    :param checksums: the write's checksum callable; called now, it gives what is already known.
    """
    wanted: list[tuple[str, str]] = []
    if KEY_METADATA not in metadata and key_may_be_normalised(key):
        wanted.append((KEY_METADATA, encode_key(key)))
    extra_headers = {
        name: value for name, value in headers.items() if name.lower() not in STORED_HEADERS
    }
    if extra_headers:
        wanted.append((HEADERS, _encode_pairs(extra_headers)))
    if acl and acl != "private":
        wanted.append((ACL, acl))
    known = checksums() if checksums is not None else {}
    if known:
        wanted.append((CHECKSUMS, _encode_pairs(known)))
    if tags:
        wanted.append((TAGS, _encode_pairs(tags)))
    budget = METADATA_LIMIT - metadata_size(metadata)
    added: dict[str, str] = {}
    for name, value in wanted:
        cost = metadata_size({name: value})
        if cost > budget:
            log.warn(
                "backend metadata of {key} has no room for {name} ({cost} bytes): a rebuild "
                "will not restore it",
                key=key, name=name, cost=cost,
            )
            continue
        added[name] = value
        budget -= cost
    return added


@dataclass(frozen=True)
class RebuildHints:
    """What a stored object's backend metadata says about its row.

    :ivar key: the virtual key when the metadata names it (else read it from the real key).
    :ivar metadata: the client's user metadata, reserved names removed.
    """

    key: str | None
    metadata: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    acl: str = "private"
    checksums: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def read_reserved(metadata: Mapping[str, str]) -> RebuildHints:
    """Split a stored object's metadata into the client's and the reserved entries."""
    client = {
        name: value for name, value in metadata.items()
        if not name.lower().startswith(RESERVED_METADATA_PREFIX)
    }
    return RebuildHints(
        key=key_from_metadata(metadata),
        metadata=client,
        headers=_decode_pairs(metadata.get(HEADERS, "")),
        acl=metadata.get(ACL) or "private",
        checksums=_decode_pairs(metadata.get(CHECKSUMS, "")),
        tags=_decode_pairs(metadata.get(TAGS, "")),
    )
