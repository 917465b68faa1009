"""What each S3 operation the daemon sends to a backend costs, in Cloudflare R2's billing
classes: the one table every count of a backend request goes through.

The monthly budgets (``operation_limits.type_a`` and ``type_b``) gate placement and reads, so a
request counted in the wrong class, or twice, or not at all, changes where objects go and when
reads answer SlowDown.  Callers name the operation they sent
(:meth:`BackendPool.record_operation <s3balance.pool.BackendPool.record_operation>`); only this
table decides its class.  The classes are R2's published ones: class A writes, copies, the
multipart calls that make an object and listings; class B reads of objects and buckets; deletes
and aborts are free.  ListObjectsV2 is R2's ListObjects (one class A request per page).  R2
operations the daemon never sends to a backend (ListBuckets, ListParts, ListMultipartUploads,
DeleteObjects, bucket configuration) are not in the table, so nothing can count them by mistake;
the README lists the same table, and a test holds the two together.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

__all__ = [
    "CLASS_A",
    "CLASS_B",
    "FREE",
    "LISTING_PAGE",
    "OPERATION_CLASSES",
    "Operation",
    "listing_pages",
    "operation_class",
]

#: Every S3 operation the daemon sends to a backend.
Operation = Literal[
    "PutObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "ListObjectsV2",
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "DeleteObject",
    "AbortMultipartUpload",
]

CLASS_A = "A"
CLASS_B = "B"
#: Not billed, not counted against any budget.
FREE = "free"

#: Each operation's billing class.
OPERATION_CLASSES: Mapping[Operation, str] = MappingProxyType(
    {
        "PutObject": CLASS_A,
        "CopyObject": CLASS_A,
        "CreateMultipartUpload": CLASS_A,
        "UploadPart": CLASS_A,
        "UploadPartCopy": CLASS_A,
        "CompleteMultipartUpload": CLASS_A,
        "ListObjectsV2": CLASS_A,
        "GetObject": CLASS_B,
        "HeadObject": CLASS_B,
        "HeadBucket": CLASS_B,
        "DeleteObject": FREE,
        "AbortMultipartUpload": FREE,
    }
)

assert set(OPERATION_CLASSES) == set(get_args(Operation)), "every operation has one class"


def operation_class(operation: str) -> str:
    """:data:`CLASS_A`, :data:`CLASS_B` or :data:`FREE` for ``operation``.

    :raises ValueError: not an operation of the table (a caller naming a class, or a typo).
    """
    try:
        return OPERATION_CLASSES[operation]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown backend operation {operation!r}") from None


#: Keys per ListObjectsV2 page when the request names no ``max-keys`` (S3's and R2's default).
LISTING_PAGE = 1000


def listing_pages(entries: int) -> int:
    """The ListObjectsV2 requests a listing of ``entries`` keys took: one per full page, and
    one for an empty listing.  A listing cut at a key (``until``) may have read one page more
    that added nothing; that page is not seen from here."""
    return max(1, -(-entries // LISTING_PAGE))
