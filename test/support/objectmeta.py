"""A daemon over real S3 buckets on the shared moto server, with multipart uploads wired, for the
tests of object metadata (encryption, tags, ACLs) and bucket edges."""

from __future__ import annotations

import secrets

from s3balance.config import BucketConfig
from test.support.daemon import DaemonTestCase, server_buckets
from test.support.motoserver import shared_moto


def moto_buckets(names: list[str]) -> list[BucketConfig]:
    """Real buckets on the shared moto server (created here, uniquely named)."""
    real_names = [f"s3b-{name}-{secrets.token_hex(4)}" for name in names]
    return server_buckets(shared_moto(), names, real_names)


class MotoDaemonCase(DaemonTestCase):
    """:class:`DaemonTestCase` over two moto buckets, multipart included."""

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        return moto_buckets(self.backend_names)

