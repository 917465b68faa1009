"""The ``bucket`` label of per-request metrics, taken from a bounded set.

A label value is a time series for as long as the process lives, so it must never come straight
from a request: an anonymous client naming a new bucket in every request (or a NUL byte in one)
would grow the daemon's memory and every scrape without limit.  A request's bucket is used as the
label only when it is a virtual bucket the daemon knows (declared or created); every other name
becomes :data:`OTHER_BUCKET`, and requests that name no bucket get ``""``.

The known set lives in memory.  It is filled from the metadata store at the first request (whose
count waits for it) and refreshed from it when a request names a bucket it does not hold (at most
once per ``refresh_interval``, so unknown names cost one query a minute at worst, however many
arrive);
CreateBucket and DeleteBucket answered by this daemon update it at once.  A bucket another daemon
created, or a reload declared, is therefore labelled by name from the next refresh on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from s3balance.logs import make_logger

log = make_logger()

#: The label of every bucket name the daemon does not know: not a valid bucket name (S3 names
#: have no ``_``), so it can never be confused with a real one.
OTHER_BUCKET = "_other"
#: Seconds between two refreshes of the known set caused by unknown names.
DEFAULT_REFRESH_INTERVAL = 60.0


class BucketLabels:
    """The virtual buckets whose names may be metric labels.

    :param load: fetches the names of every virtual bucket (the metadata store's listing).
    :param clock: for the refresh interval.
    :param refresh_interval: least seconds between two refreshes prompted by unknown names.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[Iterable[str]]],
        clock: IReactorTime,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        self._load = load
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._known: set[str] = set()
        self._loaded = False
        self._refreshing: defer.Deferred[None] | None = None
        self._last_refresh: float | None = None
        #: Creations and deletions seen while a refresh runs (its listing may predate them).
        self._changes: list[tuple[str, bool]] = []

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __len__(self) -> int:
        return len(self._known)

    @property
    def loaded(self) -> bool:
        """Whether the set was loaded once (:meth:`ready` would fire at once)."""
        return self._loaded

    def ready(self) -> defer.Deferred[None]:
        """Fires once the set was loaded from the store (at once after the first load; a load
        that failed fires too, and the next unknown name tries again)."""
        if self._loaded:
            return defer.succeed(None)
        return self.refresh()

    def label(self, bucket: str | None) -> str:
        """The label for a request naming ``bucket`` (``None``: a service-level request)."""
        if not bucket:
            return ""
        if bucket in self._known:
            return bucket
        self._maybe_refresh()
        return OTHER_BUCKET

    def added(self, name: str) -> None:
        """This daemon created ``name``."""
        self._known.add(name)
        if self._refreshing is not None:
            self._changes.append((name, True))

    def removed(self, name: str) -> None:
        """This daemon deleted ``name``."""
        self._known.discard(name)
        if self._refreshing is not None:
            self._changes.append((name, False))

    def refresh(self) -> defer.Deferred[None]:
        """Reload the set from the store now (one query at a time); fires when done."""
        if self._refreshing is not None:
            return self._refreshing
        self._last_refresh = self._clock.seconds()

        async def reload() -> None:
            try:
                names = await self._load()
            except Exception as error:  # the store is down: keep the current set
                log.warn("cannot refresh the bucket labels: {error}", error=error)
                return
            known = set(names)
            for name, exists in self._changes:
                if exists:
                    known.add(name)
                else:
                    known.discard(name)
            self._known = known
            self._loaded = True

        def done(result: Any) -> Any:
            self._refreshing = None
            self._changes = []
            return result

        refreshing: defer.Deferred[None] = defer.ensureDeferred(reload())
        refreshing.addBoth(done)
        if not refreshing.called:
            self._refreshing = refreshing
        return refreshing

    def _maybe_refresh(self) -> None:
        last = self._last_refresh
        if self._refreshing is None and (
            last is None or self._clock.seconds() - last >= self._refresh_interval
        ):
            self.refresh()
