"""The one catalogue of the checksums S3 has: how each is computed, spelt and combined.

Every place that meets an ``x-amz-checksum-*`` value (request headers, aws-chunked trailers,
multipart uploads and their completion, GetObjectAttributes) looks the algorithm up here, so they
cannot disagree on which algorithms exist, how long a digest is or which multipart checksum types
an algorithm allows.

CRC32C, CRC64NVME and the combination of CRCs come from ``awscrt`` (the AWS Common Runtime's C
code, hardware-accelerated): the standard library has neither, and a pure-Python CRC runs at a few
MB/s, slow enough to stall the reactor thread.  CRC32 comes from ``zlib``, SHA-1 and SHA-256 from
``hashlib``.  Measured on the development machine: CRC32 ~1.9 GB/s, CRC32C ~14 GB/s, CRC64NVME
~6.9 GB/s, SHA-1 and SHA-256 ~1.3 GB/s -- all faster than the MD5 every upload already computes
for its ETag (~0.47 GB/s), so the running checksums stay on the reactor thread, next to it.

``awscrt`` is imported on first use only: loading its library costs a process about 7 MiB of
resident memory (5 MiB of it the shared library's own pages), which a daemon whose clients never
send CRC32C or CRC64NVME (nor complete FULL_OBJECT CRC32 uploads) need not pay.

Lighter libraries were measured against it, each imported into a process that already had the
daemon's own imports (resident memory added, after one call) and run over 256 KiB buffers:
``awscrt`` +5.5 MiB, CRC64NVME 17 GB/s, CRC32C 16 GB/s; ``google-crc32c`` +1.2 MiB, CRC32C
15 GB/s; ``crc32c`` +0.7 MiB, CRC32C 6.6 GB/s; ``anycrc`` +0.5 MiB, CRC64NVME 5.7 GB/s.  Neither
CRC32C library has CRC64NVME, the checksum current SDKs send by default, so with either of them
a daemon serving those SDKs would load ``awscrt`` all the same.  ``anycrc`` (any CRC, with
combination) would save the 5 MiB, but it is one person's project, and an upload with a
CRC64NVME trailer would cost about 0.13 s more CPU per GiB, the one figure of the daemon's
bench that is short of its target already.  So ``awscrt`` stays.

Multipart uploads have two kinds of object checksum (S3's ``x-amz-checksum-type``):

- ``COMPOSITE``: the checksum of the concatenated binary part checksums, printed with ``-N``
  (N parts); any algorithm but CRC64NVME.
- ``FULL_OBJECT``: the checksum of the whole object's bytes, as a single PUT would have it; only
  the CRCs, because a CRC of ``A + B`` can be computed from ``crc(A)``, ``crc(B)`` and ``len(B)``
  (:func:`combine_full_object`), so the parts never need to be read again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

#: Prefix of the headers (and trailers) carrying checksum values.
HEADER_PREFIX = "x-amz-checksum-"
#: The header naming the checksum type of an object or an upload.
TYPE_HEADER = "x-amz-checksum-type"
FULL_OBJECT = "FULL_OBJECT"
COMPOSITE = "COMPOSITE"
CHECKSUM_TYPES = (FULL_OBJECT, COMPOSITE)


@cache
def _crt() -> Any:
    """``awscrt.checksums``, imported on first use (see the module docstring)."""
    from awscrt import checksums as crt

    return crt


def _crt_function(name: str) -> Callable[..., int]:
    """A function of ``awscrt.checksums`` that imports it only when called."""
    return lambda *args: int(getattr(_crt(), name)(*args))


def _crt_resolver(name: str) -> Callable[[], Callable[..., int]]:
    return lambda: getattr(_crt(), name)  # type: ignore[no-any-return]


class RunningChecksum(Protocol):
    """A checksum being computed over a stream of bytes."""

    def update(self, data: bytes | memoryview) -> None: ...
    def digest(self) -> bytes: ...
    def b64digest(self) -> str: ...


class _Crc:
    """A CRC ``function(data, previous) -> int``, printed big-endian.

    :param resolve: returns the function; called at the first update, so that creating a running
        CRC never loads a library.
    """

    def __init__(self, resolve: Callable[[], Callable[..., int]], size: int) -> None:
        self._resolve = resolve
        self._function: Callable[..., int] | None = None
        self._size = size
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        function = self._function
        if function is None:
            function = self._function = self._resolve()
        self._value = function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")

    def b64digest(self) -> str:
        return encode(self.digest())


class _Hash:
    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()

    def b64digest(self) -> str:
        return encode(self.digest())


@dataclass(frozen=True)
class ChecksumAlgorithm:
    """One algorithm of the catalogue.

    :ivar name: as S3 spells it in ``x-amz-checksum-algorithm`` and messages (``CRC64NVME``).
    :ivar digest_size: bytes of the binary digest.
    :ivar multipart_types: the ``x-amz-checksum-type`` values a multipart upload may use.
    :ivar default_multipart_type: the type of an upload that names the algorithm but no type.
    """

    name: str
    digest_size: int
    _factory: Callable[[], RunningChecksum]
    multipart_types: frozenset[str]
    default_multipart_type: str
    #: ``(crc1, crc2, len2) -> crc of the concatenation``; None for the hashes.
    _combine: Callable[[int, int, int], int] | None = None

    @property
    def header(self) -> str:
        """``x-amz-checksum-<lower-case name>``, the header and trailer name."""
        return HEADER_PREFIX + self.name.lower()

    @property
    def xml_element(self) -> str:
        """The element naming its value in S3's documents (``ChecksumCRC64NVME``)."""
        return "Checksum" + self.name

    def new(self) -> RunningChecksum:
        return self._factory()

    def of(self, data: bytes) -> bytes:
        """The binary digest of ``data``."""
        running = self._factory()
        running.update(data)
        return running.digest()

    def decode(self, value: str) -> bytes | None:
        """The binary digest behind a base64 value, or None when it is not one of this size."""
        return decode_digest(value, self.digest_size)

    def combine(self, first: bytes, second: bytes, second_length: int) -> bytes:
        """The CRC of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)``.

        :raises TypeError: for an algorithm that is not a CRC (no such combination exists).
        """
        if self._combine is None:
            raise TypeError(f"{self.name} checksums cannot be combined")
        value = self._combine(
            int.from_bytes(first, "big"), int.from_bytes(second, "big"), second_length
        )
        return value.to_bytes(self.digest_size, "big")


def _crc(
    resolve: Callable[[], Callable[..., int]], size: int
) -> Callable[[], RunningChecksum]:
    return lambda: _Crc(resolve, size)


def _hash(name: str) -> Callable[[], RunningChecksum]:
    return lambda: _Hash(name)


_BOTH = frozenset(CHECKSUM_TYPES)

#: Every algorithm, by lower-case name, in S3's order of preference for reading back.
ALGORITHMS: dict[str, ChecksumAlgorithm] = {
    a.name.lower(): a
    for a in (
        ChecksumAlgorithm(
            "CRC64NVME", 8, _crc(_crt_resolver("crc64nvme"), 8), frozenset({FULL_OBJECT}),
            FULL_OBJECT, _crt_function("combine_crc64nvme"),
        ),
        ChecksumAlgorithm(
            "CRC32", 4, _crc(lambda: zlib.crc32, 4), _BOTH, COMPOSITE,
            _crt_function("combine_crc32"),
        ),
        ChecksumAlgorithm(
            "CRC32C", 4, _crc(_crt_resolver("crc32c"), 4), _BOTH, COMPOSITE,
            _crt_function("combine_crc32c"),
        ),
        ChecksumAlgorithm("SHA1", 20, _hash("sha1"), frozenset({COMPOSITE}), COMPOSITE),
        ChecksumAlgorithm("SHA256", 32, _hash("sha256"), frozenset({COMPOSITE}), COMPOSITE),
    )
}


def by_name(name: str) -> ChecksumAlgorithm | None:
    """The algorithm called ``name`` (any case, as in ``x-amz-checksum-algorithm``), or None."""
    return ALGORITHMS.get(name.strip().lower())


def by_header(header: str) -> ChecksumAlgorithm | None:
    """The algorithm whose value header (or trailer) is ``header`` (any case), or None."""
    lower = header.strip().lower()
    if not lower.startswith(HEADER_PREFIX):
        return None
    return ALGORITHMS.get(lower[len(HEADER_PREFIX):])


def encode(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def decode_digest(value: str, size: int) -> bytes | None:
    """The binary digest behind a base64 header value (a checksum, ``Content-MD5``), or None
    when it is not base64 of ``size`` bytes."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def composite(algorithm: ChecksumAlgorithm, part_digests: Sequence[bytes]) -> str:
    """S3's COMPOSITE checksum: ``base64(checksum(digest1 + digest2 + ...))-N``."""
    return f"{encode(algorithm.of(b''.join(part_digests)))}-{len(part_digests)}"


def combine_full_object(
    algorithm: ChecksumAlgorithm, parts: Iterable[tuple[bytes, int]]
) -> str:
    """S3's FULL_OBJECT checksum of a multipart object from its parts' ``(crc, size)``.

    :raises TypeError: for an algorithm that is not a CRC.
    """
    total: bytes | None = None
    for digest, size in parts:
        total = digest if total is None else algorithm.combine(total, digest, size)
    if total is None:
        total = algorithm.of(b"")
    return encode(total)


__all__ = [
    "ALGORITHMS",
    "CHECKSUM_TYPES",
    "COMPOSITE",
    "FULL_OBJECT",
    "HEADER_PREFIX",
    "TYPE_HEADER",
    "ChecksumAlgorithm",
    "RunningChecksum",
    "by_header",
    "by_name",
    "combine_full_object",
    "composite",
    "decode_digest",
    "encode",
]
