"""The metadata store: the one object the rest of the daemon holds to read and write metadata.

As in buildbot's ``db/``, the store is made of one component per area of the schema, each over the
shared database pool (:mod:`s3balance.db.base`): :mod:`~s3balance.db.buckets`,
:mod:`~s3balance.db.objects`, :mod:`~s3balance.db.multipart`, :mod:`~s3balance.db.deletions`,
:mod:`~s3balance.db.usage`, :mod:`~s3balance.db.repairs` and :mod:`~s3balance.db.jobs`.
:class:`MetadataStore` is all of them at once, so callers keep one object and one set of method
names.  Every method runs one transaction on the pool's threads and fires with plain records
(:mod:`s3balance.db.records`); a database out of reach fails it with
:class:`~s3balance.db.errors.MetadataUnavailable`.

Several daemons may share one PostgreSQL or MariaDB database: nothing reads a value to write it
back (see :mod:`s3balance.db.usage`), and an object being replaced or deleted is locked with
``SELECT ... FOR UPDATE`` before its old size is subtracted (see :mod:`s3balance.db.objects`).
"""

from __future__ import annotations

from s3balance.db.buckets import BucketsComponent
from s3balance.db.deletions import DeletionsComponent, PendingDeletion
from s3balance.db.errors import (
    BucketNotEmptyError,
    MetadataUnavailable,
    NoSuchBucketError,
    ObjectMissingError,
    PreconditionFailedError,
)
from s3balance.db.jobs import JobsComponent, JobStateError
from s3balance.db.multipart import AbandonedCopies, CompletedUpload, MultipartComponent
from s3balance.db.objects import ANY, UNCONDITIONAL, Condition, ObjectsComponent, Replacement
from s3balance.db.repairs import RepairsComponent
from s3balance.db.usage import UsageComponent


class MetadataStore(
    BucketsComponent,
    ObjectsComponent,
    MultipartComponent,
    DeletionsComponent,
    UsageComponent,
    RepairsComponent,
    JobsComponent,
):
    """Bucket, object, upload, pending deletion, usage, counter and job rows, behind
    Deferred-returning methods (``MetadataStore(pool)``)."""


__all__ = [
    "ANY",
    "AbandonedCopies",
    "BucketNotEmptyError",
    "CompletedUpload",
    "Condition",
    "JobStateError",
    "MetadataStore",
    "MetadataUnavailable",
    "NoSuchBucketError",
    "ObjectMissingError",
    "PendingDeletion",
    "PreconditionFailedError",
    "Replacement",
    "UNCONDITIONAL",
]
