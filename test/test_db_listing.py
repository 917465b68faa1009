"""Property tests: paging through listings gives exactly what a plain model of S3 gives.

For random key sets (with multi-byte characters, so UTF-8 byte order matters), prefixes,
delimiters, starting markers and page sizes, every page is checked against the model, and so is
the concatenation of the pages obtained by following ``next_marker``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import ObjectRecord, UploadRecord
from s3balance.db.store import MetadataStore
from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, fresh_store
from test.test_db_store import server_database

# Characters whose UTF-8 byte order differs from UTF-16 order and from locale collations.
ALPHABET = ["a", "B", "b", "/", "-", " ", "\u00e9", "\uff5e", "\U0001f600"]
keys_strategy = st.text(alphabet=ALPHABET, min_size=1, max_size=5)
prefix_strategy = st.text(alphabet=ALPHABET, max_size=2)
delimiter_strategy = st.sampled_from(["", "/", "\u00e9", "a/", "\U0001f600"])


def utf8(text: str) -> bytes:
    return text.encode("utf-8")


def common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if delimiter and delimiter in key[len(prefix) :]:
        rest = key[len(prefix) :]
        return prefix + rest[: rest.index(delimiter) + len(delimiter)]
    return None


def model_listing(keys: set[str], prefix: str, delimiter: str, start_after: str) -> list[str]:
    """What S3 lists: keys (or their common prefix) after ``start_after``, in byte order; a
    common prefix ``start_after`` falls inside was listed already."""
    entries: set[str] = set()
    for key in keys:
        if not key.startswith(prefix) or utf8(key) <= utf8(start_after):
            continue
        rolled = common_prefix(key, prefix, delimiter)
        if rolled is None:
            entries.add(key)
        elif not start_after.startswith(rolled):
            entries.add(rolled)
    return sorted(entries, key=utf8)


def page_entries(objects: list[Any], prefixes: list[str], key: Any = lambda o: o.key) -> list[str]:
    return sorted([key(o) for o in objects] + prefixes, key=utf8)


_bucket_numbers = itertools.count()


class ListingPropertyTests:
    """Inline pool only: hypothesis drives the examples synchronously."""

    db_url: str | None = None
    max_examples = 120
    store: MetadataStore

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url)

    def result(self, deferred: defer.Deferred[Any]) -> Any:
        return self.successResultOf(deferred)  # type: ignore[attr-defined]

    def new_bucket(self) -> str:
        name = f"b{next(_bucket_numbers)}"
        assert self.result(self.store.create_bucket(name, now=0))
        return name

    def check_objects(
        self, keys: set[str], prefix: str, delimiter: str, start_after: str, page_size: int
    ) -> None:
        bucket = self.new_bucket()
        for key in keys:
            self.result(self.store.put_object(ObjectRecord(bucket, key, 1, '"e"', 0.0)))
        expected = model_listing(keys, prefix, delimiter, start_after)
        listed: list[str] = []
        marker = start_after
        for _ in range(len(expected) + 2):
            page = self.result(
                self.store.list_objects(bucket, prefix, delimiter, marker, page_size)
            )
            entries = page_entries(page.objects, page.common_prefixes)
            # Each page is the model's next slice, and says exactly whether more follow.
            remaining = model_listing(keys, prefix, delimiter, marker)
            assert entries == remaining[:page_size]
            assert page.is_truncated == (len(remaining) > page_size)
            listed.extend(entries)
            if not page.is_truncated:
                assert page.next_marker is None
                break
            assert page.next_marker == entries[-1]
            marker = page.next_marker
        else:
            raise AssertionError("paging did not end")
        assert listed == expected

    def check_uploads(
        self,
        uploads: set[tuple[str, str]],
        prefix: str,
        delimiter: str,
        page_size: int,
    ) -> None:
        bucket = self.new_bucket()
        for key, upload_id in uploads:
            record = UploadRecord(f"{bucket}:{upload_id}:{key}", bucket, key, "b1", "r", "x", 0.0)
            self.result(self.store.create_upload(record))

        # The model: (key, upload id) pairs in byte order, keys rolled up by the delimiter.
        everything = sorted(
            ((key, f"{bucket}:{upload_id}:{key}") for key, upload_id in uploads),
            key=lambda pair: (utf8(pair[0]), utf8(pair[1])),
        )
        expected: list[Any] = []
        for key, upload_id in everything:
            if not key.startswith(prefix):
                continue
            rolled = common_prefix(key, prefix, delimiter)
            entry: Any = rolled if rolled is not None else (key, upload_id)
            if entry not in expected:
                expected.append(entry)
        listed: list[Any] = []
        key_marker = upload_id_marker = ""
        for _ in range(len(expected) + 2):
            page = self.result(
                self.store.list_uploads(
                    bucket, prefix, delimiter, key_marker, upload_id_marker, page_size
                )
            )
            ordered = sorted(
                [(u.key, u.upload_id) for u in page.uploads] + page.common_prefixes,
                key=lambda e: utf8(e) if isinstance(e, str) else utf8(e[0]) + b"\0" + utf8(e[1]),
            )
            listed.extend(ordered)
            assert len(ordered) <= page_size
            if not page.is_truncated:
                break
            assert len(ordered) == page_size
            key_marker = page.next_key_marker or ""
            upload_id_marker = page.next_upload_id_marker or ""
        else:
            raise AssertionError("paging did not end")
        assert listed == expected


def _settings(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def property_tests(max_examples: int) -> type:
    class Tests(ListingPropertyTests):
        @_settings(max_examples)
        @given(
            keys=st.sets(keys_strategy, max_size=25),
            prefix=prefix_strategy,
            delimiter=delimiter_strategy,
            start_after=st.one_of(st.just(""), keys_strategy),
            page_size=st.integers(min_value=1, max_value=6),
        )
        def test_list_objects_matches_model(
            self, keys: set[str], prefix: str, delimiter: str, start_after: str, page_size: int
        ) -> None:
            self.check_objects(keys, prefix, delimiter, start_after, page_size)

        @_settings(max(10, max_examples // 3))
        @given(
            uploads=st.sets(
                st.tuples(keys_strategy, st.sampled_from(["u1", "u2", "U3"])), max_size=15
            ),
            prefix=prefix_strategy,
            delimiter=delimiter_strategy,
            page_size=st.integers(min_value=1, max_value=4),
        )
        def test_list_uploads_matches_model(
            self, uploads: set[tuple[str, str]], prefix: str, delimiter: str, page_size: int
        ) -> None:
            self.check_uploads(uploads, prefix, delimiter, page_size)

    return Tests


class SQLiteListingTests(property_tests(120), unittest.TestCase):  # type: ignore[misc]
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresListingTests(property_tests(30), unittest.TestCase):  # type: ignore[misc]
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLListingTests(property_tests(30), unittest.TestCase):  # type: ignore[misc]
    pass
