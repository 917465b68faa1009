"""What a CreateMultipartUpload asked for, and the upload row it becomes once its backend uploads
exist: one builder for the single-copy and the replicated paths
(:class:`~s3balance.multipart.MultipartUploads`,
:class:`~s3balance.multipart_replicas.ReplicatedUploads`), so a new field of the row is set in
one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from s3balance.db.records import UploadCopy, UploadRecord
from s3balance.rebuildmeta import reserved_metadata

__all__ = ["NewUpload"]


@dataclass(frozen=True)
class NewUpload:
    """A client's CreateMultipartUpload: the object's key, stored headers, metadata, checksum,
    tags and ACL."""

    bucket: str
    key: str
    headers: Mapping[str, str]
    metadata: Mapping[str, str]
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    tags: Mapping[str, str] | None = None
    acl: str = "private"

    def stored_metadata(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The metadata each backend upload is created with: the client's, ``extra`` (of the
        real key), and what a rebuild reads back (:func:`reserved_metadata`)."""
        stored = {**self.metadata, **extra}
        stored.update(reserved_metadata(self.key, self.headers, stored, self.tags, self.acl))
        return stored

    def record(
        self, upload_id: str, real_key: str, copies: Sequence[UploadCopy], initiated: float
    ) -> UploadRecord:
        """The upload's row, its backend uploads ``copies`` made (the first is the row's own)."""
        first, *others = copies
        return UploadRecord(
            upload_id=upload_id,
            bucket=self.bucket,
            key=self.key,
            backend=first.backend,
            real_key=real_key,
            backend_upload_id=first.backend_upload_id,
            initiated=initiated,
            headers=dict(self.headers),
            metadata=dict(self.metadata),
            checksum_algorithm=self.checksum_algorithm,
            checksum_type=self.checksum_type,
            tags=dict(self.tags or {}),
            acl=self.acl,
            copies=tuple(others),
        )
