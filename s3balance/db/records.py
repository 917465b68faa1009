"""Plain, immutable rows handed out of the database thread.

Rows are materialised inside the DB thread into these dataclasses so that nothing lazy (no ORM
object, no open cursor) ever crosses to the reactor thread.  Times are float seconds since the
epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BucketRecord:
    """A virtual bucket clients see."""

    name: str
    created_at: float
    #: Declared in the configuration (as opposed to created through the S3 API).
    from_config: bool = False
    #: The canned ACL (:mod:`s3balance.acl`).
    acl: str = "private"
    #: Bucket tags; ``None`` when the bucket has no tag set (not even an empty one).
    tags: dict[str, str] | None = None


@dataclass(frozen=True)
class BucketTotals:
    """Objects and their bytes in one virtual bucket (counted from the object rows)."""

    object_count: int
    bytes: int


@dataclass(frozen=True)
class Location:
    """Where one copy of an object's bytes lives."""

    backend: str
    real_key: str


@dataclass(frozen=True)
class ObjectRecord:
    """A visible object of a virtual bucket."""

    bucket: str
    key: str
    size: int
    #: Quoted, as S3 returns it: ``'"<md5>"'`` or ``'"<md5>-<n>"'``.
    etag: str
    last_modified: float
    #: Stored headers (``content-type``...), lower-case names.
    headers: dict[str, str] = field(default_factory=dict)
    #: User metadata without the ``x-amz-meta-`` prefix, lower-case names.
    metadata: dict[str, str] = field(default_factory=dict)
    #: ``x-amz-checksum-<algo>`` values, lower-case names.
    checksums: dict[str, str] = field(default_factory=dict)
    #: Sizes of the parts, in order, for an object made by multipart upload; empty otherwise.
    part_sizes: tuple[int, ...] = ()
    locations: tuple[Location, ...] = ()
    #: Base64 checksums of the parts (multipart objects with a checksum algorithm), in order.
    part_checksums: tuple[str, ...] = ()
    #: Object tags (:mod:`s3balance.tagging`); the store gives them back sorted by key.
    tags: dict[str, str] = field(default_factory=dict)
    #: The canned ACL (:mod:`s3balance.acl`).
    acl: str = "private"


@dataclass(frozen=True)
class ObjectPage:
    """One page of a listing, with the delimiter already applied."""

    objects: list[ObjectRecord]
    common_prefixes: list[str]
    is_truncated: bool
    #: The last key or common prefix returned; where the next page starts (exclusive).
    next_marker: str | None


@dataclass(frozen=True)
class UploadCopy:
    """One backend's upload of a multipart upload (several for a replicated bucket)."""

    backend: str
    #: The backend's id of its upload; never shown to clients.
    backend_upload_id: str


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload in progress."""

    #: Our own opaque id, the only one clients see.
    upload_id: str
    bucket: str
    key: str
    backend: str
    real_key: str
    #: The backend's id for the same upload; never shown to clients.
    backend_upload_id: str
    initiated: float
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    #: ``x-amz-checksum-algorithm`` as S3 spells it (``CRC32``), or None.
    checksum_algorithm: str | None = None
    #: ``FULL_OBJECT`` or ``COMPOSITE`` with an algorithm, else None.
    checksum_type: str | None = None
    #: Tags and canned ACL the completed object gets.
    tags: dict[str, str] = field(default_factory=dict)
    acl: str = "private"
    #: The upload's other copies (a replicated bucket), each on another backend at the same
    #: ``real_key``; empty for an upload stored once.
    copies: tuple[UploadCopy, ...] = ()

    def all_copies(self) -> tuple[UploadCopy, ...]:
        """Every backend upload of this upload, its own ``backend`` first."""
        return (UploadCopy(self.backend, self.backend_upload_id), *self.copies)

    @property
    def backends(self) -> list[str]:
        """The backends holding a copy of this upload, its own ``backend`` first."""
        return [copy.backend for copy in self.all_copies()]


@dataclass(frozen=True)
class PartRecord:
    upload_id: str
    part_number: int
    etag: str
    size: int
    last_modified: float
    #: ``x-amz-checksum-<algorithm>`` values, lower-case names.
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadPage:
    uploads: list[UploadRecord]
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass(frozen=True)
class BackendUsage:
    """Bytes s3balance placed on a backend: visible objects plus parts of uploads in progress."""

    backend: str
    used_bytes: int
    object_count: int


@dataclass(frozen=True)
class OperationCounts:
    """Class A / class B operations (and bytes) of one backend in one calendar month."""

    backend: str
    month: str  # "YYYY-MM"
    class_a: int
    class_b: int
    bytes_in: int = 0
    bytes_out: int = 0


#: A job's states (:mod:`s3balance.jobs`); the last three are final.
JOB_STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
FINAL_JOB_STATES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobProgress:
    """What a job has done and has left, as its runner saves it with each heartbeat.

    ``objects_left`` and ``bytes_left`` are None while unknown; ``cursor`` is the kind's own
    resume position (opaque text), None before the first one.
    """

    objects_done: int = 0
    objects_left: int | None = None
    bytes_done: int = 0
    bytes_left: int | None = None
    errors: int = 0
    last_error: str | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A row of ``jobs``: a resumable piece of background work."""

    id: int
    kind: str
    #: What it works on (a drain: the real bucket's name).
    target: str
    params: dict[str, object]
    state: str
    progress: JobProgress
    created: float
    updated: float
    started: float | None = None
    finished: float | None = None
    #: The daemon holding it while it runs, and until when (its heartbeat renews it).
    owner: str | None = None
    expires: float | None = None
