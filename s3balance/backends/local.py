"""A backend that keeps objects in a local directory (``path:`` instead of ``endpoint:``).

Layout under the root (data and metadata in separate trees, so no key can collide with anything)::

    objects/ab/cd/<sha256 of key>-<version>   immutable data files, one per stored version
    meta/ab/cd/<sha256 of key>.json           sidecar: key, data file, ETag, size, headers...
    uploads/<upload id>/upload.json           a multipart upload: key, headers, metadata
    uploads/<upload id>/<nnnnn>-<md5>         its parts, the ETag in the name
    tmp/                                      files being written; stale ones removed at startup

File names come from a hash of the key, never from its path structure, so ``../``, ``.``, ``//``,
very long keys or a key that is a prefix of another cannot escape the root or collide; the original
key lives in the sidecar.  Replacing the sidecar is the commit point: a data file becomes visible
only once fully written and fsynced, and readers keep the data file's descriptor, so a concurrent
overwrite or delete never changes what is being streamed.

All disk work runs in a thread pool; the reactor thread only moves chunks between queues.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.backends.chunkedstream import ChunkedObjectStream
from s3balance.backends.deferreds import probe_within, returns_deferred
from s3balance.backends.guardedbody import GuardedBody
from s3balance.backends.interface import (
    BackendCannotEncrypt,
    BackendError,
    BackendInvalidPart,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    BackendUnavailable,
    Capacity,
    IBackend,
    IObjectStream,
    ListedObject,
    ObjectInfo,
    PartResult,
    PresignNotSupported,
    PutResult,
)
from s3balance.backends.objectrules import (
    check_completion,
    check_part_number,
    in_key_range,
    key_bytes,
    refuse_encryption,
    resolve_range,
    stored_headers,
    stored_metadata,
)
from s3balance.etags import bare_etag, multipart_md5_etag, quoted_etag
from s3balance.logs import make_logger
from s3balance.net.stallwatch import StallWatch

log = make_logger()

_T = TypeVar("_T")

#: Bytes copied per step when copying or assembling inside the root.
COPY_CHUNK = 1024 * 1024
#: Queued, not yet written bytes above which the uploading producer is paused.
WRITE_HIGH_WATER = 1024 * 1024
#: Queued bytes at or below which a paused producer is resumed.
WRITE_LOW_WATER = 256 * 1024
#: Files in ``tmp/`` older than this were left by a crash and are removed at startup.
STALE_TEMP_SECONDS = 3600.0

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"(\d{5})-([0-9a-f]{32})")


def _fsync_directory(path: str) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Written:
    """A fully received body sitting in a temporary file."""

    path: str
    md5: str
    size: int


@dataclass(frozen=True)
class _OpenedObject:
    """A stored object's sidecar and an open descriptor on the data it named at that moment."""

    sidecar: dict[str, Any]
    fd: int


class _Store:
    """The blocking half: every method runs in a pool thread, never on the reactor.

    One lock serialises the short commit steps (sidecar replace, old data removal, opening for
    read) so readers never see a sidecar whose data file was just removed.
    """

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = os.path.abspath(root)
        self.objects = os.path.join(self.root, "objects")
        self.meta = os.path.join(self.root, "meta")
        self.uploads = os.path.join(self.root, "uploads")
        self.tmp = os.path.join(self.root, "tmp")
        self._lock = threading.Lock()

    # -- layout --------------------------------------------------------------------------

    def _hashed(self, tree: str, key: str) -> tuple[str, str]:
        digest = hashlib.sha256(key_bytes(key)).hexdigest()
        return os.path.join(tree, digest[:2], digest[2:4]), digest

    def _sidecar_path(self, key: str) -> str:
        directory, digest = self._hashed(self.meta, key)
        return os.path.join(directory, digest + ".json")

    def _data_path(self, key: str, data_name: str) -> str:
        directory, _ = self._hashed(self.objects, key)
        return os.path.join(directory, data_name)

    def _ensure_dir(self, path: str) -> None:
        """Create ``path`` below the root, never the root itself: a vanished root (unmounted
        disk) must fail rather than silently fill the parent filesystem."""
        if not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "the root directory is missing", self.root)
        os.makedirs(path, exist_ok=True)

    def start(self, max_age: float) -> int:
        """Create the layout and remove temporary files older than ``max_age`` seconds."""
        for tree in (self.objects, self.meta, self.uploads, self.tmp):
            self._ensure_dir(tree)
        removed = 0
        cutoff = time.time() - max_age
        for entry in os.scandir(self.tmp):
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
        return removed

    # -- temporary files -----------------------------------------------------------------

    def new_temp(self, prefix: str) -> tuple[str, BinaryIO]:
        self._ensure_dir(self.tmp)
        fd, path = tempfile.mkstemp(dir=self.tmp, prefix=prefix)
        return path, os.fdopen(fd, "wb")

    @staticmethod
    def finish_temp(handle: BinaryIO) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    @staticmethod
    def discard_temp(path: str, handle: BinaryIO | None) -> None:
        if handle is not None and not handle.closed:
            handle.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _write_json(self, path: str, document: dict[str, Any]) -> None:
        temp_path, handle = self.new_temp("json-")
        try:
            handle.write(json.dumps(document).encode("utf-8"))
            self.finish_temp(handle)
            os.replace(temp_path, path)
        except BaseException:
            self.discard_temp(temp_path, handle)
            raise

    def _copy_range(self, fd: int, first: int, count: int, prefix: str) -> _Written:
        """Copy ``count`` bytes from ``fd`` at ``first`` into a new temporary file."""
        temp_path, handle = self.new_temp(prefix)
        try:
            md5 = hashlib.md5()
            position, remaining = first, count
            while remaining > 0:
                chunk = os.pread(fd, min(COPY_CHUNK, remaining), position)
                if not chunk:
                    raise BackendError(self.name, "stored data file is shorter than recorded")
                handle.write(chunk)
                md5.update(chunk)
                position += len(chunk)
                remaining -= len(chunk)
            self.finish_temp(handle)
            return _Written(temp_path, md5.hexdigest(), count)
        except BaseException:
            self.discard_temp(temp_path, handle)
            raise

    # -- objects -------------------------------------------------------------------------

    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._sidecar_path(key), "rb") as handle:
                sidecar: dict[str, Any] = json.loads(handle.read())
        except FileNotFoundError:
            return None
        if sidecar.get("key") != key:
            return None
        return sidecar

    def _require_sidecar(self, key: str) -> dict[str, Any]:
        sidecar = self._read_sidecar(key)
        if sidecar is None:
            raise BackendNoSuchKey(self.name, "no such key")
        return sidecar

    def commit_object(
        self,
        key: str,
        written: _Written,
        etag: str,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> PutResult:
        """Move a finished temporary file into place and publish its sidecar."""
        data_name = f"{hashlib.sha256(key_bytes(key)).hexdigest()}-{uuid.uuid4().hex}"
        data_path = self._data_path(key, data_name)
        sidecar_path = self._sidecar_path(key)
        try:
            self._ensure_dir(os.path.dirname(data_path))
            self._ensure_dir(os.path.dirname(sidecar_path))
            os.replace(written.path, data_path)
            _fsync_directory(os.path.dirname(data_path))
        except BaseException:
            self.discard_temp(written.path, None)
            raise
        sidecar = {
            "key": key,
            "data": data_name,
            "size": written.size,
            "etag": etag,
            "md5": written.md5,
            "last_modified": time.time(),
            "headers": stored_headers(headers),
            "metadata": stored_metadata(metadata),
        }
        try:
            with self._lock:
                previous = self._read_sidecar(key)
                self._write_json(sidecar_path, sidecar)
                _fsync_directory(os.path.dirname(sidecar_path))
        except BaseException:
            self.discard_temp(data_path, None)
            raise
        if previous is not None and previous["data"] != data_name:
            self.discard_temp(self._data_path(key, previous["data"]), None)
        return PutResult(etag=etag, size=written.size)

    def open_object(self, key: str) -> _OpenedObject:
        with self._lock:
            sidecar = self._require_sidecar(key)
            try:
                fd = os.open(self._data_path(key, sidecar["data"]), os.O_RDONLY)
            except FileNotFoundError as e:
                raise BackendError(self.name, "data file missing for a stored key") from e
        return _OpenedObject(sidecar, fd)

    def head_object(self, key: str) -> ObjectInfo:
        sidecar = self._require_sidecar(key)
        return ObjectInfo(
            key=key,
            size=sidecar["size"],
            etag=sidecar["etag"],
            last_modified=sidecar["last_modified"],
            headers=dict(sidecar["headers"]),
            metadata=dict(sidecar["metadata"]),
        )

    def delete_object(self, key: str) -> None:
        with self._lock:
            sidecar = self._read_sidecar(key)
            if sidecar is None:
                return
            os.unlink(self._sidecar_path(key))
        self.discard_temp(self._data_path(key, sidecar["data"]), None)

    def copy_object(
        self,
        source_key: str,
        key: str,
        headers: dict[str, str],
        metadata: dict[str, str],
        source: _Store | None = None,
    ) -> PutResult:
        """Hard-link the immutable source data when the filesystem allows, else copy it.

        :param source: the store holding ``source_key`` (another root of this host); this one
            when ``None``.
        """
        holder = source or self
        self._ensure_dir(self.tmp)
        written: _Written | None = None
        with holder._lock:
            sidecar = holder._require_sidecar(source_key)
            source_path = holder._data_path(source_key, sidecar["data"])
            linked = os.path.join(self.tmp, f"link-{uuid.uuid4().hex}")
            try:
                os.link(source_path, linked)
                written = _Written(linked, sidecar["md5"], sidecar["size"])
            except OSError:
                fd = os.open(source_path, os.O_RDONLY)
        if written is None:
            try:
                written = self._copy_range(fd, 0, sidecar["size"], "copy-")
            finally:
                os.close(fd)
        return self.commit_object(key, written, quoted_etag(written.md5), headers, metadata)

    def list_objects(
        self, prefix: str, start_after: str = "", until: str | None = None
    ) -> list[ListedObject]:
        listed = []
        for directory, _, files in os.walk(self.meta):
            for file_name in files:
                if not file_name.endswith(".json"):
                    continue
                try:
                    with open(os.path.join(directory, file_name), "rb") as handle:
                        sidecar = json.loads(handle.read())
                except FileNotFoundError:
                    continue  # deleted while we walked
                except ValueError:
                    log.warn(
                        "{backend}: unreadable sidecar {file}", backend=self.name, file=file_name
                    )
                    continue
                key = sidecar.get("key")
                if (
                    isinstance(key, str)
                    and key.startswith(prefix)
                    and in_key_range(key, start_after, until)
                ):
                    listed.append(
                        ListedObject(
                            key, sidecar["size"], sidecar["etag"], sidecar["last_modified"]
                        )
                    )
        listed.sort(key=lambda entry: key_bytes(entry.key))
        return listed

    # -- multipart uploads ---------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> str:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise BackendNoSuchUpload(self.name, "malformed upload id")
        return os.path.join(self.uploads, upload_id)

    def _load_upload(self, key: str, upload_id: str) -> tuple[str, dict[str, Any]]:
        directory = self._upload_dir(upload_id)
        try:
            with open(os.path.join(directory, "upload.json"), "rb") as handle:
                upload: dict[str, Any] = json.loads(handle.read())
        except (FileNotFoundError, NotADirectoryError) as e:
            raise BackendNoSuchUpload(self.name, "no such upload") from e
        if upload.get("key") != key:
            raise BackendNoSuchUpload(self.name, "upload belongs to another key")
        return directory, upload

    def create_upload(self, key: str, headers: dict[str, str], metadata: dict[str, str]) -> str:
        upload_id = secrets.token_hex(16)
        directory = os.path.join(self.uploads, upload_id)
        self._ensure_dir(self.uploads)
        os.mkdir(directory)
        upload = {
            "key": key,
            "headers": stored_headers(headers),
            "metadata": stored_metadata(metadata),
            "initiated": time.time(),
        }
        self._write_json(os.path.join(directory, "upload.json"), upload)
        return upload_id

    def check_upload(self, key: str, upload_id: str) -> None:
        self._load_upload(key, upload_id)

    def commit_part(
        self, key: str, upload_id: str, part_number: int, written: _Written
    ) -> PartResult:
        """Publish a part; the ETag is in its file name, so replacing a number is one rename."""
        try:
            check_part_number(self.name, part_number)
            with self._lock:
                directory, _ = self._load_upload(key, upload_id)
                part_name = f"{part_number:05d}-{written.md5}"
                os.replace(written.path, os.path.join(directory, part_name))
                for entry in os.listdir(directory):
                    if entry.startswith(f"{part_number:05d}-") and entry != part_name:
                        self.discard_temp(os.path.join(directory, entry), None)
        except BaseException:
            self.discard_temp(written.path, None)
            raise
        return PartResult(part_number, quoted_etag(written.md5), written.size)

    def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
        source: _Store | None = None,
    ) -> PartResult:
        self._load_upload(key, upload_id)
        opened = (source or self).open_object(source_key)
        try:
            first, last = resolve_range(self.name, byte_range, opened.sidecar["size"])
            written = self._copy_range(opened.fd, first, last - first + 1, "part-")
        finally:
            os.close(opened.fd)
        return self.commit_part(key, upload_id, part_number, written)

    def list_parts(self, key: str, upload_id: str) -> list[PartResult]:
        directory, _ = self._load_upload(key, upload_id)
        parts = []
        for entry in os.scandir(directory):
            match = _PART_FILE.fullmatch(entry.name)
            if match is None:
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # replaced while we listed
            parts.append(PartResult(int(match.group(1)), quoted_etag(match.group(2)), size))
        parts.sort(key=lambda part: part.part_number)
        return parts

    def complete_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> PutResult:
        """Concatenate the named parts (streaming) into the object, then drop the upload."""
        directory, upload = self._load_upload(key, upload_id)
        check_completion(self.name, parts)
        fds: list[int] = []
        try:
            with self._lock:
                for number, etag in parts:
                    part_name = f"{number:05d}-{bare_etag(etag)}"
                    if not _PART_FILE.fullmatch(part_name):
                        raise BackendInvalidPart(self.name, f"part {number}: malformed ETag")
                    try:
                        fds.append(os.open(os.path.join(directory, part_name), os.O_RDONLY))
                    except FileNotFoundError as e:
                        raise BackendInvalidPart(
                            self.name, f"part {number} with ETag {etag} not found"
                        ) from e
            temp_path, handle = self.new_temp("complete-")
            try:
                whole = hashlib.md5()
                size = 0
                for fd in fds:
                    while chunk := os.read(fd, COPY_CHUNK):
                        handle.write(chunk)
                        whole.update(chunk)
                        size += len(chunk)
                self.finish_temp(handle)
            except BaseException:
                self.discard_temp(temp_path, handle)
                raise
        finally:
            for fd in fds:
                os.close(fd)
        etag = multipart_md5_etag([bare_etag(etag) for _, etag in parts])
        result = self.commit_object(
            key,
            _Written(temp_path, whole.hexdigest(), size),
            etag,
            upload["headers"],
            upload["metadata"],
        )
        self._remove_upload_dir(directory)
        return result

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            directory, _ = self._load_upload(key, upload_id)
        except BackendNoSuchUpload:
            return
        self._remove_upload_dir(directory)

    def _remove_upload_dir(self, directory: str) -> None:
        """Rename away first so the upload vanishes at once; a crash leaves it in ``tmp``."""
        self._ensure_dir(self.tmp)
        doomed = os.path.join(self.tmp, f"aborted-{uuid.uuid4().hex}")
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    # -- health --------------------------------------------------------------------------

    def probe(self) -> None:
        if not os.path.isdir(self.root):
            raise BackendUnavailable(self.name, "the root is not a directory")
        path, handle = self.new_temp("probe-")
        try:
            handle.write(b"probe")
            handle.close()
        finally:
            self.discard_temp(path, handle)

    def capacity(self) -> Capacity:
        stats = os.statvfs(self.root)
        return Capacity(
            total_bytes=stats.f_blocks * stats.f_frsize,
            free_bytes=stats.f_bavail * stats.f_frsize,
        )


@implementer(IConsumer)
class _BodyReceiver:
    """Streams an :class:`IBodyProducer` into a temporary file with bounded memory.

    Chunks arrive on the reactor thread and queue up; one pool task at a time drains the queue
    to the file (updating the MD5).  Over :data:`WRITE_HIGH_WATER` queued bytes the producer is
    paused until the writer catches up.  The body comes through the backends' one length guard
    (:class:`~s3balance.backends.guardedbody.GuardedBody`: the declared length, the last byte
    held back until the body succeeded); the writer's pauses are the disk's, never a stall.
    """

    def __init__(
        self,
        backend: LocalDirectoryBackend,
        body: IBodyProducer,
        length: int,
        prefix: str,
    ) -> None:
        self._backend = backend
        self._store = backend._store
        no_stall = StallWatch(backend._reactor, 0.0)
        no_stall.stop()
        self._body = GuardedBody(self._store.name, body, length, no_stall, hash_body=False)
        self._prefix = prefix
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._received = 0
        self._paused_by_us = False
        self._writing = False
        self._closed = False
        self._error: Failure | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._write_failed: Deferred[None] = Deferred()
        self._md5 = hashlib.md5()
        self._handle: BinaryIO | None = None
        self._temp_path = ""

    async def receive(self) -> _Written:
        self._temp_path, self._handle = await self._backend._run(self._store.new_temp, self._prefix)
        try:
            await self._body_or_write_failure()
            self._closed = True
            if self._error is None:
                await self._until_idle()
            if self._error is not None:
                self._error.raiseException()
            await self._backend._run(self._store.finish_temp, self._handle, body_started=True)
            return _Written(self._temp_path, self._md5.hexdigest(), self._received)
        except BaseException:
            self._closed = True
            self._queue.clear()
            await self._until_idle()
            await self._backend._run(self._store.discard_temp, self._temp_path, self._handle)
            raise

    def _body_or_write_failure(self) -> Deferred[None]:
        """Whichever ends first: the body (its own result), or our writer failing."""
        outcome: Deferred[None] = Deferred()

        def body_done(_: object) -> None:
            if not outcome.called:
                outcome.callback(None)

        def body_failed(failure: Failure) -> None:
            if not outcome.called:
                outcome.errback(failure)

        def write_failed(_: object) -> None:
            if not outcome.called:
                outcome.callback(None)  # self._error is raised by the caller

        self._write_failed.addCallback(write_failed)
        try:
            producing = self._body.startProducing(self)
        except Exception:
            return fail()
        producing.addCallbacks(body_done, body_failed)
        return outcome

    # IConsumer, called by the body on the reactor thread.

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Bodies pass themselves to ``startProducing``; nothing to register."""

    def unregisterProducer(self) -> None:
        """See :meth:`registerProducer`."""

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._received += len(data)
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > WRITE_HIGH_WATER and not self._paused_by_us:
            self._paused_by_us = True
            self._body.pauseProducing()
        self._start_writer()

    # The writer.

    def _start_writer(self) -> None:
        if self._writing or not self._queue or self._error is not None:
            return
        self._writing = True
        writing = deferToThreadPool(self._backend._reactor, self._backend._pool, self._write_queued)
        writing.addBoth(self._writer_stopped)

    def _write_queued(self) -> None:
        """Pool thread: write queued chunks until the queue is empty."""
        assert self._handle is not None
        while self._error is None:
            try:
                chunk = self._queue.popleft()
            except IndexError:
                return
            self._handle.write(chunk)
            self._md5.update(chunk)
            self._backend._reactor.callFromThread(self._chunk_written, len(chunk))

    def _chunk_written(self, size: int) -> None:
        self._queued -= size
        if self._paused_by_us and self._queued <= WRITE_LOW_WATER and not self._closed:
            self._paused_by_us = False
            self._body.resumeProducing()

    def _writer_stopped(self, result: object) -> None:
        self._writing = False
        if isinstance(result, Failure):
            error = result.value
            assert error is not None
            if isinstance(error, OSError):
                error = BackendUnavailable(self._store.name, str(error), body_started=True)
            self._fail(error)
        if self._queue and self._error is None:
            self._start_writer()
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _until_idle(self) -> Deferred[None]:
        if not self._writing:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return
        self._error = Failure(error)
        self._closed = True
        self._queue.clear()
        # Settle first: stopping the body may fail its Deferred at once, and our error must win.
        self._write_failed.callback(None)
        try:
            self._body.stopProducing()
        except Exception:
            log.debug("body refused stopProducing: {error}", error=sys.exc_info()[1])


class _FileStream(ChunkedObjectStream):
    """A GET body read from an already open descriptor, chunk by chunk in the pool."""

    def __init__(
        self,
        backend: LocalDirectoryBackend,
        fd: int,
        first: int,
        length: int,
        size: int,
        etag: str,
    ) -> None:
        super().__init__(first, length, size, etag)
        self._backend = backend
        self._fd = fd

    def _read(self, position: int, count: int) -> Deferred[bytes]:
        return deferToThreadPool(
            self._backend._reactor, self._backend._pool, os.pread, self._fd, count, position
        )

    def _release(self) -> None:
        self._backend._pool.callInThread(os.close, self._fd)


class _DiskThreadPool(ThreadPool):
    """Disk threads that never keep the process alive: a write cut short at exit leaves only a
    temporary file (objects appear by an atomic rename), so nothing is worth waiting for."""

    @staticmethod
    def threadFactory(*args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override]
        return threading.Thread(*args, daemon=True, **kwargs)


@implementer(IBackend)
class LocalDirectoryBackend:
    """Objects as files in a local directory; see the module docstring for the layout.

    :param name: the configured bucket name.
    :param root: the directory; created (with its parents) at startup if missing.
    :param reactor: the reactor to deliver results on.
    :param threadpool: where disk work runs; without one, the backend starts its own and stops
        it in :meth:`close`.
    :param max_size: the configured size limit, kept for the core (this class does not enforce it).
    """

    can_presign = False
    #: Files are written as they arrive: nothing here encrypts them.
    can_encrypt = False

    def __init__(
        self,
        name: str,
        root: str,
        reactor: Any,
        threadpool: ThreadPool | None = None,
        max_size: int | None = None,
    ) -> None:
        self.name = name
        self.max_size = max_size
        self._reactor = reactor
        self._store = _Store(name, root)
        self.root = self._store.root
        self._own_pool = threadpool is None
        self._shutdown_trigger: object = None
        if threadpool is None:
            threadpool = _DiskThreadPool(minthreads=0, maxthreads=4, name=f"s3balance-local-{name}")
            threadpool.start()
            self._shutdown_trigger = reactor.addSystemEventTrigger(
                "during", "shutdown", threadpool.stop
            )
        self._pool = threadpool
        self._started = False
        self._start_waiters: list[Deferred[None]] = []
        starting = deferToThreadPool(reactor, threadpool, os.makedirs, self.root, exist_ok=True)
        starting.addCallback(lambda _: self._in_pool(self._store.start, STALE_TEMP_SECONDS))
        starting.addCallbacks(self._log_stale_removed, self._log_start_failure)
        starting.addBoth(self._now_started)

    def _log_stale_removed(self, removed: int) -> None:
        if removed:
            log.info(
                "{backend}: removed {count} stale temporary files", backend=self.name, count=removed
            )

    def _log_start_failure(self, failure: Failure) -> None:
        log.error(
            "{backend}: cannot prepare {root}: {error}",
            backend=self.name,
            root=self.root,
            error=failure.getErrorMessage(),
        )

    def _now_started(self, _: object) -> None:
        self._started = True
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _in_pool(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def _run(
        self, function: Callable[..., _T], *args: Any, body_started: bool = False
    ) -> Deferred[_T]:
        """Run blocking ``function`` in the pool once startup is done; OS errors become
        :class:`BackendUnavailable` (a disk that fails is a backend that is not serving)."""
        if self._started:
            running = self._in_pool(function, *args)
        else:
            waiter: Deferred[None] = Deferred()
            self._start_waiters.append(waiter)
            running = waiter.addCallback(lambda _: self._in_pool(function, *args))

        def translate(failure: Failure) -> Failure:
            if failure.check(OSError):
                error = failure.value
                assert isinstance(error, OSError)
                if error.errno == errno.ENOSPC:
                    detail = "no space left on the device"
                else:
                    detail = str(error)
                return Failure(BackendUnavailable(self.name, detail, body_started))
            return failure

        return running.addErrback(translate)

    # -- IBackend ------------------------------------------------------------------------

    @returns_deferred
    async def put_object(
        self,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> PutResult:
        refuse_encryption(self.name, headers)
        written = await _BodyReceiver(self, body, length, "put-").receive()
        return await self._run(
            self._store.commit_object,
            key,
            written,
            quoted_etag(written.md5),
            headers,
            metadata,
            body_started=True,
        )

    @returns_deferred
    async def get_object(
        self, key: str, byte_range: tuple[int, int] | None = None
    ) -> IObjectStream:
        opened = await self._run(self._store.open_object, key)
        size = opened.sidecar["size"]
        try:
            first, last = resolve_range(self.name, byte_range, size)
        except BaseException:
            self._pool.callInThread(os.close, opened.fd)
            raise
        return _FileStream(self, opened.fd, first, last - first + 1, size, opened.sidecar["etag"])

    def head_object(self, key: str) -> Deferred[ObjectInfo]:
        return self._run(self._store.head_object, key)

    def delete_object(self, key: str) -> Deferred[None]:
        return self._run(self._store.delete_object, key)

    def can_copy_from(self, source: IBackend) -> bool:
        # Any directory of this host: the file is linked or copied by a disk thread.
        return isinstance(source, LocalDirectoryBackend)

    def _source_store(self, source: IBackend | None) -> _Store:
        if source is None:
            return self._store
        if not isinstance(source, LocalDirectoryBackend):
            raise BackendError(self.name, f"cannot copy server-side from {source.name}")
        return source._store

    def copy_object(
        self,
        source_key: str,
        key: str,
        headers: dict[str, str],
        metadata: dict[str, str],
        source_backend: IBackend | None = None,
    ) -> Deferred[PutResult]:
        try:
            refuse_encryption(self.name, headers)
            store = self._source_store(source_backend)
        except BackendError:
            return fail()
        return self._run(self._store.copy_object, source_key, key, headers, metadata, store)

    def create_multipart_upload(
        self, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> Deferred[str]:
        try:
            refuse_encryption(self.name, headers)
        except BackendCannotEncrypt:
            return fail()
        return self._run(self._store.create_upload, key, headers, metadata)

    @returns_deferred
    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> PartResult:
        await self._run(self._store.check_upload, key, upload_id)
        written = await _BodyReceiver(self, body, length, "part-").receive()
        return await self._run(
            self._store.commit_part, key, upload_id, part_number, written, body_started=True
        )

    def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
        source_backend: IBackend | None = None,
    ) -> Deferred[PartResult]:
        try:
            store = self._source_store(source_backend)
        except BackendError:
            return fail()
        return self._run(
            self._store.upload_part_copy, key, upload_id, part_number, source_key, byte_range,
            store,
        )

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> Deferred[PutResult]:
        return self._run(self._store.complete_upload, key, upload_id, list(parts))

    def abort_multipart_upload(self, key: str, upload_id: str) -> Deferred[None]:
        return self._run(self._store.abort_upload, key, upload_id)

    def list_parts(self, key: str, upload_id: str) -> Deferred[list[PartResult]]:
        return self._run(self._store.list_parts, key, upload_id)

    def list_objects(
        self, prefix: str, start_after: str = "", until: str | None = None
    ) -> Deferred[list[ListedObject]]:
        return self._run(self._store.list_objects, prefix, start_after, until)

    def presign_get(self, key: str, expires_in: int, response_overrides: dict[str, str]) -> str:
        raise PresignNotSupported(self.name, "a local directory cannot presign URLs")

    def probe(self, timeout: float) -> Deferred[None]:
        return probe_within(self.name, self._run(self._store.probe), timeout, self._reactor)

    def capacity(self) -> Deferred[Capacity]:
        return self._run(self._store.capacity)

    @returns_deferred
    async def close(self) -> None:
        if not self._started:
            waiter: Deferred[None] = Deferred()
            self._start_waiters.append(waiter)
            await waiter
        if self._own_pool and self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
            # ThreadPool.stop joins its threads: wait in the reactor's pool, not on the reactor.
            await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._pool.stop)

