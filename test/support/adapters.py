"""An S3 backend adapter pointed at a loopback endpoint a test serves itself."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from s3balance.backends.s3 import S3Backend


def s3_backend_at(
    test: Any, endpoint: str, stall_timeout: float = 30, connect_timeout: float = 5
) -> S3Backend:
    """An adapter for bucket ``bucket`` at ``endpoint`` (path style, dummy keys), closed when
    ``test`` cleans up."""
    backend = S3Backend(
        name="test-backend",
        endpoint=endpoint,
        bucket="bucket",
        region="us-east-1",
        access_key="AKID",
        secret_key="secret",
        path_style=True,
        reactor=reactor,
        stall_timeout=stall_timeout,
        connect_timeout=connect_timeout,
    )
    test.addCleanup(backend.close)
    return backend
