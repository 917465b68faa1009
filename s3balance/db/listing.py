"""Paging through keys in UTF-8 byte order with S3's prefix, delimiter and marker rules.

Shared by object listings and multipart upload listings.  A position is a :class:`Cursor`: rows
strictly after a key (or a (key, upload id) pair), or from a start (inclusive bytes), whichever is
later.  Keys under a delimiter roll up into common prefixes, which :func:`scan` seeks past instead
of reading every key below them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

#: Rows read per listing query at most.
LIST_BATCH = 1000


class Cursor:
    __slots__ = ("start", "after_key", "after_upload_id")

    def __init__(
        self,
        start: bytes = b"",
        after_key: bytes | None = None,
        after_upload_id: bytes | None = None,
    ) -> None:
        self.start = start
        self.after_key = after_key
        self.after_upload_id = after_upload_id

    def condition(self, key_column: Any, upload_id_column: Any = None) -> Any:
        start = key_column >= self.start
        if self.after_key is None or self.after_key < self.start:
            return start
        if self.after_upload_id is None or upload_id_column is None:
            return key_column > self.after_key
        return sa.or_(
            key_column > self.after_key,
            sa.and_(key_column == self.after_key, upload_id_column > self.after_upload_id),
        )


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None when
    there is none: the prefix is empty or all 0xFF)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def prefix_upper_bound(key_column: Any, prefix: str) -> Any:
    """The condition keeping ``key_column`` below every key that does not start with
    ``prefix``."""
    upper = successor(prefix.encode("utf-8"))
    return sa.true() if upper is None else key_column < upper


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    index = key.find(delimiter, len(prefix))
    if index < 0:
        return None
    return key[: index + len(delimiter)]


def first_cursor(prefix: str, delimiter: str, marker: str, marker_upload_id: str) -> Cursor:
    """Where a page starting after ``marker`` (and ``marker_upload_id``) begins."""
    start = prefix.encode("utf-8")
    marker_prefix = _common_prefix(marker, prefix, delimiter) if marker.startswith(prefix) else None
    if marker_prefix is not None:
        # The marker is inside a common prefix, which the previous page returned: skip it all.
        skip_to = successor(marker_prefix.encode("utf-8"))
        assert skip_to is not None  # it ends with the delimiter, never 0xFF bytes
        return Cursor(start=max(start, skip_to))
    if not marker:
        return Cursor(start=start)
    return Cursor(
        start=start,
        after_key=marker.encode("utf-8"),
        after_upload_id=marker_upload_id.encode("utf-8") if marker_upload_id else None,
    )


def scan(
    fetch: Callable[[Cursor, int], list[Any]],
    cursor_after: Callable[[Any], Cursor],
    prefix: str,
    delimiter: str,
    cursor: Cursor,
    limit: int,
) -> tuple[list[Any], bool]:
    """Walk rows in order, rolling keys up into common prefixes (``str`` entries).

    Each query asks for what the page still needs plus one (to learn truncation).  After a common
    prefix, the next query seeks past every key under it instead of reading them, and each query
    yields at least one new entry, so a page takes at most ``limit + 2`` queries.

    :returns: the entries (rows and common prefixes) and whether more follow.
    """
    entries: list[Any] = []
    if limit <= 0:
        return entries, False
    while True:
        wanted = min(limit - len(entries) + 1, LIST_BATCH)
        rows = fetch(cursor, wanted)
        open_prefix: str | None = None
        last_row = None
        for row in rows:
            last_row = row
            if open_prefix is not None and row.key.startswith(open_prefix):
                continue
            if len(entries) == limit:
                return entries, True
            open_prefix = _common_prefix(row.key, prefix, delimiter)
            entries.append(open_prefix if open_prefix is not None else row)
        if len(rows) < wanted:
            return entries, False
        if open_prefix is not None:
            skip_to = successor(open_prefix.encode("utf-8"))
            assert skip_to is not None
            cursor = Cursor(start=skip_to)
        else:
            cursor = cursor_after(last_row)
