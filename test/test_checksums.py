"""The checksum catalogue: known answers for every algorithm, the CRC combination, S3's
COMPOSITE and FULL_OBJECT values of a multipart object, and the multipart type rules."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from s3balance.auth import checksums
from s3balance.auth.checksums import (
    ALGORITHMS,
    COMPOSITE,
    FULL_OBJECT,
    by_header,
    by_name,
    combine_full_object,
    composite,
)

CHECK_INPUT = b"123456789"

#: The catalogue's "check" values (CRC of b"123456789") for each CRC.
CHECK_VALUES = {
    "crc32": 0xCBF43926,
    "crc32c": 0xE3069283,
    "crc64nvme": 0xAE8B14860A799888,
}
_POLYNOMIALS = {  # reflected polynomial, width
    "crc32": (0xEDB88320, 32),
    "crc32c": (0x82F63B78, 32),
    "crc64nvme": (0x9A6C9329AC4BC9B5, 64),
}


def reference_crc(name: str, data: bytes) -> bytes:
    """A bit-at-a-time reflected CRC (init and xorout all ones): slow, obviously right."""
    poly, width = _POLYNOMIALS[name]
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return ((crc ^ mask) & mask).to_bytes(width // 8, "big")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("name", sorted(CHECK_VALUES))
def test_crc_check_values(name: str) -> None:
    algorithm = ALGORITHMS[name]
    expected = CHECK_VALUES[name].to_bytes(algorithm.digest_size, "big")
    assert reference_crc(name, CHECK_INPUT) == expected
    assert algorithm.of(CHECK_INPUT) == expected


@pytest.mark.parametrize("name", sorted(CHECK_VALUES))
def test_crc_matches_the_reference_streamed_in_pieces(name: str) -> None:
    data = os.urandom(3000)
    running = ALGORITHMS[name].new()
    for start in range(0, len(data), 701):
        running.update(data[start : start + 701])
    assert running.digest() == reference_crc(name, data)
    assert running.b64digest() == b64(reference_crc(name, data))


def test_hashes_and_crc32_match_the_standard_library() -> None:
    data = os.urandom(5000)
    assert ALGORITHMS["sha1"].of(data) == hashlib.sha1(data).digest()
    assert ALGORITHMS["sha256"].of(data) == hashlib.sha256(data).digest()
    assert ALGORITHMS["crc32"].of(data) == zlib.crc32(data).to_bytes(4, "big")


def test_lookup_by_name_and_header() -> None:
    assert by_name(" crc64NVME ") is ALGORITHMS["crc64nvme"]
    assert by_header("X-Amz-Checksum-CRC32C") is ALGORITHMS["crc32c"]
    assert by_header("x-amz-checksum-type") is None
    assert by_header("content-md5") is None
    assert by_name("md5") is None
    assert [a.name for a in ALGORITHMS.values()] == [
        "CRC64NVME", "CRC32", "CRC32C", "SHA1", "SHA256"
    ]
    assert ALGORITHMS["crc64nvme"].xml_element == "ChecksumCRC64NVME"
    assert ALGORITHMS["sha256"].header == "x-amz-checksum-sha256"


def test_decode_checks_length_and_alphabet() -> None:
    crc32 = ALGORITHMS["crc32"]
    assert crc32.decode("AAAAAA==") == bytes(4)
    assert crc32.decode("AAAAAAAAAAA=") is None  # 8 bytes
    assert crc32.decode("!!!!") is None
    assert ALGORITHMS["crc64nvme"].decode(b64(bytes(8))) == bytes(8)


@pytest.mark.parametrize("name", sorted(CHECK_VALUES))
def test_combine_equals_the_crc_of_the_concatenation(name: str) -> None:
    algorithm = ALGORITHMS[name]
    for first_length, second_length in [(0, 0), (0, 5), (5, 0), (1, 1), (1000, 1), (77, 4096)]:
        first, second = os.urandom(first_length), os.urandom(second_length)
        combined = algorithm.combine(algorithm.of(first), algorithm.of(second), second_length)
        assert combined == reference_crc(name, first + second)


def test_hashes_cannot_be_combined() -> None:
    with pytest.raises(TypeError):
        ALGORITHMS["sha256"].combine(bytes(32), bytes(32), 1)


@pytest.mark.parametrize("name", sorted(CHECK_VALUES))
def test_full_object_checksum_of_parts_is_the_whole_object_crc(name: str) -> None:
    algorithm = ALGORITHMS[name]
    parts = [os.urandom(size) for size in (5 << 10, 5 << 10, 123, 1)]
    value = combine_full_object(algorithm, [(algorithm.of(p), len(p)) for p in parts])
    assert value == b64(reference_crc(name, b"".join(parts)))
    assert combine_full_object(algorithm, []) == b64(reference_crc(name, b""))


def test_composite_is_the_checksum_of_the_part_checksums() -> None:
    parts = [b"a" * 10, b"b" * 20, b"c"]
    sha256 = ALGORITHMS["sha256"]
    digests = [hashlib.sha256(p).digest() for p in parts]
    expected = b64(hashlib.sha256(b"".join(digests)).digest()) + "-3"
    assert composite(sha256, [sha256.of(p) for p in parts]) == expected
    crc32 = ALGORITHMS["crc32"]
    crcs = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    assert composite(crc32, crcs) == b64(zlib.crc32(b"".join(crcs)).to_bytes(4, "big")) + "-3"


def test_multipart_type_rules() -> None:
    assert ALGORITHMS["crc64nvme"].multipart_types == {FULL_OBJECT}
    assert ALGORITHMS["crc64nvme"].default_multipart_type == FULL_OBJECT
    for name in ("crc32", "crc32c"):
        assert ALGORITHMS[name].multipart_types == {FULL_OBJECT, COMPOSITE}
        assert ALGORITHMS[name].default_multipart_type == COMPOSITE
    for name in ("sha1", "sha256"):
        assert ALGORITHMS[name].multipart_types == {COMPOSITE}
    assert checksums.CHECKSUM_TYPES == (FULL_OBJECT, COMPOSITE)


def test_awscrt_is_loaded_only_when_an_algorithm_needs_it() -> None:
    """Loading awscrt costs ~7 MiB of resident memory: CRC32 and the hashes never load it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from s3balance.web import resource, checksumming\n"
        "from s3balance.auth.checksums import ALGORITHMS\n"
        "for name in ('crc32', 'sha1', 'sha256'):\n"
        "    ALGORITHMS[name].of(b'x')\n"
        "assert 'awscrt' not in sys.modules, 'loaded too early'\n"
        "ALGORITHMS['crc64nvme'].of(b'x')\n"
        "assert 'awscrt' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, cwd=os.getcwd()
    )
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_is_taken_as_a_header_and_as_a_trailer(name: str) -> None:
    """The header check and the aws-chunked trailer check read the same table, so no algorithm
    can be accepted by one and refused by the other (CRC32C once was, as a header)."""
    from s3balance.auth.chunked import AwsChunkedDecoder
    from s3balance.web.filters import ChecksumFilter

    algorithm = ALGORITHMS[name]
    value = b64(algorithm.of(CHECK_INPUT))
    header = ChecksumFilter(algorithm.name, value)
    header.feed(CHECK_INPUT)
    header.finish()
    assert header.value_b64 == value
    decoder = AwsChunkedDecoder(
        signed_chunks=False, trailer=True, expected_trailer=algorithm.header.upper()
    )
    assert decoder.trailer_algorithm is algorithm


def test_no_module_but_the_catalogue_names_an_algorithm() -> None:
    """Every place that meets a checksum looks it up in ``auth/checksums.py``: a string naming an
    algorithm (``"crc32c"``, ``"x-amz-checksum-sha1"``, ``"ChecksumSHA256"``) anywhere else in
    the package would be a second catalogue."""
    import ast
    from pathlib import Path

    package = Path(checksums.__file__).resolve().parent.parent
    names: set[str] = set()
    for algorithm in ALGORITHMS.values():
        names |= {algorithm.name.lower(), algorithm.header, algorithm.xml_element.lower()}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(checksums.__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.strip().lower() in names:
                    found.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
    assert found == []
