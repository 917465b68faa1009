"""ETag spelling: one set of rules for the front, the gateway and every backend."""

from __future__ import annotations

import hashlib

from s3balance.etags import bare_etag, multipart_etag, multipart_md5_etag, quoted_etag


def test_quoted_etag_adds_missing_quotes_and_keeps_weak_etags() -> None:
    assert quoted_etag("abc") == '"abc"'
    assert quoted_etag(' "abc" ') == '"abc"'
    assert quoted_etag('"abc') == '"abc"'
    assert quoted_etag('W/"abc"') == 'W/"abc"'


def test_multipart_etag_from_part_etags_or_md5s_agree() -> None:
    parts = [hashlib.md5(b"one").hexdigest(), hashlib.md5(b"two").hexdigest()]
    expected = multipart_md5_etag(parts)
    joined = hashlib.md5(b"".join(bytes.fromhex(p) for p in parts)).hexdigest()
    assert expected == f'"{joined}-2"'
    assert multipart_etag([f'"{p.upper()}"' for p in parts]) == expected
    assert multipart_etag(['"not-an-md5"']) is None
    assert bare_etag(' "ABC" ') == "abc"
