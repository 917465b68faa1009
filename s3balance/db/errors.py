"""What the metadata store raises, so that no caller needs to know SQLAlchemy.

The store's outcomes (no such bucket, a failed condition...) are exceptions the gateway turns into
S3 errors; :class:`MetadataUnavailable` stands for every way the database can be out of reach,
which the front answers with 503 (a condition clients retry).
"""

from __future__ import annotations


class MetadataUnavailable(Exception):
    """The database could not be reached or used (connection refused or lost, locks that never
    came free after the pool's retries): nothing was committed, and retrying later may work."""


class MetadataUnreachable(MetadataUnavailable):
    """Not even a connection to the database could be had: the call sent no statement, so it
    certainly changed nothing (a commit that fails otherwise may have happened all the same)."""


class NoSuchBucketError(Exception):
    """The named virtual bucket does not exist."""


class BucketNotEmptyError(Exception):
    """DeleteBucket on a bucket that still has objects or uploads in progress."""


class PreconditionFailedError(Exception):
    """A conditional write or delete found the object not as the condition required; nothing
    was changed."""


class ObjectMissingError(Exception):
    """An ``If-Match`` write or delete found no object; nothing was changed."""
