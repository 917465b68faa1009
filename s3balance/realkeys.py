"""Where each write's bytes go inside a real bucket: the real key ``<vbucket>/<key>~w<write id>``.

Every write gets a real key of its own (the first rule of :mod:`s3balance.gateway`), so the key
carries a write id that no other write uses, and the virtual bucket and key it belongs to can be
read back from it (scrub does, to tell an orphan from a row's bytes).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from s3balance.names import RESERVED_METADATA_PREFIX

#: Longest real key we give a backend: S3's own key limit, which the real bucket applies to us.
MAX_REAL_KEY_BYTES = 1024
#: Backend user metadata (``x-amz-meta-s3balance-key``) holding the virtual key of an object
#: whose real key is hashed (clients may not use the ``s3balance-`` prefix:
#: :func:`s3balance.names.check_client_metadata`).
KEY_METADATA = RESERVED_METADATA_PREFIX + "key"
#: The directory of hashed real keys inside a virtual bucket's prefix.
HASHED_KEY_DIR = "~s3balance-hashed"
#: Length of the suffix: ``~w`` and 24 hex digits.
SUFFIX_LENGTH = 26

_WRITE_ID = re.compile(r"~w([0-9a-f]{16})([0-9a-f]{8})$")
_HASHED = re.compile(re.escape(HASHED_KEY_DIR) + r"/([0-9a-f]{64})$")


_last_stamp = 0


def new_write_id(now: float) -> str:
    """A unique, time-ordered write id: 16 hex digits of nanoseconds since the epoch (strictly
    increasing within the process) and 8 random hex digits (unique across daemons)."""
    global _last_stamp
    stamp = max(int(now * 1e9), _last_stamp + 1)
    _last_stamp = stamp
    return f"{stamp:016x}{secrets.token_hex(4)}"


def new_real_key(bucket: str, key: str, write_id: str) -> tuple[str, dict[str, str]]:
    """Where one write of ``bucket``/``key`` goes inside a real bucket, and the backend metadata
    it needs on top of the client's.

    The format (all writes since one real key per write; older rows may still name the plain
    ``<bucket>/<key>``)::

        <bucket>/<key>~w<write id>                      when it fits in 1024 UTF-8 bytes
        <bucket>/~s3balance-hashed/<sha256 hex of key>~w<write id>   otherwise

    ``<write id>`` is :func:`new_write_id`'s 24 lower-case hex digits, so the suffix is always 26
    characters and the key is what lies between ``<bucket>/`` and it.  A hashed real key keeps
    the key, base64url of its UTF-8, in the backend metadata ``x-amz-meta-s3balance-key``.  Of
    several real keys of one virtual key, the one with the greatest write id is the newest.
    """
    plain = f"{bucket}/{key}~w{write_id}"
    if len(plain.encode("utf-8")) <= MAX_REAL_KEY_BYTES:
        return plain, {}
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{bucket}/{HASHED_KEY_DIR}/{digest}~w{write_id}", {KEY_METADATA: encode_key(key)}


def encode_key(key: str) -> str:
    """A key as :data:`KEY_METADATA` keeps it: base64url of its UTF-8 (metadata is ASCII)."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class ParsedRealKey:
    """What a real key says about the write that made it (see :func:`new_real_key`).

    :ivar key: the virtual key, or None when it is hashed (read it from ``metadata_key``).
    :ivar key_hash: the SHA-256 (hex) of the virtual key of a hashed real key.
    :ivar write_id: the write id; ``""`` for a legacy ``<bucket>/<key>`` real key.
    """

    bucket: str
    key: str | None
    write_id: str
    key_hash: str | None = None

    @property
    def written_at(self) -> float | None:
        """Seconds since the epoch when the write started, from its id."""
        return int(self.write_id[:16], 16) / 1e9 if self.write_id else None


def parse_real_key(real: str) -> ParsedRealKey | None:
    """Read a real key back (None when it is not one of ours: no ``/``)."""
    bucket, slash, rest = real.partition("/")
    if not slash or not bucket:
        return None
    match = _WRITE_ID.search(rest)
    if match is None:
        return ParsedRealKey(bucket, rest, "")
    body = rest[: match.start()]
    write_id = match.group(1) + match.group(2)
    hashed = _HASHED.fullmatch(body)
    if hashed is not None:
        return ParsedRealKey(bucket, None, write_id, hashed.group(1))
    return ParsedRealKey(bucket, body, write_id)


def key_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The virtual key kept in a hashed real key's backend metadata, or None."""
    value = metadata.get(KEY_METADATA)
    if value is None:
        return None
    try:
        return base64.urlsafe_b64decode(value.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        return None


__all__ = [
    "HASHED_KEY_DIR",
    "KEY_METADATA",
    "MAX_REAL_KEY_BYTES",
    "SUFFIX_LENGTH",
    "ParsedRealKey",
    "encode_key",
    "key_from_metadata",
    "new_real_key",
    "new_write_id",
    "parse_real_key",
]
