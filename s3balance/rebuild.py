"""Rebuilding the index from the backends, and adopting objects s3balance did not write.

**Rebuild.**  Every write has a real key of its own that names its virtual bucket, its key and
its write id (:func:`s3balance.realkeys.new_real_key`), and carries what else its row needs in
its backend metadata (:mod:`s3balance.rebuildmeta`).  So :func:`rebuild` lists every real bucket,
groups the real keys by the virtual key they were written for, and for each group HEADs only the
newest write (the greatest write id) and makes it the row, unless the index already has that
write or a newer one.  Older writes of a key are never adopted: they are reported as
*superseded* (orphans, for :mod:`s3balance.scrub` to remove).  Each adoption is a compare and
swap on the row (:class:`s3balance.db.rebuild.RebuildComponent`), so a rebuild may run beside
daemons, and running it twice changes nothing.  Locations queued for deletion and targets of
uploads in progress are never adopted; neither are objects younger than ``grace`` (a write whose
commit may still fail).

A rebuild can be interrupted and resumed: per backend, a checkpoint file records the last real
key up to which every group is done (groups are taken in real-key order), and a rerun skips
those.  A rebuild that ran to its end removes the file.

**Import.**  :func:`import_objects` adopts the objects under a prefix of one real bucket, whatever
their keys, into a virtual bucket: the row points at the existing real key, nothing is copied.
A key the virtual bucket already has keeps its row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer

from s3balance.backends.interface import (
    BackendError,
    BackendNoSuchKey,
    IBackend,
    ListedObject,
    ObjectInfo,
)
from s3balance.db.errors import NoSuchBucketError
from s3balance.db.rebuild import RebuildComponent, Reserved
from s3balance.db.records import Location, ObjectRecord
from s3balance.db.store import MetadataStore
from s3balance.etags import quoted_etag
from s3balance.names import validate_bucket_name
from s3balance.realkeys import ParsedRealKey, parse_real_key
from s3balance.rebuildmeta import read_reserved

#: HEAD requests in flight at once, per backend.
DEFAULT_CONCURRENCY = 8
#: Attempts at adopting one write whose row keeps changing under us.
ADOPT_ATTEMPTS = 3
#: Entries kept in a report's lists (counts are always whole).
LISTED_AT_MOST = 1000

T = TypeVar("T")

#: ``progress(backend, done, total)``, called as groups finish.
Progress = Callable[[str, int, int], None]


@dataclass
class BackendRebuild:
    """What a rebuild did on one real bucket."""

    listed: int = 0
    keys: int = 0
    adopted: int = 0
    replaced: int = 0
    present: int = 0
    replica_copies: int = 0
    skipped_by_checkpoint: int = 0
    recent: int = 0
    reserved: int = 0
    foreign: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    foreign_count: int = 0
    superseded_count: int = 0

    def note_foreign(self, key: str) -> None:
        self.foreign_count += 1
        if len(self.foreign) < LISTED_AT_MOST:
            self.foreign.append(key)

    def note_superseded(self, key: str) -> None:
        self.superseded_count += 1
        if len(self.superseded) < LISTED_AT_MOST:
            self.superseded.append(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "keys": self.keys,
            "adopted": self.adopted,
            "replaced": self.replaced,
            "present": self.present,
            "replica_copies": self.replica_copies,
            "skipped_by_checkpoint": self.skipped_by_checkpoint,
            "recent": self.recent,
            "reserved": self.reserved,
            "foreign": self.foreign_count,
            "foreign_keys": self.foreign,
            "superseded": self.superseded_count,
            "superseded_keys": self.superseded,
            "failed": [{"key": key, "error": error} for key, error in self.failed],
        }


@dataclass
class RebuildReport:
    backends: dict[str, BackendRebuild] = field(default_factory=dict)
    buckets_created: list[str] = field(default_factory=list)
    #: Backends whose listing failed, with the error.
    errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def failures(self) -> int:
        return len(self.errors) + sum(len(b.failed) for b in self.backends.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "backends": {name: b.to_json() for name, b in sorted(self.backends.items())},
            "buckets_created": sorted(self.buckets_created),
            "errors": dict(sorted(self.errors.items())),
            "interrupted": self.interrupted,
            "failures": self.failures,
        }

    def summary(self) -> str:
        lines = []
        for name, b in sorted(self.backends.items()):
            lines.append(
                f"{name}: {b.listed} listed, {b.keys} keys, {b.adopted} adopted "
                f"({b.replaced} replacing an older row), {b.present} already indexed, "
                f"{b.replica_copies} added as replicas, "
                f"{b.superseded_count} superseded, {b.foreign_count} not ours, "
                f"{b.reserved + b.recent} left alone, {b.skipped_by_checkpoint} done before, "
                f"{len(b.failed)} failed"
            )
            lines.extend(f"  superseded {key}" for key in b.superseded[:20])
            lines.extend(f"  failed {key}: {error}" for key, error in b.failed[:20])
        for name, error in sorted(self.errors.items()):
            lines.append(f"{name}: cannot be listed: {error}")
        if self.buckets_created:
            lines.append("virtual buckets created: " + ", ".join(sorted(self.buckets_created)))
        if self.interrupted:
            lines.append("interrupted: run again to resume from the checkpoint")
        return "\n".join(lines)


class Checkpoint:
    """Per backend, the real key up to which a rebuild is done, kept in a JSON file.

    :param path: None keeps the checkpoint in memory only.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.state: dict[str, dict[str, Any]] = {}
        if path is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
            if isinstance(loaded, dict):
                self.state = {
                    name: value for name, value in loaded.items() if isinstance(value, dict)
                }

    def done(self, backend: str) -> bool:
        return bool(self.state.get(backend, {}).get("done"))

    def after(self, backend: str) -> bytes | None:
        after = self.state.get(backend, {}).get("after")
        return after.encode("utf-8") if isinstance(after, str) else None

    def record(self, backend: str, after: str | None, done: bool = False) -> None:
        self.state[backend] = {"after": after, "done": done}
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.state, handle)
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.state = {}
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


@dataclass
class _Group:
    """The real keys of one virtual key on one backend, newest first."""

    bucket: str
    parsed: ParsedRealKey
    newest: str
    older: list[str] = field(default_factory=list)


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run ``work`` over ``items`` with at most ``limit`` running at once."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(max(1, limit))], consumeErrors=True
    )


def _judge(current: ObjectRecord, backend: str, write_id: str) -> str | None:
    """What row ``current`` says of write ``write_id`` found on ``backend``: ``"present"``,
    ``"replica"`` (the row has this write on other backends only), ``"superseded"`` (the row
    has a newer write), or None (this write is newer than the row)."""
    elsewhere = False
    for location in current.locations:
        parsed = parse_real_key(location.real_key)
        if parsed is None or parsed.write_id != write_id:
            continue
        if location.backend == backend:
            return "present"
        elsewhere = True
    if elsewhere:
        return "replica"
    if not _newer(write_id, current.locations):
        return "superseded"
    return None


def _newer(write_id: str, locations: Sequence[Location]) -> bool:
    """Whether a write is newer than every location of a row (a location without a write id,
    an imported or legacy one, is never replaced by a rebuild)."""
    ids = []
    for location in locations:
        parsed = parse_real_key(location.real_key)
        if parsed is None or not parsed.write_id:
            return False
        ids.append(parsed.write_id)
    return all(write_id > other for other in ids)


def _identity(parsed: ParsedRealKey) -> tuple[str, str]:
    """What the real keys of one virtual key share: its bucket and its key (or key hash)."""
    return parsed.bucket, parsed.key if parsed.key is not None else "\0" + str(parsed.key_hash)


def _newest_writes(listings: Iterable[Sequence[ListedObject]]) -> dict[tuple[str, str], str]:
    """The greatest write id of each virtual key over every listing."""
    newest: dict[tuple[str, str], str] = {}
    for listing in listings:
        for entry in listing:
            parsed = parse_real_key(entry.key)
            if parsed is not None and _ours(parsed):
                identity = _identity(parsed)
                newest[identity] = max(newest.get(identity, ""), parsed.write_id)
    return newest


def _ours(parsed: ParsedRealKey | None) -> bool:
    """Whether a real key is one s3balance wrote (one with a write id)."""
    return parsed is not None and bool(parsed.write_id)


def object_record(
    bucket: str, key: str, backend: str, real_key: str, info: ObjectInfo
) -> ObjectRecord:
    """The row of a stored object, from its HEAD."""
    hints = read_reserved(info.metadata)
    return ObjectRecord(
        bucket=bucket,
        key=key,
        size=info.size,
        etag=quoted_etag(info.etag),
        last_modified=info.last_modified,
        headers={**info.headers, **hints.headers},
        metadata=hints.metadata,
        checksums=hints.checksums,
        locations=(Location(backend, real_key),),
        tags=hints.tags,
        acl=hints.acl,
    )


class Rebuilder:
    """One rebuild or import run over a store and some backends."""

    def __init__(
        self,
        store: MetadataStore,
        backends: dict[str, IBackend],
        clock: Any,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.rows = RebuildComponent(store.pool)
        self.backends = backends
        self.clock = clock
        self.concurrency = concurrency
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.report = RebuildReport()
        #: Virtual buckets known to exist (created by this run or found).
        self._buckets: set[str] = set()
        self._bucket_lock = defer.DeferredLock()

    async def rebuild(
        self,
        checkpoint: Checkpoint,
        virtual_buckets: Sequence[str] = (),
        grace: float = 0.0,
    ) -> RebuildReport:
        """Rebuild rows from every backend (see the module docstring).

        :param virtual_buckets: the configuration's virtual buckets, created first as the
            daemon creates them (``from_config``).
        """
        now = self.clock.seconds()
        for name in virtual_buckets:
            await self.store.create_bucket(name, now, from_config=True)
        # Rows made here may have fewer or more copies than ``replicas``: repair looks at
        # every object of every bucket again (before and after, for a daemon running meanwhile).
        await self.store.forget_repaired_replicas()
        listings: dict[str, Sequence[ListedObject]] = {}
        for name in sorted(self.backends):
            self.report.backends[name] = BackendRebuild()
            if checkpoint.done(name):
                continue
            try:
                listings[name] = await self.backends[name].list_objects("")
            except BackendError as error:
                self.report.errors[name] = error.detail
        newest = _newest_writes(listing for listing in listings.values())
        for name, listing in listings.items():
            if self.should_stop():
                break
            report = self.report.backends[name]
            await self._rebuild_backend(name, listing, newest, report, checkpoint, grace)
        self.report.interrupted = self.should_stop()
        await self.store.forget_repaired_replicas()
        if not self.report.interrupted:
            checkpoint.remove()
        return self.report

    async def _rebuild_backend(
        self,
        name: str,
        listed: Sequence[ListedObject],
        newest: dict[tuple[str, str], str],
        report: BackendRebuild,
        checkpoint: Checkpoint,
        grace: float,
    ) -> None:
        backend = self.backends[name]
        reserved = await self.rows.reserved_on(name)
        report.listed = len(listed)
        groups = self._groups(listed, newest, reserved, report, grace)
        report.keys = len(groups)
        after = checkpoint.after(name)
        if after is not None:
            todo = [group for group in groups if group.newest.encode("utf-8") > after]
            report.skipped_by_checkpoint = len(groups) - len(todo)
            groups = todo
        finished = [False] * len(groups)
        contiguous = 0
        last_saved = time.monotonic()

        async def take(index: int) -> None:
            nonlocal contiguous, last_saved
            if self.should_stop():
                return
            await self._take(name, backend, groups[index], report)
            finished[index] = True
            while contiguous < len(groups) and finished[contiguous]:
                contiguous += 1
            if self.progress is not None:
                self.progress(name, report.skipped_by_checkpoint + sum(finished),
                              report.keys)
            if contiguous and time.monotonic() - last_saved >= 1.0:
                checkpoint.record(name, groups[contiguous - 1].newest)
                last_saved = time.monotonic()

        await bounded(range(len(groups)), take, self.concurrency)
        if contiguous == len(groups):
            checkpoint.record(name, groups[-1].newest if groups else None, done=True)
        elif contiguous:
            checkpoint.record(name, groups[contiguous - 1].newest)

    def _groups(
        self,
        listed: Sequence[ListedObject],
        newest: dict[tuple[str, str], str],
        reserved: Reserved,
        report: BackendRebuild,
        grace: float,
    ) -> list[_Group]:
        """The listing grouped by virtual key, in the order of each group's newest real key;
        writes older than a write of the same key on any backend are superseded already."""
        young = self.clock.seconds() - grace
        groups: dict[tuple[str, str], _Group] = {}
        for entry in listed:
            parsed = parse_real_key(entry.key)
            if parsed is None or not _ours(parsed):
                report.note_foreign(entry.key)
                continue
            if entry.key in reserved.pending_deletion or entry.key in reserved.uploading:
                report.reserved += 1
                continue
            if grace > 0 and entry.last_modified > young:
                report.recent += 1
                continue
            identity = _identity(parsed)
            if parsed.write_id < newest.get(identity, ""):
                report.note_superseded(entry.key)
                continue
            group = groups.get(identity)
            if group is None:
                groups[identity] = _Group(parsed.bucket, parsed, entry.key)
            elif parsed.write_id > group.parsed.write_id:
                group.older.append(group.newest)
                group.parsed, group.newest = parsed, entry.key
            else:
                group.older.append(entry.key)
        return sorted(groups.values(), key=lambda group: group.newest.encode("utf-8"))

    async def _take(
        self, name: str, backend: IBackend, group: _Group, report: BackendRebuild
    ) -> None:
        """Adopt the newest write of one group unless the index has it or a newer one.

        When the real key names the key, the row is read first: a write the index has already,
        or has a newer one of, costs no HEAD.
        """
        for older in group.older:
            report.note_superseded(older)
        read: tuple[str, ObjectRecord | None] | None = None  # the row read, and for which key
        if group.parsed.key is not None:
            current = await self.store.get_object(group.bucket, group.parsed.key)
            if current is not None and await self._settled(current, name, group, report):
                return
            read = (group.parsed.key, current)
        try:
            info = await backend.head_object(group.newest)
        except BackendNoSuchKey:
            return  # deleted since the listing
        except BackendError as error:
            report.failed.append((group.newest, error.detail))
            return
        hints_key = read_reserved(info.metadata).key
        key = hints_key if hints_key is not None else group.parsed.key
        if key is None:
            report.failed.append((group.newest, "hashed real key without its key in metadata"))
            return
        if group.parsed.key_hash is not None and group.parsed.key_hash != hashlib.sha256(
            key.encode("utf-8")
        ).hexdigest():
            report.failed.append((group.newest, "the key in its metadata does not match its hash"))
            return
        record = object_record(group.bucket, key, name, group.newest, info)
        for _ in range(ADOPT_ATTEMPTS):
            if read is not None and read[0] == key:
                current = read[1]  # read just before the HEAD, and judged already
            else:
                current = await self.store.get_object(group.bucket, key)
                if current is not None and await self._settled(current, name, group, report):
                    return
            read = None
            if await self._ensure_bucket(group.bucket):
                self.report.buckets_created.append(group.bucket)
            try:
                adoption = await self.rows.adopt(
                    record, None if current is None else current.locations
                )
            except NoSuchBucketError:
                report.failed.append((group.newest, "its virtual bucket was deleted meanwhile"))
                return
            if adoption.outcome == "adopted":
                report.adopted += 1
                if adoption.replaced:
                    report.replaced += 1
                for replaced in adoption.replaced:
                    report.note_superseded(replaced.real_key)
                return
        report.failed.append((group.newest, "the row kept changing during the rebuild"))

    async def _ensure_bucket(self, name: str) -> bool:
        """Create virtual bucket ``name`` unless this run has seen it; whether it was created."""
        if name in self._buckets:
            return False
        async with self._bucket_lock:  # another worker may be creating it: wait for it
            if name in self._buckets:
                return False
            created = await self.store.create_bucket(name, self.clock.seconds())
            self._buckets.add(name)
            return bool(created)

    async def _settled(
        self, current: ObjectRecord, name: str, group: _Group, report: BackendRebuild
    ) -> bool:
        """Whether the row settles the group: it has this write on this backend (compared by
        write id: a listing may give the real key normalised), or a newer write.  A row with
        this write on other backends only is a replicated write (every copy of one write has
        the same real key): this copy joins the row's locations, never left for scrub as an
        orphan."""
        for _ in range(ADOPT_ATTEMPTS):
            judged = _judge(current, name, group.parsed.write_id)
            if judged == "present":
                report.present += 1
                return True
            if judged == "superseded":
                report.note_superseded(group.newest)
                return True
            if judged is None:
                return False
            copies = current.locations + (Location(name, group.newest),)
            joined = dataclasses.replace(current, locations=copies)
            adoption = await self.rows.adopt(joined, current.locations)
            if adoption.outcome == "adopted":
                report.replica_copies += 1
                return True
            fresh = await self.store.get_object(current.bucket, current.key)
            if fresh is None:
                return False
            current = fresh
        report.failed.append((group.newest, "the row kept changing during the rebuild"))
        return True

    async def import_objects(
        self, name: str, prefix: str, into: str, strip_prefix: bool = False
    ) -> ImportReport:
        """Adopt the objects under ``prefix`` of backend ``name`` into virtual bucket ``into``.

        :raises S3Error: InvalidBucketName for ``into``.
        :raises BackendError: the listing failed.
        """
        validate_bucket_name(into)
        backend = self.backends[name]
        report = ImportReport()
        listed = await backend.list_objects(prefix)
        report.listed = len(listed)
        referenced = await self.store.locations_on(name)
        todo = []
        for entry in listed:
            if entry.key in referenced:
                report.indexed += 1
            elif _ours(parse_real_key(entry.key)):
                report.ours += 1
            else:
                todo.append(entry.key)
        done = 0

        async def take(real_key: str) -> None:
            nonlocal done
            if self.should_stop():
                return
            await self._import_one(name, backend, real_key, prefix, into, strip_prefix, report)
            done += 1
            if self.progress is not None:
                self.progress(name, done, len(todo))

        await bounded(todo, take, self.concurrency)
        report.interrupted = self.should_stop()
        # One copy each, whatever the bucket's ``replicas``: repair looks at its every object.
        await self.store.forget_repaired_replicas([into])
        return report

    async def _import_one(
        self,
        name: str,
        backend: IBackend,
        real_key: str,
        prefix: str,
        into: str,
        strip_prefix: bool,
        report: ImportReport,
    ) -> None:
        key = real_key[len(prefix):] if strip_prefix else real_key
        if not key:
            report.failed.append((real_key, "the key is empty once the prefix is removed"))
            return
        try:
            info = await backend.head_object(real_key)
        except BackendNoSuchKey:
            return
        except BackendError as error:
            report.failed.append((real_key, error.detail))
            return
        record = object_record(into, key, name, real_key, info)
        if await self._ensure_bucket(into):
            report.bucket_created = True
        try:
            adoption = await self.rows.adopt(record, None)
        except NoSuchBucketError:
            report.failed.append((real_key, f"virtual bucket {into} was deleted meanwhile"))
            return
        if adoption.outcome == "adopted":
            report.imported += 1
        else:
            report.conflicts.append(key)


@dataclass
class ImportReport:
    listed: int = 0
    imported: int = 0
    #: Real keys some row already points at (an earlier import).
    indexed: int = 0
    #: Real keys written by s3balance (``rebuild`` adopts those).
    ours: int = 0
    #: Virtual keys that already had a row (kept).
    conflicts: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bucket_created: bool = False
    interrupted: bool = False

    @property
    def failures(self) -> int:
        return len(self.failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "imported": self.imported,
            "already_indexed": self.indexed,
            "written_by_s3balance": self.ours,
            "conflicts": self.conflicts,
            "failed": [{"key": key, "error": error} for key, error in self.failed],
            "bucket_created": self.bucket_created,
            "interrupted": self.interrupted,
        }

    def summary(self) -> str:
        lines = [
            f"{self.listed} listed, {self.imported} imported, {self.indexed} already indexed, "
            f"{self.ours} written by s3balance (left to rebuild), {len(self.conflicts)} keys "
            f"already taken, {len(self.failed)} failed"
        ]
        lines.extend(f"  key taken {key}" for key in self.conflicts[:20])
        lines.extend(f"  failed {key}: {error}" for key, error in self.failed[:20])
        if self.interrupted:
            lines.append("interrupted: run again to import the rest")
        return "\n".join(lines)
