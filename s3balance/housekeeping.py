"""Housekeeping loops: abandoned multipart uploads, kept completion results, and replaced bytes.

Abandoned multipart uploads are aborted after a while, so their parts stop taking space (on every
backend holding a copy, for a replicated bucket: see :func:`s3balance.multipart.discard_upload`).

Clients that crash or give up never send AbortMultipartUpload: their parts would stay on the
backend (and count towards its used bytes) forever.  :class:`UploadExpiry` aborts, every
``period`` seconds, the uploads initiated more than ``expiry`` seconds ago: on the backend first,
then in the store.  An upload whose backend cannot abort it now (unreachable, or no longer
configured) keeps its row and is tried again next round; no failure stops the loop.  The same
round forgets the results of uploads completed more than ``expiry`` seconds ago (kept so that a
repeated CompleteMultipartUpload answers as the first one did).

:class:`DeletionSweeper` deletes, every ``period`` seconds, the replaced or deleted locations whose
grace is over (``pending_deletions``, see :mod:`s3balance.gateway`), including those a daemon that
died left behind.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance.config import MultipartConfig
from s3balance.db.store import MetadataStore
from s3balance.logs import make_logger
from s3balance.multipart import UploadPool, discard_upload
from s3balance.periodic import Periodic

log = make_logger()


class Usage(Protocol):
    def adjust(self, name: str, delta_bytes: int, delta_objects: int) -> None: ...


class PeriodicRounds(Service):
    """A round of work every ``period`` seconds (the first at start) on ``clock``; a round that
    fails is logged and the next one runs as planned, so no failure stops the loop.

    Subclasses say what a round does (:meth:`_round`, which returns a count for tests and logs)
    and what to call it in the log (:attr:`work`).
    """

    #: What a round does, for the log ("upload expiry", "deletion sweep").
    work = "housekeeping"

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self.clock = clock
        self.period = period
        self._loop: Periodic | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = Periodic(self.clock, self.run_once, self.work)
        self._loop.start(self.period)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        loop, self._loop = self._loop, None
        return loop.stop() if loop is not None else None

    def run_once(self) -> defer.Deferred[int]:
        """One round; fires with its count, never fails."""
        return defer.ensureDeferred(self._round()).addErrback(self._round_failed)

    async def _round(self) -> int:
        raise NotImplementedError

    def _round_failed(self, failure: Failure) -> int:
        log.failure("{work} round failed; next round in {period}s", failure,
                    work=self.work, period=self.period)
        return 0


class UploadExpiry(PeriodicRounds):
    """The expiry task (see the module docstring).

    :param store: where uploads are listed and forgotten.
    :param pool: gives each upload's backend (:class:`s3balance.pool.BackendPool`).
    :param clock: drives the loop and tells the time uploads are compared with.
    :param expiry: seconds after which an upload is abandoned.
    :param period: seconds between rounds (the first runs at start).
    :param usage: when given, told about the bytes released, until its next refresh.
    """

    work = "upload expiry"

    def __init__(
        self,
        store: MetadataStore,
        pool: UploadPool,
        clock: IReactorTime,
        expiry: float = MultipartConfig.expiry,
        period: float = MultipartConfig.cleanup_period,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(clock, period)
        self.store = store
        self.pool = pool
        self.expiry = expiry
        self.usage = usage
        self.aborted = 0

    @classmethod
    def from_config(
        cls,
        config: MultipartConfig,
        store: MetadataStore,
        pool: UploadPool,
        clock: IReactorTime,
        usage: Usage | None = None,
    ) -> UploadExpiry:
        return cls(store, pool, clock, config.expiry, config.cleanup_period, usage)

    async def _round(self) -> int:
        """Abort expired uploads; the count is of uploads aborted."""
        cutoff = self.clock.seconds() - self.expiry
        expired = await self.store.uploads_initiated_before(cutoff)
        aborted = 0
        for upload in expired:
            try:
                released = await discard_upload(self.store, self.pool, upload)
            except KeyError:
                log.warn(
                    "expired upload {upload_id} of {bucket}/{key} is on backend {backend}, "
                    "which is not configured; kept for a later round",
                    upload_id=upload.upload_id, bucket=upload.bucket, key=upload.key,
                    backend=upload.backend,
                )
                continue
            except Exception as error:
                log.warn(
                    "could not abort expired upload {upload_id} on {backend}: {error}; "
                    "retrying next round",
                    upload_id=upload.upload_id, backend=upload.backend, error=error,
                )
                continue
            if released is None:
                continue  # completed or aborted by a client meanwhile
            aborted += 1
            if self.usage is not None:
                for name, size in released.items():
                    self.usage.adjust(name, -size, 0)
            log.info(
                "aborted upload {upload_id} of {bucket}/{key}, initiated at {initiated}, "
                "releasing {released} bytes on {backend}",
                upload_id=upload.upload_id, bucket=upload.bucket, key=upload.key,
                initiated=upload.initiated, released=sum(released.values()),
                backend=", ".join(sorted(released)),
            )
        self.aborted += aborted
        await self.store.forget_completed_uploads(cutoff)
        return aborted


class Sweeper(Protocol):
    def sweep_deletions(self, limit: int = 1000) -> Any: ...


class DeletionSweeper(PeriodicRounds):
    """Runs :meth:`s3balance.gateway.Gateway.sweep_deletions` every ``period`` seconds.

    :param gateway: knows this daemon's readers, which a sweep must not delete under.
    :param clock: drives the loop.
    :param period: seconds between rounds (the first runs at start).
    """

    work = "deletion sweep"

    def __init__(self, gateway: Sweeper, clock: IReactorTime, period: float = 10.0) -> None:
        super().__init__(clock, period)
        self.gateway = gateway
        self.deleted = 0

    async def _round(self) -> int:
        """Delete what is due; the count is of locations deleted."""
        deleted = int(await self.gateway.sweep_deletions())
        self.deleted += deleted
        return deleted
