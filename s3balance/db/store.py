"""The metadata store: where object metadata is written and read.

Every method runs its SQL on the database's dedicated thread pool (:mod:`s3balance.db.pool`), with
a connection per call, and fires with plain records from :mod:`s3balance.db.records`.  Usage
counters of each backend change in the same transaction as the rows they count, so used bytes can
never drift from the objects and parts that exist.

CONTRACT (stubs until implemented): each method returns a Deferred firing with what its
docstring says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from s3balance.db.records import (
    BackendUsage,
    BucketRecord,
    Location,
    ObjectPage,
    ObjectRecord,
    OperationCounts,
    PartRecord,
    UploadPage,
    UploadRecord,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class BucketNotEmptyError(Exception):
    """DeleteBucket on a bucket that still has objects or uploads in progress."""


class NoSuchBucketError(Exception):
    """The named virtual bucket does not exist."""


class MetadataStore:
    """Object, upload, usage and counter rows, behind Deferred-returning methods."""

    # -- virtual buckets -------------------------------------------------------------------

    def create_bucket(self, name: str, now: float, from_config: bool = False) -> Deferred[bool]:
        """Create a virtual bucket; fires False (and changes nothing) when it exists already."""
        raise NotImplementedError

    def get_bucket(self, name: str) -> Deferred[BucketRecord | None]:
        raise NotImplementedError

    def list_buckets(self) -> Deferred[list[BucketRecord]]:
        """All virtual buckets, by name."""
        raise NotImplementedError

    def delete_bucket(self, name: str) -> Deferred[None]:
        """:raises BucketNotEmptyError: objects or uploads remain. :raises NoSuchBucketError:"""
        raise NotImplementedError

    # -- objects ---------------------------------------------------------------------------

    def get_object(self, bucket: str, key: str) -> Deferred[ObjectRecord | None]:
        raise NotImplementedError

    def put_object(self, record: ObjectRecord) -> Deferred[list[Location]]:
        """Make ``record`` the visible object for its key, replacing any previous one.

        In one transaction: upsert the object row and its locations, add its size to its backends'
        usage and subtract the replaced object's.  Fires with the replaced object's locations that
        ``record`` does not also use: the caller deletes those bytes from their backends.
        :raises NoSuchBucketError: the bucket was deleted meanwhile.
        """
        raise NotImplementedError

    def delete_object(self, bucket: str, key: str) -> Deferred[ObjectRecord | None]:
        """Remove the object row (usage adjusted in the same transaction); fires with what was
        removed, so the caller can delete its bytes, or None when there was nothing."""
        raise NotImplementedError

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> Deferred[ObjectPage]:
        """Keys after ``start_after`` that start with ``prefix``, in UTF-8 byte order, with keys
        that contain ``delimiter`` after the prefix rolled up into common prefixes (a common prefix
        counts once towards ``max_keys``)."""
        raise NotImplementedError

    def locations_on(self, backend: str) -> Deferred[set[str]]:
        """Every real key that object rows and uploads reference on ``backend`` (for scrub)."""
        raise NotImplementedError

    # -- usage -----------------------------------------------------------------------------

    def usage(self) -> Deferred[dict[str, BackendUsage]]:
        """Used bytes and object counts per backend name."""
        raise NotImplementedError

    # -- multipart uploads -----------------------------------------------------------------

    def create_upload(self, upload: UploadRecord) -> Deferred[None]:
        raise NotImplementedError

    def get_upload(self, upload_id: str) -> Deferred[UploadRecord | None]:
        raise NotImplementedError

    def put_part(self, part: PartRecord, backend: str) -> Deferred[None]:
        """Record (or replace) a part; the backend's used bytes grow by the size difference.
        :raises KeyError: the upload no longer exists (aborted or completed meanwhile)."""
        raise NotImplementedError

    def list_parts(
        self, upload_id: str, part_number_marker: int = 0, max_parts: int = 1000
    ) -> Deferred[list[PartRecord]]:
        """Parts after ``part_number_marker``, ascending, at most ``max_parts`` (+1 is not added:
        ask for one more to learn whether the listing is truncated)."""
        raise NotImplementedError

    def complete_upload(self, upload_id: str, record: ObjectRecord) -> Deferred[list[Location]]:
        """In one transaction: drop the upload and its parts (releasing their usage) and
        :meth:`put_object` ``record``.  Fires with the replaced object's locations to delete.
        :raises KeyError: the upload no longer exists."""
        raise NotImplementedError

    def abort_upload(self, upload_id: str) -> Deferred[UploadRecord | None]:
        """Drop the upload and its parts (releasing their usage); fires with what was dropped."""
        raise NotImplementedError

    def list_uploads(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        key_marker: str = "",
        upload_id_marker: str = "",
        max_uploads: int = 1000,
    ) -> Deferred[UploadPage]:
        raise NotImplementedError

    def uploads_initiated_before(self, when: float) -> Deferred[list[UploadRecord]]:
        raise NotImplementedError

    # -- operation counters ----------------------------------------------------------------

    def count_operations(
        self,
        backend: str,
        month: str,
        class_a: int = 0,
        class_b: int = 0,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> Deferred[None]:
        """Add to a backend's counters for ``month`` (``"YYYY-MM"``), atomically in SQL so several
        daemons sharing the database never lose an increment."""
        raise NotImplementedError

    def operation_counts(self, month: str) -> Deferred[dict[str, OperationCounts]]:
        raise NotImplementedError

    def operation_history(
        self, backend: str | None = None, first_month: str = "", last_month: str = "9999-12"
    ) -> Deferred[list[OperationCounts]]:
        raise NotImplementedError
