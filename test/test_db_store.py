"""The metadata store, against real SQLite, PostgreSQL and MariaDB databases.

One suite (:class:`StoreTests`), run through the inline pool (SQL in the test's thread, so several
Python threads can race real transactions) on all three databases, and once through the real
database thread pool on SQLite.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db import model
from s3balance.db.pool import InlineDBPool
from s3balance.db.records import (
    BackendUsage,
    BucketTotals,
    Location,
    ObjectRecord,
    PartRecord,
    UploadCopy,
    UploadRecord,
)
from s3balance.db.store import (
    ANY,
    BucketNotEmptyError,
    Condition,
    MetadataStore,
    NoSuchBucketError,
    ObjectMissingError,
    PreconditionFailedError,
    Replacement,
)
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    fresh_store,
    server_database,
)

Gen = Generator[Any, Any, None]


def obj(
    key: str,
    size: int = 10,
    locations: tuple[tuple[str, str], ...] | None = None,
    bucket: str = "vb",
    **fields: Any,
) -> ObjectRecord:
    if locations is None:
        locations = (("b1", f"real/{key}"),)
    return ObjectRecord(
        bucket=bucket,
        key=key,
        size=size,
        etag=fields.pop("etag", '"etag"'),
        last_modified=fields.pop("last_modified", 1700000000.5),
        locations=tuple(Location(backend, real) for backend, real in locations),
        **fields,
    )


def upload(upload_id: str, key: str, backend: str = "b1", initiated: float = 100.0) -> UploadRecord:
    return UploadRecord(
        upload_id=upload_id,
        bucket="vb",
        key=key,
        backend=backend,
        real_key=f"real/{key}/{upload_id}",
        backend_upload_id=f"backend-{upload_id}",
        initiated=initiated,
        headers={"content-type": "text/plain"},
        metadata={"owner": "me"},
    )


def recomputed_usage(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """Usage as the rows say it should be: object sizes per location, plus parts' sizes."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with engine.connect() as connection:
        for backend, size in connection.execute(
            sa.select(model.object_locations.c.backend, model.objects.c.size).join(
                model.objects, model.objects.c.id == model.object_locations.c.object_id
            )
        ):
            totals[backend][0] += size
            totals[backend][1] += 1
        for backend, size in connection.execute(
            sa.select(model.multipart_parts.c.backend, model.multipart_parts.c.size)
        ):
            totals[backend][0] += size
        for backend, size in connection.execute(  # every copy of a replicated upload
            sa.select(model.upload_copies.c.backend, model.multipart_parts.c.size).join(
                model.multipart_parts,
                model.multipart_parts.c.upload_ref == model.upload_copies.c.upload_ref,
            )
        ):
            totals[backend][0] += size
    return {backend: (b, n) for backend, (b, n) in totals.items() if (b, n) != (0, 0)}


class StoreTests:
    """The store's behaviour; subclasses say which database and pool."""

    store: MetadataStore
    #: SQLAlchemy URL of the database, or None for a fresh SQLite file per test.
    db_url: str | None = None
    inline = True

    # Provided by unittest.TestCase:
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertLessEqual: Callable[..., None]
    assertFailure: Callable[..., defer.Deferred[Any]]

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url, inline=self.inline)

    @property
    def engine(self) -> sa.Engine:
        return self.store.pool.engine

    def concurrently(self, calls: list[Callable[[], defer.Deferred[Any]]]) -> defer.Deferred[Any]:
        """Start ``calls`` at the same time; fires with their results (or exceptions), in order.

        Inline, each runs in its own Python thread; on the thread pool, they are all issued at
        once and the pool runs them in parallel.
        """
        if not isinstance(self.store.pool, InlineDBPool):
            return defer.gatherResults(
                [call().addErrback(lambda failure: failure.value) for call in calls]
            )
        results: list[Any] = [None] * len(calls)
        barrier = threading.Barrier(len(calls), timeout=30)

        def run(index: int) -> None:
            barrier.wait()
            outcome = calls[index]()
            outcome.addCallbacks(
                lambda value: results.__setitem__(index, value),
                lambda failure: results.__setitem__(index, failure.value),
            )

        workers = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert not worker.is_alive(), "a database call hung"
        return defer.succeed(results)

    @defer.inlineCallbacks
    def assertUsage(self, expected: dict[str, tuple[int, int]]) -> Gen:
        usage = yield self.store.usage()
        actual = {
            name: (u.used_bytes, u.object_count)
            for name, u in usage.items()
            if (u.used_bytes, u.object_count) != (0, 0)
        }
        self.assertEqual(actual, expected)
        self.assertEqual(recomputed_usage(self.engine), expected)

    # -- buckets -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_buckets_lifecycle(self) -> Gen:
        self.assertTrue((yield self.store.create_bucket("vb", now=10.0)))
        self.assertFalse((yield self.store.create_bucket("vb", now=20.0)))
        yield self.store.create_bucket("Legacy-Bucket", now=30.0, from_config=True)
        yield self.store.create_bucket("a-b", now=40.0)
        yield self.store.create_bucket("ab", now=50.0)
        bucket = yield self.store.get_bucket("vb")
        self.assertEqual((bucket.name, bucket.created_at, bucket.from_config), ("vb", 10.0, False))
        self.assertTrue((yield self.store.get_bucket("Legacy-Bucket")).from_config)
        self.assertIsNone((yield self.store.get_bucket("legacy-bucket")))
        names = [b.name for b in (yield self.store.list_buckets())]
        self.assertEqual(names, ["Legacy-Bucket", "a-b", "ab", "vb"])
        yield self.store.delete_bucket("vb")
        self.assertIsNone((yield self.store.get_bucket("vb")))
        yield self.assertFailure(self.store.delete_bucket("vb"), NoSuchBucketError)

    @defer.inlineCallbacks
    def test_delete_bucket_refused_while_objects_or_uploads_remain(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.put_object(obj("k"))
        yield self.assertFailure(self.store.delete_bucket("vb"), BucketNotEmptyError)
        yield self.store.delete_object("vb", "k")
        yield self.store.create_upload(upload("u1", "k"))
        yield self.assertFailure(self.store.delete_bucket("vb"), BucketNotEmptyError)
        yield self.store.abort_upload("u1")
        yield self.store.delete_bucket("vb")
        self.assertEqual((yield self.store.list_buckets()), [])

    @defer.inlineCallbacks
    def test_bucket_totals_count_every_bucket(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_bucket("empty", now=0)
        yield self.store.put_object(obj("a", size=10))
        yield self.store.put_object(obj("b", size=32, locations=(("b1", "x"), ("b2", "y"))))
        totals = yield self.store.bucket_totals()
        self.assertEqual(
            totals, {"vb": BucketTotals(2, 42), "empty": BucketTotals(0, 0)}
        )

    # -- objects -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_object_round_trip(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        key = "dir/\u00e9t\u00e9 \U0001f600.txt"
        record = obj(
            key,
            size=12345678901,
            locations=(("b2", "x/1"), ("b1", "y/\U0001f600")),
            etag='"abc-3"',
            last_modified=1700000123.25,
            headers={"content-type": "text/plain; charset=utf-8", "cache-control": "no-cache"},
            metadata={"colour": "bl\u00fc", "n": "1"},
            checksums={"crc32": "AAAAAA=="},
            part_sizes=(5242880, 5242880, 100),
        )
        self.assertEqual((yield self.store.put_object(record)), [])
        self.assertEqual((yield self.store.get_object("vb", key)), record)
        self.assertIsNone((yield self.store.get_object("vb", key + "x")))
        self.assertIsNone((yield self.store.get_object("other", key)))
        long_key = "k" * 1020 + "\u00e9\u00e9"  # 1024 bytes
        yield self.store.put_object(obj(long_key))
        self.assertEqual((yield self.store.get_object("vb", long_key)).key, long_key)

    @defer.inlineCallbacks
    def test_keys_differing_only_by_case_or_trailing_space_are_distinct(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        for key in ("a", "A", "a ", "\u00e9", "e\u0301"):
            yield self.store.put_object(obj(key, size=len(key.encode())))
        page = yield self.store.list_objects("vb")
        self.assertEqual([o.key for o in page.objects], ["A", "a", "a ", "e\u0301", "\u00e9"])

    @defer.inlineCallbacks
    def test_put_object_replaces_and_returns_unused_locations(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        first = obj("k", size=100, locations=(("b1", "r1"), ("b2", "r2")))
        self.assertEqual((yield self.store.put_object(first)), [])
        yield self.assertUsage({"b1": (100, 1), "b2": (100, 1)})
        second = obj("k", size=30, locations=(("b2", "r2"), ("b3", "r3")), etag='"new"')
        replaced = yield self.store.put_object(second)
        self.assertEqual(replaced, [Location("b1", "r1")])
        self.assertEqual((yield self.store.get_object("vb", "k")), second)
        yield self.assertUsage({"b2": (30, 1), "b3": (30, 1)})

    @defer.inlineCallbacks
    def test_put_object_into_missing_bucket(self) -> Gen:
        yield self.assertFailure(self.store.put_object(obj("k")), NoSuchBucketError)
        yield self.assertUsage({})

    @defer.inlineCallbacks
    def test_delete_object(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        record = obj("k", size=7, locations=(("b1", "r1"), ("b2", "r2")))
        yield self.store.put_object(record)
        yield self.store.put_object(obj("other", size=5))
        self.assertEqual((yield self.store.delete_object("vb", "k")), record)
        self.assertIsNone((yield self.store.get_object("vb", "k")))
        self.assertIsNone((yield self.store.delete_object("vb", "k")))
        self.assertIsNone((yield self.store.delete_object("nobucket", "k")))
        yield self.assertUsage({"b1": (5, 1)})

    @defer.inlineCallbacks
    def test_locations_on(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.put_object(obj("a", locations=(("b1", "ra"), ("b2", "ra2"))))
        yield self.store.put_object(obj("b", locations=(("b1", "rb"),)))
        yield self.store.create_upload(upload("u1", "c", backend="b1"))
        self.assertEqual((yield self.store.locations_on("b1")), {"ra", "rb", "real/c/u1"})
        self.assertEqual((yield self.store.locations_on("b2")), {"ra2"})
        self.assertEqual((yield self.store.locations_on("b9")), set())

    # -- listing -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def put_keys(self, keys: list[str], bucket: str = "vb") -> Gen:
        if (yield self.store.get_bucket(bucket)) is None:
            yield self.store.create_bucket(bucket, now=0)
        for key in keys:
            yield self.store.put_object(obj(key, bucket=bucket))

    @defer.inlineCallbacks
    def test_list_in_utf8_byte_order(self) -> Gen:
        # Byte order differs from UTF-16 order (U+FF5E vs U+1F600), from locale collations
        # (case, punctuation) and from PAD SPACE collations ("a" vs "a ").
        keys = ["\U0001f600", "\uff5e", "\u00e9", "b", "a", "Z", "a b", "a-b", "ab", "a "]
        yield self.put_keys(keys)
        page = yield self.store.list_objects("vb")
        expected = sorted(keys, key=lambda k: k.encode("utf-8"))
        self.assertEqual(
            expected, ["Z", "a", "a ", "a b", "a-b", "ab", "b", "\u00e9", "\uff5e", "\U0001f600"]
        )
        self.assertEqual([o.key for o in page.objects], expected)
        self.assertEqual(page.common_prefixes, [])
        self.assertFalse(page.is_truncated)
        self.assertIsNone(page.next_marker)
        after = yield self.store.list_objects("vb", start_after="\u00e9")
        self.assertEqual([o.key for o in after.objects], ["\uff5e", "\U0001f600"])
        emoji = yield self.store.list_objects("vb", prefix="\U0001f600")
        self.assertEqual([o.key for o in emoji.objects], ["\U0001f600"])

    @defer.inlineCallbacks
    def test_list_prefix_and_delimiter(self) -> Gen:
        yield self.put_keys(
            [
                "photos/2024/a.jpg",
                "photos/2024/b.jpg",
                "photos/2025/c.jpg",
                "photos/index.html",
                "photos",
                "photos0",
                "music/x.mp3",
                "readme",
            ]
        )
        page = yield self.store.list_objects("vb", delimiter="/")
        self.assertEqual([o.key for o in page.objects], ["photos", "photos0", "readme"])
        self.assertEqual(page.common_prefixes, ["music/", "photos/"])
        page = yield self.store.list_objects("vb", prefix="photos/", delimiter="/")
        self.assertEqual([o.key for o in page.objects], ["photos/index.html"])
        self.assertEqual(page.common_prefixes, ["photos/2024/", "photos/2025/"])
        page = yield self.store.list_objects("vb", prefix="photos/20")
        self.assertEqual(
            [o.key for o in page.objects],
            ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/2025/c.jpg"],
        )
        self.assertEqual(page.objects[0].locations, (Location("b1", "real/photos/2024/a.jpg"),))
        page = yield self.store.list_objects("vb", prefix="photos", delimiter="/")
        self.assertEqual([o.key for o in page.objects], ["photos", "photos0"])
        self.assertEqual(page.common_prefixes, ["photos/"])
        page = yield self.store.list_objects("vb", delimiter="/20")
        self.assertEqual(page.common_prefixes, ["photos/20"])
        page = yield self.store.list_objects("vb", prefix="nothing")
        self.assertEqual((page.objects, page.common_prefixes, page.is_truncated), ([], [], False))
        yield self.assertFailure(self.store.list_objects("missing"), NoSuchBucketError)

    @defer.inlineCallbacks
    def test_list_paging(self) -> Gen:
        keys = [f"k{i:02d}" for i in range(7)] + ["p/1", "p/2", "q/1"]
        yield self.put_keys(keys)
        seen: list[str] = []
        marker = ""
        for _ in range(10):
            page = yield self.store.list_objects(
                "vb", delimiter="/", start_after=marker, max_keys=3
            )
            entries = [o.key for o in page.objects] + page.common_prefixes
            seen.extend(sorted(entries))
            if not page.is_truncated:
                self.assertIsNone(page.next_marker)
                break
            self.assertEqual(page.next_marker, max(entries))
            marker = page.next_marker
        self.assertEqual(seen, [f"k{i:02d}" for i in range(7)] + ["p/", "q/"])
        # Exactly full last page: not truncated.
        page = yield self.store.list_objects("vb", delimiter="/", start_after="k05", max_keys=3)
        self.assertEqual(
            ([o.key for o in page.objects], page.common_prefixes), (["k06"], ["p/", "q/"])
        )
        self.assertFalse(page.is_truncated)
        # A start_after inside a common prefix skips the rest of it.
        page = yield self.store.list_objects("vb", delimiter="/", start_after="p/1")
        self.assertEqual(([o.key for o in page.objects], page.common_prefixes), ([], ["q/"]))
        page = yield self.store.list_objects("vb", start_after="p/1")
        self.assertEqual([o.key for o in page.objects], ["p/2", "q/1"])
        page = yield self.store.list_objects("vb", max_keys=0)
        self.assertEqual((page.objects, page.is_truncated), ([], False))

    @defer.inlineCallbacks
    def test_listing_seeks_past_common_prefixes(self) -> Gen:
        """A listing with a delimiter does not read every key under each common prefix."""
        keys = [f"dir{d}/{i:03d}" for d in range(5) for i in range(100)] + ["top"]
        yield self.store.create_bucket("vb", now=0)
        with self.engine.begin() as connection:
            bucket_id = connection.execute(sa.select(model.virtual_buckets.c.id)).scalar()
            connection.execute(
                model.objects.insert(),
                [
                    {
                        "bucket_id": bucket_id,
                        "key": key,
                        "size": 1,
                        "etag": '"e"',
                        "last_modified": 0.0,
                        "headers": {},
                        "user_metadata": {},
                        "checksums": {},
                        "part_sizes": [],
                    }
                    for key in keys
                ],
            )
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "FROM objects" in statement:
                statements.append(statement)

        sa.event.listen(self.engine, "before_cursor_execute", count)
        self.addCleanup(sa.event.remove, self.engine, "before_cursor_execute", count)
        page = yield self.store.list_objects("vb", delimiter="/", max_keys=4)
        self.assertEqual(page.common_prefixes, ["dir0/", "dir1/", "dir2/", "dir3/"])
        self.assertTrue(page.is_truncated)
        self.assertEqual(page.next_marker, "dir3/")
        # Without seeking, 5-row batches over 400 keys would take ~80 queries.
        self.assertLessEqual(len(statements), 4 + 2)
        statements.clear()
        page = yield self.store.list_objects("vb", delimiter="/", start_after="dir3/")
        self.assertEqual(
            (page.common_prefixes, [o.key for o in page.objects]), (["dir4/"], ["top"])
        )
        self.assertLessEqual(len(statements), 3)

    # -- usage -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_usage_stays_exact(self) -> Gen:
        store = self.store
        yield store.create_bucket("vb", now=0)
        yield store.put_object(obj("a", size=100, locations=(("b1", "a"),)))
        yield store.put_object(obj("b", size=50, locations=(("b1", "b"), ("b2", "b"))))
        yield self.assertUsage({"b1": (150, 2), "b2": (50, 1)})
        yield store.put_object(obj("a", size=70, locations=(("b2", "a"),)))  # moved and shrunk
        yield self.assertUsage({"b1": (50, 1), "b2": (120, 2)})
        yield store.create_upload(upload("u1", "big", backend="b3"))
        yield store.put_part(PartRecord("u1", 1, '"p1"', 5000, 1.0))
        yield store.put_part(PartRecord("u1", 2, '"p2"', 3000, 1.0))
        yield self.assertUsage({"b1": (50, 1), "b2": (120, 2), "b3": (8000, 0)})
        yield store.put_part(PartRecord("u1", 2, '"p2b"', 1000, 2.0))  # part replaced
        yield self.assertUsage({"b1": (50, 1), "b2": (120, 2), "b3": (6000, 0)})
        replaced = yield store.complete_upload(
            "u1", obj("a", size=6000, locations=(("b3", "big"),), part_sizes=(5000, 1000))
        )
        self.assertEqual(replaced, [Location("b2", "a")])
        yield self.assertUsage({"b1": (50, 1), "b2": (50, 1), "b3": (6000, 1)})
        yield store.create_upload(upload("u2", "gone", backend="b1"))
        yield store.put_part(PartRecord("u2", 1, '"p"', 999, 1.0))
        yield self.assertUsage({"b1": (1049, 1), "b2": (50, 1), "b3": (6000, 1)})
        yield store.abort_upload("u2")
        yield self.assertUsage({"b1": (50, 1), "b2": (50, 1), "b3": (6000, 1)})
        yield store.delete_object("vb", "b")
        yield store.delete_object("vb", "a")
        yield self.assertUsage({})
        usage = yield store.usage()
        self.assertEqual(usage["b1"], BackendUsage("b1", 0, 0))

    # -- multipart ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_multipart_lifecycle(self) -> Gen:
        store = self.store
        yield store.create_bucket("vb", now=0)
        record = upload("u1", "big/\u00e9")
        yield store.create_upload(record)
        self.assertEqual((yield store.get_upload("u1")), record)
        self.assertIsNone((yield store.get_upload("nope")))
        for number in (3, 1, 2, 10):
            yield store.put_part(PartRecord("u1", number, f'"e{number}"', number * 100, 5.0))
        yield store.put_part(PartRecord("u1", 2, '"again"', 222, 6.0))
        parts = yield store.list_parts("u1")
        self.assertEqual(
            [(p.part_number, p.etag, p.size) for p in parts],
            [(1, '"e1"', 100), (2, '"again"', 222), (3, '"e3"', 300), (10, '"e10"', 1000)],
        )
        self.assertEqual(parts[1], PartRecord("u1", 2, '"again"', 222, 6.0))
        page = yield store.list_parts("u1", part_number_marker=1, max_parts=2)
        self.assertEqual([p.part_number for p in page], [2, 3])
        self.assertEqual((yield store.list_parts("nope")), [])
        final = obj("big/\u00e9", size=1622, part_sizes=(100, 222, 300, 1000))
        self.assertEqual((yield store.complete_upload("u1", final)), [])
        self.assertEqual((yield store.get_object("vb", "big/\u00e9")), final)
        self.assertIsNone((yield store.get_upload("u1")))
        self.assertEqual((yield store.list_parts("u1")), [])
        yield self.assertFailure(store.complete_upload("u1", final), KeyError)
        yield self.assertFailure(store.put_part(PartRecord("u1", 1, '"x"', 1, 1.0)), KeyError)
        yield store.create_upload(upload("u2", "k"))
        self.assertEqual((yield store.abort_upload("u2")), upload("u2", "k"))
        self.assertIsNone((yield store.abort_upload("u2")))
        yield self.assertUsage({"b1": (1622, 1)})

    @defer.inlineCallbacks
    def test_upload_copies_count_every_part_until_dropped_or_abandoned(self) -> Gen:
        """A replicated upload (migration 0007): every part counts on every copy's backend; a
        dropped copy releases its bytes and is queued to be aborted (the row's own backend is
        taken over by a copy); completing releases the parts of the copies left."""
        import dataclasses

        store = self.store
        yield store.create_bucket("vb", now=0)
        copies = (UploadCopy("b2", "id-2"), UploadCopy("b3", "id-3"))
        record = dataclasses.replace(upload("u1", "k"), copies=copies)
        yield store.create_upload(record)
        self.assertEqual((yield store.get_upload("u1")), record)
        self.assertEqual(record.backends, ["b1", "b2", "b3"])
        self.assertEqual(((yield store.uploads_initiated_before(1e9)))[0].copies, copies)
        page = yield store.list_uploads("vb")
        self.assertEqual(page.uploads[0].copies, copies)
        yield store.put_part(PartRecord("u1", 1, '"p1"', 100, 1.0))
        yield store.put_part(PartRecord("u1", 2, '"p2"', 30, 1.0))
        yield store.put_part(PartRecord("u1", 2, '"p2b"', 20, 2.0))  # replaced everywhere
        yield self.assertUsage({"b1": (120, 0), "b2": (120, 0), "b3": (120, 0)})
        self.assertEqual((yield store.locations_on("b3")), {"real/k/u1"})

        dropped = yield store.drop_upload_copies("u1", ["b1"], 7.0)
        self.assertEqual(dropped.released, {"b1": 120})
        self.assertEqual(
            [(q.location, q.backend_upload_id) for q in dropped.queued],
            [(Location("b1", "real/k/u1"), "backend-u1")],
        )
        now = yield store.get_upload("u1")
        self.assertEqual(
            (now.backend, now.backend_upload_id, now.copies), ("b2", "id-2", copies[1:])
        )
        yield self.assertUsage({"b2": (120, 0), "b3": (120, 0)})
        due = yield store.due_deletions(10.0)
        self.assertEqual(
            [(d.location.backend, d.backend_upload_id) for d in due], [("b1", "backend-u1")]
        )
        yield self.assertFailure(store.drop_upload_copies("u1", ["b2", "b3"], 7.0), ValueError)
        yield store.put_part(PartRecord("u1", 3, '"p3"', 5, 3.0))  # counts on b2 and b3 only
        yield self.assertUsage({"b2": (125, 0), "b3": (125, 0)})

        final = obj(
            "k", size=125, part_sizes=(100, 20, 5),
            locations=(("b2", "real/k/u1"), ("b3", "real/k/u1")),
        )  # fmt: skip
        yield store.complete_upload("u1", final)
        yield self.assertUsage({"b2": (125, 1), "b3": (125, 1)})

        yield store.create_upload(dataclasses.replace(upload("u2", "j"), copies=copies[:1]))
        yield store.put_part(PartRecord("u2", 1, '"p"', 9, 1.0))
        abandoned = yield store.abandon_upload("u2", 8.0)
        self.assertEqual(abandoned.released, {"b1": 9, "b2": 9})
        self.assertEqual(
            sorted((q.location.backend, q.backend_upload_id) for q in abandoned.queued),
            [("b1", "backend-u2"), ("b2", "id-2")],
        )
        self.assertIsNone((yield store.get_upload("u2")))
        self.assertIsNone((yield store.abandon_upload("u2", 8.0)))
        yield self.assertUsage({"b2": (125, 1), "b3": (125, 1)})

    @defer.inlineCallbacks
    def test_multipart_checksums_round_trip(self) -> Gen:
        """The upload's checksum algorithm and type, each part's checksums and the object's part
        checksums (migration 0004) come back as stored; rows without them read as none."""
        import dataclasses

        store = self.store
        yield store.create_bucket("vb", now=0)
        record = dataclasses.replace(
            upload("u1", "k"), checksum_algorithm="CRC32", checksum_type="COMPOSITE"
        )
        yield store.create_upload(record)
        self.assertEqual((yield store.get_upload("u1")), record)
        sums = {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": "A" * 27 + "="}
        yield store.put_part(PartRecord("u1", 1, '"e1"', 10, 5.0, sums))
        yield store.put_part(PartRecord("u1", 2, '"e2"', 20, 5.0))
        parts = yield store.list_parts("u1")
        self.assertEqual([p.checksums for p in parts], [sums, {}])
        final = dataclasses.replace(
            obj("k", size=30, part_sizes=(10, 20)),
            checksums={"x-amz-checksum-crc32": "AAAAAA==-2", "x-amz-checksum-type": "COMPOSITE"},
            part_checksums=("AAAAAA==", "AAAAAQ=="),
        )
        yield store.complete_upload("u1", final)
        self.assertEqual((yield store.get_object("vb", "k")), final)
        yield store.create_upload(upload("u2", "plain"))
        self.assertEqual((yield store.get_upload("u2")).checksum_algorithm, None)
        yield store.put_object(obj("single"))
        self.assertEqual((yield store.get_object("vb", "single")).part_checksums, ())

    @defer.inlineCallbacks
    def test_create_upload_in_missing_bucket(self) -> Gen:
        yield self.assertFailure(self.store.create_upload(upload("u1", "k")), NoSuchBucketError)

    @defer.inlineCallbacks
    def test_list_uploads(self) -> Gen:
        store = self.store
        yield store.create_bucket("vb", now=0)
        for upload_id, key in [
            ("u2", "a"),
            ("u1", "a"),
            ("u3", "b"),
            ("u4", "dir/x"),
            ("u5", "dir/y"),
            ("u6", "\u00e9"),
        ]:
            yield store.create_upload(upload(upload_id, key))
        page = yield store.list_uploads("vb")
        self.assertEqual(
            [(u.key, u.upload_id) for u in page.uploads],
            [
                ("a", "u1"),
                ("a", "u2"),
                ("b", "u3"),
                ("dir/x", "u4"),
                ("dir/y", "u5"),
                ("\u00e9", "u6"),
            ],
        )
        self.assertFalse(page.is_truncated)
        page = yield store.list_uploads("vb", delimiter="/", max_uploads=3)
        self.assertEqual(
            [(u.key, u.upload_id) for u in page.uploads], [("a", "u1"), ("a", "u2"), ("b", "u3")]
        )
        self.assertTrue(page.is_truncated)
        self.assertEqual((page.next_key_marker, page.next_upload_id_marker), ("b", "u3"))
        page = yield store.list_uploads(
            "vb", delimiter="/", key_marker="b", upload_id_marker="u3", max_uploads=1
        )
        self.assertEqual((page.uploads, page.common_prefixes), ([], ["dir/"]))
        self.assertEqual(
            (page.is_truncated, page.next_key_marker, page.next_upload_id_marker),
            (True, "dir/", None),
        )
        page = yield store.list_uploads("vb", delimiter="/", key_marker="dir/")
        self.assertEqual([u.upload_id for u in page.uploads], ["u6"])
        self.assertFalse(page.is_truncated)
        page = yield store.list_uploads("vb", key_marker="a", upload_id_marker="u1")
        self.assertEqual([u.upload_id for u in page.uploads], ["u2", "u3", "u4", "u5", "u6"])
        page = yield store.list_uploads("vb", key_marker="a")
        self.assertEqual([u.upload_id for u in page.uploads], ["u3", "u4", "u5", "u6"])
        page = yield store.list_uploads("vb", upload_id_marker="u9")  # ignored without key marker
        self.assertEqual(len(page.uploads), 6)
        page = yield store.list_uploads("vb", prefix="dir/")
        self.assertEqual([u.upload_id for u in page.uploads], ["u4", "u5"])
        yield self.assertFailure(store.list_uploads("missing"), NoSuchBucketError)

    @defer.inlineCallbacks
    def test_uploads_initiated_before(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_bucket("other", now=0)
        yield self.store.create_upload(upload("new", "k", initiated=300.0))
        yield self.store.create_upload(upload("old", "k", initiated=100.0))
        yield self.store.create_upload(UploadRecord("older", "other", "k", "b1", "r", "bid", 50.0))
        old = yield self.store.uploads_initiated_before(200.0)
        self.assertEqual(
            [(u.upload_id, u.bucket) for u in old], [("older", "other"), ("old", "vb")]
        )

    # -- counters ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_operation_counters(self) -> Gen:
        store = self.store
        yield store.count_operations("b1", "2026-01", class_a=2, bytes_in=100)
        yield store.count_operations("b1", "2026-01", class_b=5, bytes_out=7)
        yield store.count_operations("b2", "2026-01", class_a=1)
        yield store.count_operations("b1", "2026-02", class_b=1)
        yield store.count_operations("b1", "2026-03")  # nothing to add: no row
        counts = yield store.operation_counts("2026-01")
        self.assertEqual(set(counts), {"b1", "b2"})
        b1 = counts["b1"]
        self.assertEqual((b1.class_a, b1.class_b, b1.bytes_in, b1.bytes_out), (2, 5, 100, 7))
        self.assertEqual((yield store.operation_counts("2026-03")), {})
        history = yield store.operation_history()
        self.assertEqual(
            [(c.month, c.backend) for c in history],
            [("2026-01", "b1"), ("2026-01", "b2"), ("2026-02", "b1")],
        )
        history = yield store.operation_history("b1", first_month="2026-02")
        self.assertEqual([(c.month, c.class_b) for c in history], [("2026-02", 1)])

    # -- concurrency -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_concurrent_put_object_of_one_key(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        for round_ in range(8):
            key = f"race{round_ % 2}"  # alternately a new key and (from round 2) an existing one
            before = yield self.store.get_object("vb", key)
            records = [
                obj(key, size=10 + i, locations=((f"b{i}", f"{key}/{round_}/{i}"),), etag=f'"{i}"')
                for i in range(2)
            ]
            results = yield self.concurrently(
                [functools.partial(self.store.put_object, record) for record in records]
            )
            for result in results:
                self.assertTrue(isinstance(result, list), result)
            final = yield self.store.get_object("vb", key)
            winner = records.index(final)
            loser = 1 - winner
            # The loser committed first: the winner replaced it and was handed its bytes.
            self.assertEqual(results[winner], list(records[loser].locations))
            expected_loser = [] if before is None else list(before.locations)
            self.assertEqual(results[loser], expected_loser)
        self.assertEqual(
            {b: u for b, u in recomputed_usage(self.engine).items()},
            {
                name: (u.used_bytes, u.object_count)
                for name, u in (yield self.store.usage()).items()
                if (u.used_bytes, u.object_count) != (0, 0)
            },
        )

    @defer.inlineCallbacks
    def test_concurrent_counter_increments(self) -> Gen:
        calls = [
            (lambda: self.store.count_operations("b1", "2026-05", class_a=1, bytes_in=3))
            for _ in range(16)
        ]
        results = yield self.concurrently(calls)
        self.assertEqual(results, [None] * 16)
        counts = yield self.store.operation_counts("2026-05")
        self.assertEqual((counts["b1"].class_a, counts["b1"].bytes_in), (16, 48))

    @defer.inlineCallbacks
    def test_concurrent_parts_and_deletes_keep_usage_exact(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_upload(upload("u1", "big"))
        for i in range(4):
            yield self.store.put_object(obj(f"o{i}", size=1000, locations=(("b1", f"o{i}"),)))
        calls: list[Callable[[], defer.Deferred[Any]]] = []
        for i in range(4):
            part = PartRecord("u1", i + 1, '"e"', 10, 0.0)
            calls.append(functools.partial(self.store.put_part, part))
            calls.append(functools.partial(self.store.delete_object, "vb", f"o{i}"))
        results = yield self.concurrently(calls)
        self.assertFalse([r for r in results if isinstance(r, Exception)])
        yield self.assertUsage({"b1": (40, 0)})


    # -- conditional commits, queued deletions, kept completions -----------------------------

    @defer.inlineCallbacks
    def test_create_only_commits_race_and_exactly_one_wins(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        create_only = Condition(if_none_match=ANY)
        calls: list[Callable[[], defer.Deferred[Any]]] = [
            functools.partial(
                self.store.commit_object,
                obj("lock", size=i + 1, locations=(("b1", f"lock~{i}"),)),
                create_only,
            )
            for i in range(6)
        ]
        results = yield self.concurrently(calls)
        winners = [r for r in results if isinstance(r, Replacement)]
        self.assertEqual(len(winners), 1, results)
        self.assertTrue(
            all(isinstance(r, PreconditionFailedError) for r in results if r not in winners)
        )
        record = yield self.store.get_object("vb", "lock")
        yield self.assertUsage({"b1": (record.size, 1)})

    @defer.inlineCallbacks
    def test_if_match_commits_and_deletes(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.assertFailure(
            self.store.commit_object(obj("k"), Condition(if_match='"etag"')), ObjectMissingError
        )
        yield self.store.commit_object(obj("k", etag='"one"'))
        yield self.assertFailure(
            self.store.commit_object(obj("k", etag='"two"'), Condition(if_match='"stale"')),
            PreconditionFailedError,
        )
        yield self.store.commit_object(
            obj("k", etag='"two"', locations=(("b1", "k2"),)), Condition(if_match="one")
        )
        yield self.assertFailure(
            self.store.remove_object("vb", "k", Condition(if_match='"one"')),
            PreconditionFailedError,
        )
        removed = yield self.store.remove_object("vb", "k", Condition(if_match='"two"'))
        self.assertEqual(removed.to_delete, [Location("b1", "k2")])
        yield self.assertFailure(
            self.store.remove_object("vb", "k", Condition(if_match='"two"')), ObjectMissingError
        )

    @defer.inlineCallbacks
    def test_replaced_locations_are_queued_until_forgotten(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.commit_object(obj("k", locations=(("b1", "old"),)))
        replaced = yield self.store.commit_object(
            obj("k", locations=(("b2", "new"),)), delete_after=500.0
        )
        self.assertEqual(replaced.to_delete, [Location("b1", "old")])
        self.assertEqual(len(replaced.pending_ids), 1)
        self.assertEqual((yield self.store.due_deletions(499.0)), [])
        (due,) = yield self.store.due_deletions(500.0)
        self.assertEqual((due.id, due.location), (replaced.pending_ids[0], Location("b1", "old")))
        self.assertIn("old", (yield self.store.locations_on("b1")))  # not an orphan yet
        yield self.store.forget_deletions([due.id])
        self.assertEqual((yield self.store.due_deletions(1e18)), [])
        self.assertEqual((yield self.store.locations_on("b1")), set())
        self.assertEqual((yield self.store.objects_on("b2")), {"new": (10, '"etag"')})

    @defer.inlineCallbacks
    def test_forgetting_any_number_of_deletions_forgets_those_only(self) -> Gen:
        locations = [Location("b1", f"gone{n}") for n in range(160)]
        ids = yield self.store.queue_deletions(locations, 0.0)
        forgotten: set[int] = set()
        for batch in ([ids[0]], ids[1:4], ids[4:9], ids[9:26], ids[26:100], ids[100:150:2]):
            yield self.store.forget_deletions(batch)
            forgotten.update(batch)
            left = {due.id for due in (yield self.store.due_deletions(1.0, 1000))}
            self.assertEqual(left, set(ids) - forgotten)
        yield self.store.forget_deletions([])

    @defer.inlineCallbacks
    def test_a_completed_upload_keeps_its_result(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_upload(upload("u1", "big"))
        final = obj("big", size=7, etag='"abc-1"', last_modified=200.0)
        yield self.store.finish_upload("u1", final, Condition(if_none_match=ANY))
        done = yield self.store.completed_upload("u1")
        self.assertEqual((done.bucket, done.key, done.etag, done.size), ("vb", "big", '"abc-1"', 7))
        yield self.assertFailure(self.store.finish_upload("u1", final), KeyError)
        self.assertEqual((yield self.store.forget_completed_uploads(200.0)), 0)
        self.assertEqual((yield self.store.forget_completed_uploads(200.5)), 1)
        self.assertIsNone((yield self.store.completed_upload("u1")))


class SQLiteInlineStoreTests(StoreTests, unittest.TestCase):
    pass


class SQLiteThreadPoolStoreTests(StoreTests, unittest.TestCase):
    """The same suite through the real database thread pool and the reactor."""

    inline = False

    def test_calls_run_in_database_threads(self) -> defer.Deferred[None]:
        seen: list[str] = []

        def where(connection: sa.Connection) -> None:
            seen.append(threading.current_thread().name)

        d = self.store.pool.do(where)
        d.addCallback(lambda _: self.assertEqual(len(seen), 1))
        d.addCallback(lambda _: self.assertFalse(seen[0] == threading.current_thread().name))
        return d


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresStoreTests(StoreTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLStoreTests(StoreTests, unittest.TestCase):
    pass


def test_the_store_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.store`` keeps working (a few calls; its figures are not judged here)."""
    from bench import store as bench_store

    assert bench_store.main(["--calls", "5", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(" ")[0].rstrip(",") for line in lines]
    assert names == ["get_object", "commit_object", "commit_object"]
    assert all(line.endswith("µs CPU per call") for line in lines)
