"""Body filters: each must reject exactly the bodies S3 rejects, with S3's error code."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from s3balance.errors import S3Error
from s3balance.web.filters import (
    ChecksumFilter,
    ContentMD5Filter,
)
from s3balance.web.requestbody import RequestBody

pytestmark = pytest.mark.timeout(10)

BODY = [b"hello ", b"streaming ", b"world"]
WHOLE = b"".join(BODY)


def run(body_filter, chunks=BODY) -> bytes:  # type: ignore[no-untyped-def]
    out = b"".join(body_filter.feed(chunk) for chunk in chunks)
    return out + body_filter.finish()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(S3Error) as info:
        call()
    return info.value.code


def test_content_md5_passes_bytes_through_and_accepts_match() -> None:
    assert run(ContentMD5Filter(b64(hashlib.md5(WHOLE).digest()))) == WHOLE


def test_content_md5_mismatch_is_bad_digest_at_finish() -> None:
    body_filter = ContentMD5Filter(b64(hashlib.md5(b"other").digest()))
    for chunk in BODY:
        body_filter.feed(chunk)
    assert code_of(body_filter.finish) == "BadDigest"


@pytest.mark.parametrize("value", ["not base64!", b64(b"short"), b64(b"x" * 20), ""])
def test_content_md5_malformed_header_is_invalid_digest(value: str) -> None:
    assert code_of(lambda: ContentMD5Filter(value)) == "InvalidDigest"


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("crc32", zlib.crc32(WHOLE).to_bytes(4, "big")),
        ("CRC32", zlib.crc32(WHOLE).to_bytes(4, "big")),
        ("sha1", hashlib.sha1(WHOLE).digest()),
        ("sha256", hashlib.sha256(WHOLE).digest()),
    ],
)
def test_checksum_computes_the_value_s3_expects(algorithm: str, digest: bytes) -> None:
    computing = ChecksumFilter(algorithm, None)
    assert run(computing) == WHOLE
    assert computing.value_b64 == b64(digest)
    assert run(ChecksumFilter(algorithm, b64(digest))) == WHOLE


def test_checksum_mismatch_is_bad_digest_and_malformed_value_refused() -> None:
    wrong = ChecksumFilter("crc32", b64(zlib.crc32(b"other").to_bytes(4, "big")))
    for chunk in BODY:
        wrong.feed(chunk)
    assert code_of(wrong.finish) == "BadDigest"
    assert code_of(lambda: ChecksumFilter("sha256", b64(b"1234"))) == "InvalidRequest"
    assert code_of(lambda: ChecksumFilter("md4", None)) == "InvalidRequest"


# Known answers for WHOLE computed independently (crcmod-style definitions: CRC-32C is
# Castagnoli, reflected; CRC-64/NVME is reflected poly 0xAD93D23594C93659).
@pytest.mark.parametrize("algorithm", ["crc32c", "crc64nvme"])
def test_crc32c_and_crc64nvme_are_served(algorithm: str) -> None:
    from test.test_checksums import reference_crc

    digest = reference_crc(algorithm, WHOLE)
    computing = ChecksumFilter(algorithm, None)
    assert run(computing) == WHOLE
    assert computing.value_b64 == b64(digest)
    assert run(ChecksumFilter(algorithm, b64(digest))) == WHOLE
    wrong = ChecksumFilter(algorithm, b64(bytes(len(digest))))
    for chunk in BODY:
        wrong.feed(chunk)
    assert code_of(wrong.finish) == "BadDigest"


def test_the_request_body_holds_its_declared_length_after_the_filters() -> None:
    """The one length check of a streamed body (a filter repeated it until the length guard
    became one): the excess is refused as it arrives, a short body at its end, and neither
    reaches the consumer whole."""
    for declared, code in ((len(WHOLE) + 1, "IncompleteBody"), (len(WHOLE) - 1, "InvalidRequest")):
        body = RequestBody(declared, clock=Clock(), read_timeout=10.0)
        body.add_filter(ContentMD5Filter(b64(hashlib.md5(WHOLE).digest())))
        written: list[bytes] = []
        failures: list[Failure] = []
        body.startProducing(_Consumer(written)).addErrback(failures.append)
        for chunk in BODY:
            body.receive(chunk)
        body.end_of_input()
        assert [failure.value.code for failure in failures] == [code]
        assert len(b"".join(written)) < min(declared, len(WHOLE))


class _Consumer:
    def __init__(self, written: list[bytes]) -> None:
        self.write = written.append


def test_checksum_taken_from_a_verifying_filter_is_not_computed_again() -> None:
    value = b64(hashlib.sha256(WHOLE).digest())
    taken = ChecksumFilter("sha256", None, verified=lambda: value)
    assert taken._running is None  # nothing computed here
    assert run(taken) == WHOLE
    assert taken.value_b64 == value
    missing = ChecksumFilter("sha256", None, verified=lambda: None)
    for chunk in BODY:
        missing.feed(chunk)
    assert code_of(missing.finish) == "IncompleteBody"
