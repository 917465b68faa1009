"""The one registry of the S3 operations the front serves: each one's handler and whether it
changes data.

Routing (:mod:`s3balance.web.routing`) names the operation;
:class:`~s3balance.web.resource.S3Resource` looks it up here, refuses a write to a read-only
key (:attr:`Operation.writes`) and runs :attr:`Operation.handler` with the
:class:`~s3balance.web.answer.RequestContext`.  A handler
returns (or fires with) an :class:`~s3balance.web.answer.Answer`, or
:data:`~s3balance.web.answer.STREAMED` when it answered itself.

The seven multipart operations are served by the daemon's
:class:`~s3balance.web.multipart.MultipartHandler` (``ctx.multipart``), which holds the uploads;
without one they answer 501 NotImplemented.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s3balance import errors
from s3balance.web import attributes, buckets, objects, tagging
from s3balance.web.answer import RequestContext

Handler = Callable[[RequestContext], Any]


@dataclass(frozen=True)
class Operation:
    """One served operation.

    :ivar name: S3's name of it (``PutObject``), as routing gives it.
    :ivar handler: serves it.
    :ivar writes: it changes data, so a read-only key may not call it.
    """

    name: str
    handler: Handler
    writes: bool = False


def _multipart(name: str) -> Handler:
    """The handler of a multipart operation: ``handle_<name>`` of ``ctx.multipart``."""

    def handle(ctx: RequestContext) -> Any:
        method = getattr(ctx.multipart, f"handle_{name}", None)
        if method is None:
            raise errors.NotImplementedError_("Multipart uploads are not available.")
        return method(ctx.request, ctx)

    return handle


_READS: dict[str, Handler] = {
    "ListBuckets": buckets.handle_ListBuckets,
    "HeadBucket": buckets.handle_HeadBucket,
    "GetBucketLocation": buckets.handle_GetBucketLocation,
    "GetBucketVersioning": buckets.handle_GetBucketVersioning,
    "GetBucketAcl": buckets.handle_GetBucketAcl,
    "ListObjects": buckets.handle_ListObjects,
    "ListObjectsV2": buckets.handle_ListObjectsV2,
    "ListObjectVersions": buckets.handle_ListObjectVersions,
    "GetBucketTagging": tagging.handle_GetBucketTagging,
    "GetObject": objects.handle_GetObject,
    "HeadObject": objects.handle_HeadObject,
    "GetObjectAcl": objects.handle_GetObjectAcl,
    "GetObjectTagging": tagging.handle_GetObjectTagging,
    "GetObjectAttributes": attributes.handle_GetObjectAttributes,
    "ListParts": _multipart("ListParts"),
    "ListMultipartUploads": _multipart("ListMultipartUploads"),
}

_WRITES: dict[str, Handler] = {
    "CreateBucket": buckets.handle_CreateBucket,
    "DeleteBucket": buckets.handle_DeleteBucket,
    "PutBucketAcl": buckets.handle_PutBucketAcl,
    "PutBucketTagging": tagging.handle_PutBucketTagging,
    "DeleteBucketTagging": tagging.handle_DeleteBucketTagging,
    "PutObject": objects.handle_PutObject,
    "CopyObject": objects.handle_CopyObject,
    "DeleteObject": objects.handle_DeleteObject,
    "DeleteObjects": objects.handle_DeleteObjects,
    "PutObjectAcl": objects.handle_PutObjectAcl,
    "PutObjectTagging": tagging.handle_PutObjectTagging,
    "DeleteObjectTagging": tagging.handle_DeleteObjectTagging,
    "CreateMultipartUpload": _multipart("CreateMultipartUpload"),
    "UploadPart": _multipart("UploadPart"),
    "UploadPartCopy": _multipart("UploadPartCopy"),
    "CompleteMultipartUpload": _multipart("CompleteMultipartUpload"),
    "AbortMultipartUpload": _multipart("AbortMultipartUpload"),
}

#: Every served operation, by name.
OPERATIONS: dict[str, Operation] = {
    **{name: Operation(name, handler) for name, handler in _READS.items()},
    **{name: Operation(name, handler, writes=True) for name, handler in _WRITES.items()},
}


def writes(name: str) -> bool:
    """Whether the operation called ``name`` changes data (unknown names do not)."""
    operation = OPERATIONS.get(name)
    return operation is not None and operation.writes


__all__ = ["OPERATIONS", "Handler", "Operation", "writes"]
