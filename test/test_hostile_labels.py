"""The bounded set of bucket labels: loading, rate-limited refreshes, changes made meanwhile."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from s3balance.web.labels import OTHER_BUCKET, BucketLabels

pytestmark = pytest.mark.timeout(30)


class FakeListing:
    """The store's listing, answered when the test says so."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        self.calls = 0
        self.pending: list[defer.Deferred[list[str]]] = []

    async def __call__(self) -> list[str]:
        self.calls += 1
        waiter: defer.Deferred[list[str]] = defer.Deferred()
        self.pending.append(waiter)
        return await waiter

    def answer(self) -> None:
        waiters, self.pending = self.pending, []
        for waiter in waiters:
            waiter.callback(list(self.names))


def test_unknown_names_refresh_at_most_once_per_interval() -> None:
    clock = Clock()
    listing = FakeListing(["vb"])
    labels = BucketLabels(listing, clock, refresh_interval=60)
    ready = labels.ready()
    listing.answer()
    assert ready.called
    assert labels.label("vb") == "vb"
    assert labels.label(None) == ""
    for index in range(1000):
        assert labels.label(f"random-{index}") == OTHER_BUCKET
    assert listing.calls == 1
    clock.advance(61)
    listing.names.append("made-elsewhere")
    assert labels.label("made-elsewhere") == OTHER_BUCKET  # this one triggers the refresh
    listing.answer()
    assert listing.calls == 2
    assert labels.label("made-elsewhere") == "made-elsewhere"


def test_changes_during_a_refresh_are_kept() -> None:
    clock = Clock()
    listing = FakeListing(["vb", "old"])
    labels = BucketLabels(listing, clock)
    labels.refresh()
    labels.added("new")
    labels.removed("old")
    listing.answer()  # a listing taken before the creation and the deletion
    assert "new" in labels and "old" not in labels and "vb" in labels


def test_a_failed_load_keeps_the_set_and_retries_later() -> None:
    clock = Clock()

    async def broken() -> list[str]:
        raise RuntimeError("database down")

    labels = BucketLabels(broken, clock, refresh_interval=60)
    labels.added("vb")
    assert labels.ready().called
    assert labels.label("vb") == "vb"
