"""Where a PUT's ETag comes from when the service may not send one (WebDAV-style stores).

S3 services always answer a PUT with the ETag; plain HTTP stores (WebDAV) answer 201/204 without
one, and then the MD5 of what was sent is what S3 would have said.  Hashing costs about as much
CPU as the rest of the upload, so it stops once the backend has shown that it sends ETags.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from s3balance.backends.interface import BackendError
from s3balance.etags import quoted_etag
from s3balance.logs import make_logger

log = make_logger()


class PutETags:
    """Per backend: whether to hash the next PUT body, and its ETag once answered.

    :param backend: the backend's configured name, for the log.
    """

    def __init__(self, backend: str) -> None:
        self._backend = backend
        #: Whether the last PUT answer carried an ETag (then the next PUT is not hashed).
        self._sends_etags = False

    @property
    def hash_next(self) -> bool:
        """Whether the next PUT's body must be hashed."""
        return not self._sends_etags

    async def etag(
        self,
        answered: str | None,
        md5: str | None,
        ask: Callable[[], Awaitable[str]],
        remove: Callable[[], Awaitable[None]],
    ) -> str:
        """The quoted ETag of a PUT answered with ``answered`` (its ETag header, if any).

        :param md5: the MD5 of the bytes sent, when they were hashed.
        :param ask: the ETag the service reports for the stored object (HEAD), for an answer
            without one although earlier ones had one (the service changed, or sits behind
            another proxy now).
        :param remove: deletes the stored object when ``ask`` fails: better than keeping it
            under an invented ETag.
        """
        self._sends_etags = bool(answered)
        if answered:
            return quoted_etag(answered)
        if md5 is not None:
            return quoted_etag(md5)
        log.warn(
            "backend {backend} answered a PUT without an ETag after earlier ones had one; "
            "asking HEAD and hashing from now on",
            backend=self._backend,
        )
        try:
            return await ask()
        except BackendError:
            try:
                await remove()
            except BackendError:
                pass  # the gateway's own clean-up of a failed PUT tries again
            raise
