"""The typed configuration every other module reads.

Field names and meanings follow the Go S3 Balance YAML file so an existing file loads unchanged.
Each field's default, allowed values and meaning are declared once, with its key, in
:data:`s3balance.configkeys.KEYS`.  Durations are float seconds, sizes int bytes.  Loading and
validation live in :mod:`s3balance.configfile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from s3balance.configkeys import DATABASE_TYPES, STRATEGIES, default

__all__ = [
    "DATABASE_TYPES",
    "STRATEGIES",
    "ApiConfig",
    "BalancerConfig",
    "BucketConfig",
    "Config",
    "Credential",
    "DatabaseConfig",
    "MetricsConfig",
    "MultipartConfig",
    "OperationLimits",
    "JobsConfig",
    "RepairConfig",
    "S3ApiConfig",
    "ServerConfig",
]


@dataclass
class ServerConfig:
    host: str = default("server.host")
    port: int = default("server.port")
    read_timeout: float = default("server.read_timeout")
    write_timeout: float = default("server.write_timeout")
    idle_timeout: float = default("server.idle_timeout")
    shutdown_grace: float = default("server.shutdown_grace")
    zero_copy: bool = default("server.zero_copy")
    workers: int = default("server.workers")
    header_timeout: float = default("server.header_timeout")
    body_timeout: float = default("server.body_timeout")
    max_connections: int = default("server.max_connections")
    body_memory: int = default("server.body_memory")
    #: ``None``: 0 with SQLite and one worker (no other process reads), else 60.
    delete_grace: float | None = default("server.delete_grace")

    def effective_delete_grace(self, database_type: str) -> float:
        if self.delete_grace is not None:
            return self.delete_grace
        return 0.0 if database_type == "sqlite" and self.workers == 1 else 60.0


@dataclass
class DatabaseConfig:
    type: str = default("database.type")
    #: As written in the file: a SQLAlchemy URL, a Go DSN, or (SQLite) a file path.
    dsn: str = default("database.dsn")
    max_open_conns: int = default("database.max_open_conns")
    max_idle_conns: int = default("database.max_idle_conns")
    conn_max_lifetime: float = default("database.conn_max_lifetime")
    log_level: str = default("database.log_level")
    auto_migrate: bool = default("database.auto_migrate")


@dataclass
class OperationLimits:
    """Monthly operation budgets; 0 means unlimited."""

    type_a: int = default("buckets[].operation_limits.type_a")
    type_b: int = default("buckets[].operation_limits.type_b")


@dataclass
class BucketConfig:
    """One entry of ``buckets``: a real bucket (``virtual: false``) or a virtual one clients see."""

    name: str
    endpoint: str = default("buckets[].endpoint")
    region: str = default("buckets[].region")
    access_key_id: str = default("buckets[].access_key_id")
    secret_access_key: str = default("buckets[].secret_access_key")
    #: Bytes; ``None`` means unlimited.
    max_size: int | None = default("buckets[].max_size")
    weight: int = default("buckets[].weight")
    enabled: bool = default("buckets[].enabled")
    path_style: bool = default("buckets[].path_style")
    virtual: bool = default("buckets[].virtual")
    use_ssl: bool = default("buckets[].use_ssl")
    operation_limits: OperationLimits = field(default_factory=OperationLimits)
    bucket: str | None = default("buckets[].bucket")
    path: str | None = default("buckets[].path")
    ca_bundle: str | None = default("buckets[].ca_bundle")
    #: Virtual buckets: how many real buckets hold each new object.
    replicas: int = default("buckets[].replicas")
    #: Virtual buckets: copies that must be stored for a write to succeed; 0 means all of them.
    write_quorum: int = default("buckets[].write_quorum")
    #: Real buckets: the failure domain as configured; :attr:`failure_domain` applies the default.
    zone: str | None = default("buckets[].zone")

    @property
    def real_name(self) -> str:
        """The bucket's name on the storage service."""
        return self.bucket or self.name

    @property
    def failure_domain(self) -> str:
        """What fails together with this bucket: ``zone`` when set, else the endpoint's host
        (two buckets of one service share its outages; AWS by region), and a local directory
        alone (nothing else lives in it)."""
        if self.zone:
            return self.zone
        if self.path is not None:
            return f"path:{self.name}"
        if not self.endpoint:
            return f"aws:{self.region}"
        return "host:" + (urlsplit(self.endpoint).hostname or self.endpoint)


@dataclass
class BalancerConfig:
    strategy: str = default("balancer.strategy")
    health_check_period: float = default("balancer.health_check_period")
    update_stats_period: float = default("balancer.update_stats_period")
    retry_attempts: int = default("balancer.retry_attempts")
    retry_delay: float = default("balancer.retry_delay")
    unhealthy_threshold: int = default("balancer.unhealthy_threshold")
    healthy_threshold: int = default("balancer.healthy_threshold")
    probe_timeout: float = default("balancer.probe_timeout")
    #: ``off``, ``spread`` or ``pack`` (:mod:`s3balance.rebalancing`).
    rebalance: str = default("balancer.rebalance")
    rebalance_threshold: float = default("balancer.rebalance_threshold")
    rebalance_interval: float = default("balancer.rebalance_interval")


@dataclass
class MetricsConfig:
    enabled: bool = default("metrics.enabled")
    path: str = default("metrics.path")
    port: int = default("metrics.port")
    token: str = default("metrics.token")


@dataclass
class Credential:
    """*ours*: one client key pair, optionally limited to some virtual buckets or to reads."""

    access_key: str
    secret_key: str
    #: Virtual bucket names this key may use; empty means all.
    buckets: list[str] = field(default_factory=list)
    read_only: bool = default("s3api.credentials[].read_only")


@dataclass
class S3ApiConfig:
    access_key: str = default("s3api.access_key")
    secret_key: str = default("s3api.secret_key")
    virtual_host: bool = default("s3api.virtual_host")
    proxy_mode: bool = default("s3api.proxy_mode")
    auth_required: bool = default("s3api.auth_required")
    host: str = default("s3api.host")
    domain: str = default("s3api.domain")
    credentials: list[Credential] = field(default_factory=list)
    presign_expiry: float = default("s3api.presign_expiry")
    allow_create_bucket: bool = default("s3api.allow_create_bucket")
    region: str = default("s3api.region")


@dataclass
class ApiConfig:
    enabled: bool = default("api.enabled")
    token: str = default("api.token")


@dataclass
class MultipartConfig:
    """*ours*: housekeeping of abandoned multipart uploads."""

    expiry: float = default("multipart.expiry")
    cleanup_period: float = default("multipart.cleanup_period")


@dataclass
class RepairConfig:
    """*ours*: bringing replicated objects back to their number of copies
    (:mod:`s3balance.repair`)."""

    interval: float = default("repair.interval")
    after: float = default("repair.after")
    max_concurrency: int = default("repair.max_concurrency")
    verify_batch: int = default("repair.verify_batch")
    #: Bytes per second; ``None`` means unlimited.
    max_bytes_per_second: int | None = default("repair.max_bytes_per_second")


@dataclass
class JobsConfig:
    """*ours*: resumable background jobs such as a drain (:mod:`s3balance.jobs`)."""

    max_concurrency: int = default("jobs.max_concurrency")
    #: Bytes per second; ``None`` means unlimited.
    max_bytes_per_second: int | None = default("jobs.max_bytes_per_second")
    lease: float = default("jobs.lease")
    poll_interval: float = default("jobs.poll_interval")


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
    repair: RepairConfig = field(default_factory=RepairConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    data_dir: str = default("data_dir")

    @property
    def real_buckets(self) -> list[BucketConfig]:
        return [b for b in self.buckets if not b.virtual]

    @property
    def virtual_buckets(self) -> list[BucketConfig]:
        return [b for b in self.buckets if b.virtual]
