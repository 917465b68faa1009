"""The typed configuration every other module reads.

Field names and meanings follow the Go S3 Balance YAML file so an existing file loads unchanged;
fields marked *ours* are s3balance additions, documented in ``etc/s3balance.example.yaml``.
Durations are float seconds, sizes int bytes.  Loading and validation live in
:mod:`s3balance.configfile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("round-robin", "least-space", "weighted", "consistent-hash")
DATABASE_TYPES = ("sqlite", "mysql", "postgres")


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    idle_timeout: float = 60.0
    #: *ours*: at SIGTERM, how long transfers in flight may take to finish after the listener
    #: stopped accepting.
    shutdown_grace: float = 30.0
    #: *ours*: let the kernel move large downloads between plain TCP connections (``splice``).
    zero_copy: bool = True
    #: *ours*: worker processes sharing the listening sockets (``auto`` in the file: one per core).
    workers: int = 1
    #: *ours*: a request's headers must be complete this long after its first byte.
    header_timeout: float = 10.0
    #: *ours*: the body of a request read into memory (XML documents) must be complete this
    #: long after its headers.
    body_timeout: float = 30.0
    #: *ours*: client connections open at once; more are answered 503 SlowDown and closed.
    max_connections: int = 1000
    #: *ours*: bytes of request bodies held in memory at once, all connections together.
    body_memory: int = 32 << 20
    #: *ours*: seconds replaced or deleted bytes are kept for GETs of other processes sharing
    #: the database; ``None``: 0 with SQLite and one worker (no other process reads), else 60.
    delete_grace: float | None = None

    def effective_delete_grace(self, database_type: str) -> float:
        if self.delete_grace is not None:
            return self.delete_grace
        return 0.0 if database_type == "sqlite" and self.workers == 1 else 60.0


@dataclass
class DatabaseConfig:
    type: str = "sqlite"
    #: As written in the file: a SQLAlchemy URL, a Go DSN, or (SQLite) a file path.
    dsn: str = "s3balance.db"
    max_open_conns: int = 25
    max_idle_conns: int = 5
    conn_max_lifetime: float = 300.0
    log_level: str = "warn"
    auto_migrate: bool = True


@dataclass
class OperationLimits:
    """Monthly operation budgets; 0 means unlimited."""

    type_a: int = 0
    type_b: int = 0


@dataclass
class BucketConfig:
    """One entry of ``buckets``: a real bucket (``virtual: false``) or a virtual one clients see."""

    name: str
    endpoint: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    #: Bytes; ``None`` means unlimited.
    max_size: int | None = None
    weight: int = 1
    enabled: bool = True
    path_style: bool = False
    virtual: bool = False
    use_ssl: bool = True
    operation_limits: OperationLimits = field(default_factory=OperationLimits)
    #: *ours*: the bucket's name on the service when it differs from ``name``.
    bucket: str | None = None
    #: *ours*: a local directory instead of an S3 endpoint; relative to ``data_dir``.
    path: str | None = None
    #: *ours*: a CA bundle file for a private endpoint's TLS certificate.
    ca_bundle: str | None = None

    @property
    def real_name(self) -> str:
        """The bucket's name on the storage service."""
        return self.bucket or self.name


@dataclass
class BalancerConfig:
    strategy: str = "least-space"
    health_check_period: float = 30.0
    update_stats_period: float = 60.0
    retry_attempts: int = 3
    retry_delay: float = 1.0
    #: *ours*: consecutive failed probes before a backend is marked unhealthy.
    unhealthy_threshold: int = 3
    #: *ours*: consecutive good probes before an unhealthy backend is used again.
    healthy_threshold: int = 2
    #: *ours*: how long one probe may take.
    probe_timeout: float = 5.0


@dataclass
class MetricsConfig:
    enabled: bool = True
    path: str = "/metrics"
    #: Go key: a separate port for metrics; 0 serves them on the main listener only.
    port: int = 0
    #: Go key: when set, scrapes must send ``Authorization: Bearer <token>``.
    token: str = ""


@dataclass
class Credential:
    """*ours*: one client key pair, optionally limited to some virtual buckets or to reads."""

    access_key: str
    secret_key: str
    #: Virtual bucket names this key may use; empty means all.
    buckets: list[str] = field(default_factory=list)
    read_only: bool = False


@dataclass
class S3ApiConfig:
    access_key: str = ""
    secret_key: str = ""
    virtual_host: bool = False
    proxy_mode: bool = True
    auth_required: bool = False
    #: Host used for signature verification when a proxy in front rewrites it.
    host: str = ""
    #: *ours*: base domain for virtual-host addressing (``<bucket>.<domain>``).
    domain: str = ""
    #: *ours*: further key pairs, beyond ``access_key``/``secret_key``.
    credentials: list[Credential] = field(default_factory=list)
    #: *ours*: lifetime of redirect-mode presigned URLs.
    presign_expiry: float = 300.0
    #: *ours*: whether clients may create virtual buckets with CreateBucket.
    allow_create_bucket: bool = True
    #: *ours*: region reported by GetBucketLocation and expected in signatures' scope.
    region: str = "us-east-1"


@dataclass
class ApiConfig:
    enabled: bool = False
    token: str = ""


@dataclass
class MultipartConfig:
    """*ours*: housekeeping of abandoned multipart uploads."""

    #: Uploads older than this are aborted on the backend and forgotten.
    expiry: float = 7 * 24 * 3600.0
    #: How often the expiry task runs.
    cleanup_period: float = 3600.0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    buckets: list[BucketConfig] = field(default_factory=list)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    s3api: S3ApiConfig = field(default_factory=S3ApiConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    multipart: MultipartConfig = field(default_factory=MultipartConfig)
    #: *ours*: where relative SQLite paths and the default local backends live.
    data_dir: str = "data"

    @property
    def real_buckets(self) -> list[BucketConfig]:
        return [b for b in self.buckets if not b.virtual]

    @property
    def virtual_buckets(self) -> list[BucketConfig]:
        return [b for b in self.buckets if b.virtual]
