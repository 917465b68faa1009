"""One way to build a boto3 S3 client in tests, and the behaviour the suite's S3 servers share.

Tests want every failure to show: path-style addressing (loopback has no bucket subdomains), no
retries, short timeouts.  Every client in the suite is built here, so these choices are made once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self


def boto3_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    **config_options: Any,
) -> Any:
    """A boto3 S3 client for ``endpoint``: path style, one attempt, 5 s to connect, 30 s to read.

    :param config_options: ``botocore.config.Config`` options that replace those defaults or add
        to them (``request_checksum_calculation``, ``signature_version``...).
    """
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 1},
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    options.update(config_options)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(**options),
    )


class S3TestServer:
    """What a real S3 server of the suite offers beside starting and stopping: its endpoint, a
    client, a bucket, and use as a context manager."""

    region = "us-east-1"
    access_key = ""
    secret_key = ""
    port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def boto3_client(self, **config_options: Any) -> Any:
        """A client of this server with its own key pair (see :func:`boto3_client`)."""
        return boto3_client(
            self.endpoint, self.access_key, self.secret_key, self.region, **config_options
        )

    def create_bucket(self, name: str) -> None:
        self.boto3_client().create_bucket(Bucket=name)

    def bucket_entry(
        self, name: str, bucket: str, endpoint: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """The daemon's configuration entry for ``bucket`` on this server, as backend ``name``.

        :param endpoint: where the daemon should connect instead (a proxy in front of us).
        :param options: further keys of the entry (``max_size``...).
        """
        return {
            "name": name,
            "bucket": bucket,
            "endpoint": endpoint or self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "path_style": True,
            **options,
        }
