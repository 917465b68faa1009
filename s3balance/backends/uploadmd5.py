"""The MD5 of a body as it passes on its way to a backend, computed off the reactor when large.

A backend that answers a PUT without an ETag (a WebDAV-style store) gets the MD5 of what was sent
as the ETag S3 would have given; :class:`s3balance.backends.memory.MemoryBackend` hashes every
body this way.  MD5 costs about as much CPU as the rest of the upload path and hashlib releases
the GIL, so a large body is hashed in a worker thread, on another core.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

#: Bodies from this size on are hashed in the worker thread.
BACKGROUND_HASH_MIN = 1 << 20
#: Bytes queued for the hashing thread before the reactor waits for it (bounds memory).
BACKGROUND_HASH_BACKLOG = 2 << 20

_hash_executor: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    """One thread for every upload's MD5: a single worker keeps each digest's updates in order."""
    global _hash_executor
    if _hash_executor is None:
        _hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3balance-md5")
    return _hash_executor


class RunningMD5(Protocol):
    """An MD5 fed chunk by chunk."""

    def update(self, data: bytes) -> None: ...

    def hexdigest(self) -> str: ...


class InlineMD5:
    """MD5 computed as bytes pass (small bodies: a thread hand-over would cost more)."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()

    def update(self, data: bytes) -> None:
        self._md5.update(data)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


class BackgroundMD5:
    """MD5 computed in the hashing thread; :meth:`hexdigest` waits for the queued updates.

    The queue is bounded by :data:`BACKGROUND_HASH_BACKLOG`: beyond it :meth:`update` waits
    for the thread to catch up, so a slow hash costs time, never memory.
    """

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self._queued = 0
        self._pending: deque[tuple[Future[None], int]] = deque()

    def update(self, data: bytes) -> None:
        while self._pending and self._pending[0][0].done():
            self._queued -= self._pending.popleft()[1]
        if self._queued > BACKGROUND_HASH_BACKLOG:
            self._wait()
        self._pending.append((_hasher().submit(self._md5.update, data), len(data)))
        self._queued += len(data)

    def _wait(self) -> None:
        while self._pending:
            future, size = self._pending.popleft()
            future.result()
            self._queued -= size

    def hexdigest(self) -> str:
        self._wait()
        return self._md5.hexdigest()


def md5_for(length: int) -> RunningMD5:
    """The right MD5 for a body of ``length`` bytes: in the worker thread from
    :data:`BACKGROUND_HASH_MIN` on, inline below."""
    return BackgroundMD5() if length >= BACKGROUND_HASH_MIN else InlineMD5()
