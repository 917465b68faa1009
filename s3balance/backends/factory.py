"""Build the right backend adapter for a ``buckets[]`` entry."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from s3balance.config import BucketConfig

if TYPE_CHECKING:
    from s3balance.backends.interface import IBackend
    from s3balance.net.httpclient import ConnectionPool

#: ``path:`` of an in-memory backend (:mod:`s3balance.backends.memory`), as SQLite names its
#: in-memory database.
MEMORY_PATH = ":memory:"


def make_backend(
    config: BucketConfig,
    reactor: Any,
    data_dir: str,
    http_pool: ConnectionPool,
    stall_timeout: float = 60.0,
) -> IBackend:
    """An in-memory backend when ``path`` is ``":memory:"``, a local-directory backend when
    ``path`` is set otherwise, an S3 backend without ``path``.

    Relative local paths are taken from ``data_dir`` so the embedded default works from any
    working directory the operator chooses.

    :param stall_timeout: ``server.write_timeout``, the one limit on a backend making no
        progress (S3 backends).
    """
    if config.path == MEMORY_PATH:
        from s3balance.backends.memory import MemoryBackend

        return MemoryBackend(config.name, reactor)
    if config.path is not None:
        from s3balance.backends.local import LocalDirectoryBackend

        root = config.path if os.path.isabs(config.path) else os.path.join(data_dir, config.path)
        return LocalDirectoryBackend(config.name, root, reactor, max_size=config.max_size)
    from s3balance.backends.s3 import S3Backend

    return S3Backend.from_config(config, reactor, http_pool, stall_timeout)

