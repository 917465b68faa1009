"""S3's rules for the names clients choose: keys, buckets and user metadata.

Checked before anything is stored, so a name a backend or a later reader would refuse never gets
a row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from s3balance import errors

#: S3's limit on a key's UTF-8 length.
MAX_KEY_BYTES = 1024
#: Names the daemon serves itself; a virtual bucket may not take them.
RESERVED_BUCKET_NAMES = frozenset({"health", "metrics", "api"})
#: User metadata names the daemon keeps for itself on the backend (see
#: :data:`s3balance.realkeys.KEY_METADATA`); clients may not use this prefix.
RESERVED_METADATA_PREFIX = "s3balance-"

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def validate_key(key: str) -> None:
    """:raises S3Error: KeyTooLongError past 1024 UTF-8 bytes."""
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(Size=str(size), MaxSizeAllowed=str(MAX_KEY_BYTES))


def validate_bucket_name(name: str) -> None:
    """S3's rules for new bucket names (the DNS-compatible ones), plus our reserved names.

    :raises S3Error: InvalidBucketName.
    """
    if (
        not _BUCKET_NAME.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IP_ADDRESS.match(name)
        or name.startswith("xn--")
        or name.endswith("-s3alias")
        or name in RESERVED_BUCKET_NAMES
    ):
        raise errors.InvalidBucketName(BucketName=name)


def check_client_metadata(metadata: Mapping[str, str]) -> None:
    """:raises S3Error: InvalidArgument for user metadata in the daemon's reserved names."""
    for name in metadata:
        if name.lower().startswith(RESERVED_METADATA_PREFIX):
            raise errors.InvalidArgument(
                f"The metadata name x-amz-meta-{name} is reserved by this server.",
                ArgumentName=f"x-amz-meta-{name}",
            )


__all__ = [
    "MAX_KEY_BYTES",
    "RESERVED_BUCKET_NAMES",
    "RESERVED_METADATA_PREFIX",
    "check_client_metadata",
    "validate_bucket_name",
    "validate_key",
]
