"""Reconciliation of the metadata store with what the real buckets actually hold.

The daemon writes bytes first and the row second, and deletes the row first and the bytes
second, so a crash, a killed backend or a bug can leave *orphans* (bytes no row points to, which
cost storage forever) or *dangling rows* (rows whose bytes are gone, which answer GET with an
error). Scrub finds both, per real bucket, and can delete orphans. Tests use it to prove that a
fault left nothing behind.

Every write has a real key of its own (:func:`s3balance.realkeys.new_real_key`), so an abandoned or
failed write, or a replaced object whose deletion was lost, is an orphan: the report names the
virtual bucket and key each orphan belongs to (read from the real key, or from the backend's
metadata for a hashed one).  Locations queued for deletion (``pending_deletions``) are still
referenced and never orphans.  Scrub also compares each referenced object's size and ETag with
what the backend lists, and reports rows whose bytes differ (*mismatched*): with one real key per
write that should never happen, and when it does the row must not be trusted.

Races with live traffic are handled conservatively: rows are read *before* the listing, so an
object written meanwhile shows up as an orphan younger than ``grace`` ("recent"), which is
reported but never removed; before removing, the rows are read a second time and any key that
has gained a row is spared.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from s3balance.backends.interface import BackendError, BackendNoSuchKey, IBackend, ListedObject
from s3balance.db.store import MetadataStore
from s3balance.etags import bare_etag
from s3balance.logs import make_logger
from s3balance.operations import Operation, listing_pages
from s3balance.realkeys import key_from_metadata, parse_real_key

log = make_logger()


class RecordOperation(Protocol):
    """:meth:`BackendPool.record_operation <s3balance.pool.BackendPool.record_operation>`."""

    def __call__(self, name: str, operation: Operation, *, requests: int = 1) -> None: ...


#: Counts ``requests`` of an operation sent to the backend being scrubbed.
Count = Callable[[Operation, int], None]

#: Default age, in seconds, under which an orphan may be an upload about to be committed.
DEFAULT_GRACE = 3600.0

_SLASHES = re.compile(r"/{2,}")


def comparable_key(key: str) -> str:
    """The form of a real key that survives storage normalisation.

    SeaweedFS (and some other S3 services) collapse ``//`` and drop ``.`` segments, so the key a
    listing returns may differ from the one the row records although it is the same object.
    """
    key = _SLASHES.sub("/", key)
    segments = [segment for segment in key.split("/") if segment != "."]
    return "/".join(segments)


@dataclass(frozen=True)
class Orphan:
    """Bytes on a backend that no row references.

    :ivar bucket: the virtual bucket its real key names (None when it is not one of ours).
    :ivar virtual_key: the virtual key it was written for, when known.
    """

    key: str
    size: int
    last_modified: float
    bucket: str | None = None
    virtual_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "last_modified": self.last_modified,
            "bucket": self.bucket,
            "virtual_key": self.virtual_key,
        }


@dataclass(frozen=True)
class Mismatch:
    """A row whose bytes on the backend differ from what it records."""

    key: str
    recorded_size: int
    recorded_etag: str
    stored_size: int
    stored_etag: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "recorded": {"size": self.recorded_size, "etag": self.recorded_etag},
            "stored": {"size": self.stored_size, "etag": self.stored_etag},
        }

    def describe(self) -> str:
        return (
            f"{self.key}: row says {self.recorded_size} bytes {self.recorded_etag}, "
            f"backend has {self.stored_size} bytes {self.stored_etag}"
        )


@dataclass
class BackendScrub:
    """What scrub found on one real bucket.

    :ivar listed: objects the backend listed.
    :ivar recorded: real keys the store references there (objects and uploads in progress).
    :ivar orphans: orphans older than the grace period (removable).
    :ivar recent_orphans: orphans younger than the grace period (never removed).
    :ivar dangling: real keys of object rows whose bytes are missing on the backend.
    :ivar mismatched: object rows whose bytes have another size or ETag on the backend.
    :ivar removed: orphans deleted by this run.
    :ivar failures: ``"<key>: <problem>"`` for orphans that could not be deleted.
    :ivar error: why the backend could not be scrubbed at all (listing failed), or None.
    """

    backend: str
    listed: int = 0
    recorded: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    recent_orphans: list[Orphan] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    removed: list[Orphan] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def orphan_bytes(self) -> int:
        return sum(orphan.size for orphan in self.orphans)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "listed": self.listed,
            "recorded": self.recorded,
            "orphans": [orphan.to_json() for orphan in self.orphans],
            "orphan_bytes": self.orphan_bytes,
            "recent_orphans": [orphan.to_json() for orphan in self.recent_orphans],
            "dangling": list(self.dangling),
            "mismatched": [mismatch.to_json() for mismatch in self.mismatched],
            "removed": [orphan.to_json() for orphan in self.removed],
            "removed_bytes": sum(orphan.size for orphan in self.removed),
            "failures": list(self.failures),
            "error": self.error,
        }


@dataclass
class ScrubReport:
    """Scrub's findings for every backend it looked at, by backend name."""

    backends: dict[str, BackendScrub]
    started: float
    finished: float
    grace: float
    remove_orphans: bool

    @property
    def errors(self) -> list[str]:
        """Problems that made the report incomplete (listing or deletion failures)."""
        found = []
        for name, scrubbed in sorted(self.backends.items()):
            if scrubbed.error is not None:
                found.append(f"{name}: {scrubbed.error}")
            found.extend(f"{name}: {failure}" for failure in scrubbed.failures)
        return found

    @property
    def orphan_count(self) -> int:
        return sum(len(b.orphans) for b in self.backends.values())

    @property
    def dangling_count(self) -> int:
        return sum(len(b.dangling) for b in self.backends.values())

    @property
    def mismatch_count(self) -> int:
        return sum(len(b.mismatched) for b in self.backends.values())

    @property
    def clean(self) -> bool:
        """No orphans older than the grace period, no dangling or mismatched rows, no errors.

        Orphans removed by this run still count: something had gone wrong.
        """
        return (
            not self.errors
            and self.orphan_count == 0
            and self.dangling_count == 0
            and self.mismatch_count == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "started": self.started,
            "finished": self.finished,
            "grace": self.grace,
            "remove_orphans": self.remove_orphans,
            "orphans": self.orphan_count,
            "orphan_bytes": sum(b.orphan_bytes for b in self.backends.values()),
            "recent_orphans": sum(len(b.recent_orphans) for b in self.backends.values()),
            "dangling": self.dangling_count,
            "mismatched": self.mismatch_count,
            "removed": sum(len(b.removed) for b in self.backends.values()),
            "errors": self.errors,
            "backends": {name: b.to_json() for name, b in sorted(self.backends.items())},
        }

    def summary(self) -> str:
        """A few human lines, one per backend, for logs and the command line."""
        lines = []
        for name, b in sorted(self.backends.items()):
            if b.error is not None:
                lines.append(f"{name}: ERROR {b.error}")
                continue
            lines.append(
                f"{name}: {b.listed} objects, {b.recorded} recorded keys, "
                f"{len(b.orphans)} orphans ({b.orphan_bytes} bytes), "
                f"{len(b.recent_orphans)} recent orphans, {len(b.dangling)} dangling rows, "
                f"{len(b.mismatched)} mismatched rows, {len(b.removed)} removed"
            )
            lines.extend(f"  orphan {o.key} ({o.size} bytes)" for o in b.orphans)
            lines.extend(f"  recent orphan {o.key} ({o.size} bytes)" for o in b.recent_orphans)
            lines.extend(f"  dangling {key}" for key in b.dangling)
            lines.extend(f"  mismatched {m.describe()}" for m in b.mismatched)
            lines.extend(f"  removed {o.key}" for o in b.removed)
            lines.extend(f"  failed {failure}" for failure in b.failures)
        lines.append("clean" if self.clean else "NOT clean")
        return "\n".join(lines)


def scrub(
    store: MetadataStore,
    backends: dict[str, IBackend],
    remove_orphans: bool = False,
    grace: float = DEFAULT_GRACE,
    now: Callable[[], float] = time.time,
    record_operation: RecordOperation | None = None,
) -> Deferred[ScrubReport]:
    """Compare every backend's listing with the store's rows, one backend after the other.

    :param backends: the real buckets to look at, by configured name.
    :param remove_orphans: delete orphans older than ``grace`` seconds.
    :param grace: orphans modified less than this many seconds ago are reported as recent and
        kept (they may be uploads whose row is about to be written); 0 when nothing is running.
    :param now: the clock backend modification times are compared with (epoch seconds).
    :param record_operation: counts each request answered, by backend and operation
        (:meth:`BackendPool.record_operation <s3balance.pool.BackendPool.record_operation>`; the
        daemon's scrub passes it, the command run beside the daemon has no pool to count in).
    :returns: a Deferred firing with a :class:`ScrubReport`; a backend that cannot be listed
        is reported with its ``error``, it does not fail the whole scrub.
    """
    return Deferred.fromCoroutine(
        _scrub(store, backends, remove_orphans, grace, now, record_operation)
    )


async def _scrub(
    store: MetadataStore,
    backends: dict[str, IBackend],
    remove_orphans: bool,
    grace: float,
    now: Callable[[], float],
    record_operation: RecordOperation | None,
) -> ScrubReport:
    started = now()
    report = ScrubReport({}, started, started, grace, remove_orphans)
    for name in sorted(backends):
        scrubbed = BackendScrub(name)
        report.backends[name] = scrubbed
        count = _counter(name, record_operation)
        try:
            await _scrub_backend(
                store, backends[name], scrubbed, remove_orphans, grace, now, count
            )
        except BackendError as error:
            scrubbed.error = error.detail
        except Exception as error:  # a database failure: the report says so, others go on
            log.failure("scrub of {backend} failed", backend=name)
            scrubbed.error = f"{type(error).__name__}: {error}"
    report.finished = now()
    return report


def _counter(name: str, record_operation: RecordOperation | None) -> Count:
    """Counts ``requests`` of an operation sent to backend ``name`` (nothing without a pool)."""

    def count(operation: Operation, requests: int) -> None:
        if record_operation is not None:
            record_operation(name, operation, requests=requests)

    return count


async def _recorded_keys(store: MetadataStore, backend: str) -> tuple[set[str], set[str]]:
    """Real keys on ``backend`` referenced by rows, and those of them that only uploads in
    progress reference (their parts are not objects yet, so a missing object is expected)."""
    recorded = await store.locations_on(backend)
    # A finite "forever": MySQL refuses infinity in a DOUBLE comparison.
    uploads = await store.uploads_initiated_before(1e18)
    upload_keys = {u.real_key for u in uploads if backend in u.backends}
    return recorded, upload_keys


async def _scrub_backend(
    store: MetadataStore,
    backend: IBackend,
    scrubbed: BackendScrub,
    remove_orphans: bool,
    grace: float,
    now: Callable[[], float],
    count: Count,
) -> None:
    name = scrubbed.backend
    # Rows first, listing second: see the module docstring.
    recorded, upload_keys = await _recorded_keys(store, name)
    listing: list[ListedObject] = await backend.list_objects("")
    count("ListObjectsV2", listing_pages(len(listing)))
    scrubbed.listed = len(listing)
    scrubbed.recorded = len(recorded)

    recorded_comparable = {comparable_key(key) for key in recorded}
    listed_exact = {entry.key for entry in listing}
    listed_comparable = {comparable_key(entry.key) for entry in listing}

    cutoff = now() - grace
    for entry in listing:
        if entry.key in recorded or comparable_key(entry.key) in recorded_comparable:
            continue
        orphan = await _orphan(backend, entry, count)
        if grace > 0 and entry.last_modified > cutoff:
            scrubbed.recent_orphans.append(orphan)
        else:
            scrubbed.orphans.append(orphan)

    missing = sorted(
        key
        for key in recorded - upload_keys
        if key not in listed_exact and comparable_key(key) not in listed_comparable
    )
    scrubbed.dangling = await _confirm_missing(backend, missing, count)
    scrubbed.mismatched = await _mismatches(store, backend, name, listing, count)

    if remove_orphans and scrubbed.orphans:
        await _remove(store, backend, scrubbed)


async def _orphan(backend: IBackend, entry: ListedObject, count: Count) -> Orphan:
    """An orphan, with the virtual bucket and key its real key was written for."""
    parsed = parse_real_key(entry.key)
    if parsed is None:
        return Orphan(entry.key, entry.size, entry.last_modified)
    virtual_key = parsed.key
    if virtual_key is None:  # hashed: the key is in the backend metadata
        try:
            info = await backend.head_object(entry.key)
            count("HeadObject", 1)
            virtual_key = key_from_metadata(info.metadata)
        except BackendError:
            virtual_key = None
    return Orphan(entry.key, entry.size, entry.last_modified, parsed.bucket, virtual_key)


async def _mismatches(
    store: MetadataStore, backend: IBackend, name: str, listing: list[ListedObject],
    count: Count,
) -> list[Mismatch]:
    """Object rows whose listed size or ETag differs; confirmed with HEAD (a listing may lag)."""
    rows = await store.objects_on(name)
    listed = {entry.key: entry for entry in listing}
    found = []
    for real_key, (size, etag) in sorted(rows.items()):
        entry = listed.get(real_key)
        if entry is None:
            continue  # dangling, reported as such
        if entry.size == size and (not entry.etag or bare_etag(entry.etag) == bare_etag(etag)):
            continue
        try:
            info = await backend.head_object(real_key)
        except BackendError:
            continue
        count("HeadObject", 1)
        if info.size != size or bare_etag(info.etag) != bare_etag(etag):
            found.append(Mismatch(real_key, size, etag, info.size, info.etag))
    return found


async def _confirm_missing(backend: IBackend, keys: Iterable[str], count: Count) -> list[str]:
    """Keys a HEAD confirms are missing: a listing may lag behind (eventually consistent
    services) or spell a key differently; a row is only called dangling when HEAD agrees."""
    confirmed = []
    for key in keys:
        try:
            await backend.head_object(key)
        except BackendNoSuchKey:
            confirmed.append(key)
        count("HeadObject", 1)
    return confirmed


async def _remove(store: MetadataStore, backend: IBackend, scrubbed: BackendScrub) -> None:
    # A row may have been written since the first read (an upload committed meanwhile).
    recorded = await store.locations_on(scrubbed.backend)
    recorded_comparable = {comparable_key(key) for key in recorded}
    for orphan in list(scrubbed.orphans):
        if orphan.key in recorded or comparable_key(orphan.key) in recorded_comparable:
            scrubbed.orphans.remove(orphan)  # no longer an orphan
            continue
        try:
            await backend.delete_object(orphan.key)
        except BackendError as error:
            scrubbed.failures.append(f"{orphan.key}: {error.detail}")
            continue
        log.info(
            "scrub removed orphan {key} ({size} bytes) from {backend}",
            key=orphan.key,
            size=orphan.size,
            backend=scrubbed.backend,
        )
        scrubbed.removed.append(orphan)
