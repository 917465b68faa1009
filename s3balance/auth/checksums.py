"""The running checksums S3 accepts in ``x-amz-checksum-*`` trailers, base64 as S3 prints them.

CRC32C has no C implementation in the standard library; the table-driven one here is pure
Python and so slow (a few MB/s): adequate for the clients that pick it, noted in the report.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol


class RunningChecksum(Protocol):
    def update(self, data: bytes) -> None: ...
    def b64digest(self) -> str: ...


class _Crc32:
    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def b64digest(self) -> str:
        return base64.b64encode(self._crc.to_bytes(4, "big")).decode("ascii")


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


class _Crc32c:
    def __init__(self) -> None:
        self._crc = 0xFFFFFFFF

    def update(self, data: bytes) -> None:
        crc = self._crc
        table = _CRC32C_TABLE
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def b64digest(self) -> str:
        return base64.b64encode((self._crc ^ 0xFFFFFFFF).to_bytes(4, "big")).decode("ascii")


class _Hash:
    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def b64digest(self) -> str:
        return base64.b64encode(self._hash.digest()).decode("ascii")


#: Trailer header name -> (algorithm name as S3 spells it in messages, factory).
SUPPORTED_CHECKSUMS: dict[str, str] = {
    "x-amz-checksum-crc32": "CRC32",
    "x-amz-checksum-crc32c": "CRC32C",
    "x-amz-checksum-sha1": "SHA1",
    "x-amz-checksum-sha256": "SHA256",
}


def new_checksum(header_name: str) -> RunningChecksum:
    """A fresh running checksum for the given ``x-amz-checksum-*`` header name.

    :raises KeyError: an algorithm we do not implement (e.g. CRC64NVME).
    """
    name = header_name.lower()
    if name == "x-amz-checksum-crc32":
        return _Crc32()
    if name == "x-amz-checksum-crc32c":
        return _Crc32c()
    if name == "x-amz-checksum-sha1":
        return _Hash("sha1")
    if name == "x-amz-checksum-sha256":
        return _Hash("sha256")
    raise KeyError(header_name)
