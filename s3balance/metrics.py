"""Every Prometheus metric s3balance exports, and the resource that serves them.

Names follow the Go S3 Balance project so existing dashboards keep working; the ones it does not
have are s3balance additions.  All metrics live on the module's own :data:`REGISTRY` (not the
process-global default one) so tests and embedders see only s3balance's series.

With ``server.workers`` above 1 every worker records into the same per-run directory
(``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before the worker imports this module) and
:func:`exposition_registry` reads all of it: counters and histograms are summed over the workers,
gauges of shared state show the value last set by a live worker (``livemostrecent``), transfers
in flight the sum over live workers.  Process metrics are then left out (they would describe only
the worker that answered the scrape).

The scrape is rendered synchronously on the reactor thread: producing the text format takes well
under a millisecond for our series count, and never touches a thread pool that the database or a
backend could be starving (``prometheus_client.twisted.MetricsResource`` would).
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from twisted.web.resource import Resource
from twisted.web.server import Request

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: From a 1 ms metadata answer to a 10 minute transfer of a large object.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

#: Database calls: sub-millisecond SQLite reads up to a stuck remote server.
DB_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# -- names shared with the Go project -------------------------------------------------------

BUCKET_HEALTHY = Gauge(
    "s3_balance_bucket_healthy",
    "Whether the real bucket is healthy (1) or not (0).",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
BUCKET_USAGE_BYTES = Gauge(
    "s3_balance_bucket_usage_bytes",
    "Bytes s3balance has placed on the real bucket (objects and parts in progress).",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
BUCKET_CAPACITY_BYTES = Gauge(
    "s3_balance_bucket_capacity_bytes",
    "Configured max_size of the real bucket, or the storage's own size when unlimited.",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
S3_OPERATIONS = Counter(
    "s3_balance_s3_operations",
    "S3 requests answered, by operation, virtual bucket (_other: a name that is not one) and "
    "HTTP status.",
    ["operation", "bucket", "status"],
    registry=REGISTRY,
)
S3_OPERATION_DURATION = Histogram(
    "s3_balance_s3_operation_duration_seconds",
    "Time from the request's headers to the last byte of the answer.",
    ["operation"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
BALANCER_DECISIONS = Counter(
    "s3_balance_balancer_decisions",
    "Placement decisions, by strategy and the real bucket chosen first.",
    ["strategy", "bucket"],
    registry=REGISTRY,
)

# -- s3balance additions --------------------------------------------------------------------

BUCKET_PROBE_LATENCY = Gauge(
    "s3_balance_bucket_probe_latency_seconds",
    "Duration of the last successful health probe of the real bucket.",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
BUCKET_OBJECTS = Gauge(
    "s3_balance_bucket_objects",
    "Objects s3balance has placed on the real bucket.",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
BACKEND_BYTES_IN = Counter(
    "s3_balance_backend_bytes_in",
    "Bytes written to the real bucket.",
    ["bucket"],
    registry=REGISTRY,
)
BACKEND_BYTES_OUT = Counter(
    "s3_balance_backend_bytes_out",
    "Bytes read from the real bucket.",
    ["bucket"],
    registry=REGISTRY,
)
INFLIGHT_TRANSFERS = Gauge(
    "s3_balance_inflight_transfers",
    "Object bodies streaming right now: direction in (uploads from clients) or out (downloads).",
    ["direction"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
ZERO_COPY_BYTES = Counter(
    "s3_balance_zero_copy_bytes",
    "Download bytes the kernel moved from a backend's socket to the client's (server.zero_copy).",
    registry=REGISTRY,
)
REPLICA_FAILOVERS = Counter(
    "s3_balance_replica_failovers",
    "Reads of a replicated object that moved on from a replica that failed (refused, missing, "
    "or broken mid-body) to the next one.",
    registry=REGISTRY,
)
REPAIR_COPIES = Counter(
    "s3_balance_repair_copies",
    "Copies of replicated objects repair made (re-created or added), by target real bucket.",
    ["bucket"],
    registry=REGISTRY,
)
REPAIR_BYTES = Counter(
    "s3_balance_repair_bytes",
    "Bytes repair copied, by target real bucket.",
    ["bucket"],
    registry=REGISTRY,
)
REPAIR_DROPPED = Counter(
    "s3_balance_repair_dropped",
    "Copies repair dropped: lost ones once replaced, and extras beyond the bucket's replicas.",
    registry=REGISTRY,
)
REPAIR_FAILURES = Counter(
    "s3_balance_repair_failures",
    "Objects repair could not bring to their number of copies in a pass (no healthy source, no "
    "backend with room, a copy that failed); they are tried again next pass.",
    registry=REGISTRY,
)
REPAIR_BACKLOG = Gauge(
    "s3_balance_repair_backlog",
    "Objects the last repair pass found with too few or too many copies and did not fix.",
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
REPAIR_VERIFIED = Counter(
    "s3_balance_repair_verified",
    "Copies of replicated objects repair's incremental verification checked against a listing, "
    "by real bucket.",
    ["bucket"],
    registry=REGISTRY,
)
REPAIR_VERIFY_PROGRESS = Gauge(
    "s3_balance_repair_verify_progress",
    "How far repair's current verification cycle of a real bucket's copies got: objects checked "
    "over those of its last complete cycle (0 to 1).",
    ["bucket"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
JOBS = Gauge(
    "s3_balance_jobs",
    "Jobs (drains and other background work) in the database, by kind and state, as the "
    "daemon last counted them.",
    ["kind", "state"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
JOB_OBJECTS = Counter(
    "s3_balance_job_objects",
    "Objects jobs of this daemon moved, by job kind.",
    ["kind"],
    registry=REGISTRY,
)
JOB_BYTES = Counter(
    "s3_balance_job_bytes",
    "Bytes jobs of this daemon copied, by job kind.",
    ["kind"],
    registry=REGISTRY,
)
JOB_ERRORS = Counter(
    "s3_balance_job_errors",
    "Objects jobs of this daemon could not move (tried again later in the job), by job kind.",
    ["kind"],
    registry=REGISTRY,
)
REBALANCE_OUT_OF_BALANCE = Gauge(
    "s3_balance_rebalance_out_of_balance",
    "Real buckets out of balance at the last rebalance plan (a dry run, a balance check of "
    "balancer.rebalance, or a plan of a rebalance job), by mode.",
    ["mode"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
REBALANCE_PLANNED_BYTES = Gauge(
    "s3_balance_rebalance_planned_bytes",
    "Bytes the last rebalance plan would move (what balancing costs in egress), by mode.",
    ["mode"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
DB_QUERY_DURATION = Histogram(
    "s3_balance_db_query_duration_seconds",
    "Duration of metadata store calls, by store method.",
    ["operation"],
    buckets=DB_DURATION_BUCKETS,
    registry=REGISTRY,
)
BUCKET_OPERATIONS_MONTH = Gauge(
    "s3_balance_bucket_operations_month",
    "Operations sent to the real bucket this calendar month (UTC), by class (A or B).",
    ["bucket", "class"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
BUCKET_OPERATION_LIMIT = Gauge(
    "s3_balance_bucket_operation_limit",
    "Monthly operation budget of the real bucket by class; 0 means unlimited.",
    ["bucket", "class"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)

OPEN_CONNECTIONS = Gauge(
    "s3_balance_open_connections",
    "Client connections open on the S3 listener (capped by server.max_connections).",
    registry=REGISTRY,
)
REFUSALS = Counter(
    "s3_balance_refusals",
    "Requests and connections refused to protect the daemon, by reason: header_timeout, "
    "body_timeout, max_connections, body_too_large, body_budget (buffered bodies' memory), "
    "unauthenticated (a body refused before it was read) and malformed_request (not HTTP/1.1).",
    ["reason"],
    registry=REGISTRY,
)
#: Every reason exists from the start, so a dashboard's rate is 0 rather than missing.
REFUSAL_REASONS = (
    "header_timeout", "body_timeout", "max_connections", "body_too_large", "body_budget",
    "unauthenticated", "malformed_request",
)  # fmt: skip
for _reason in REFUSAL_REASONS:
    REFUSALS.labels(_reason)
BUFFERED_BODY_BYTES = Gauge(
    "s3_balance_buffered_body_bytes",
    "Bytes of request bodies held in memory right now (capped by server.body_memory).",
    registry=REGISTRY,
)

#: Metrics with a ``bucket`` label that names a real bucket (backend).
_PER_BACKEND: tuple[MetricWrapperBase, ...] = (
    BUCKET_HEALTHY,
    BUCKET_USAGE_BYTES,
    BUCKET_CAPACITY_BYTES,
    BALANCER_DECISIONS,
    BUCKET_PROBE_LATENCY,
    BUCKET_OBJECTS,
    BACKEND_BYTES_IN,
    BACKEND_BYTES_OUT,
    BUCKET_OPERATIONS_MONTH,
    BUCKET_OPERATION_LIMIT,
)


_PER_BACKEND_NAMES = frozenset(metric._name for metric in _PER_BACKEND)
#: Real buckets removed by reconfiguration (and not configured again since).  A worker cannot
#: take a series back out of the files the workers share, so the scrape leaves these out.
_FORGOTTEN: set[str] = set()


def _without_forgotten(family: Metric) -> Metric:
    if _FORGOTTEN and family.name in _PER_BACKEND_NAMES:
        family.samples = [
            sample for sample in family.samples if sample.labels.get("bucket") not in _FORGOTTEN
        ]
    return family


def exposition_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: :data:`REGISTRY`, or in a worker the sum over all workers."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    class _WorkersCollector(multiprocess.MultiProcessCollector):
        """The supervisor removes a dead worker's files, maybe between the listing of the
        directory and the reading of a file: read again then."""

        def collect(self) -> Any:
            for attempt in range(3):
                try:
                    families = list(super().collect())
                except FileNotFoundError:
                    if attempt == 2:
                        raise
                    continue
                return [_without_forgotten(family) for family in families]
            return []

    registry = CollectorRegistry()
    _WorkersCollector(registry, path=directory)
    return registry


def families_of(metric: MetricWrapperBase) -> list[Metric]:
    """``metric``'s samples as :meth:`collect` gives them, in a worker summed over all workers
    (the admin API's traffic history and balancer decisions then describe the whole daemon)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return list(metric.collect())
    name = metric._name
    return [family for family in exposition_registry().collect() if family.name == name]


def _remove_matching(metric: MetricWrapperBase, label: str, value: str) -> None:
    """Drop every series of ``metric`` whose ``label`` is ``value`` (older clients lack
    ``remove_by_labels``)."""
    remove_by_labels = getattr(metric, "remove_by_labels", None)
    if remove_by_labels is not None:
        remove_by_labels({label: value})
        return
    position = metric._labelnames.index(label)
    with metric._lock:
        for labelvalues in list(metric._metrics):
            if labelvalues[position] == value:
                metric._metrics.pop(labelvalues, None)


def forget_backend(name: str) -> None:
    """Remove a real bucket's series, so a bucket dropped by reconfiguration stops being
    reported (a stale ``healthy 1`` would hide that it is gone)."""
    _FORGOTTEN.add(name)
    for metric in _PER_BACKEND:
        _remove_matching(metric, "bucket", name)


def backend_configured(name: str) -> None:
    """A real bucket is in the configuration (again): report its series."""
    _FORGOTTEN.discard(name)


def forget_virtual_bucket(name: str) -> None:
    """Remove a deleted virtual bucket's request series (see :mod:`s3balance.web.labels`)."""
    _remove_matching(S3_OPERATIONS, "bucket", name)


class MetricsResource(Resource):
    """Serves ``registry`` in the Prometheus text format (or OpenMetrics when asked).

    :param token: when non-empty, a scrape must send ``Authorization: Bearer <token>``; any other
        request gets 401.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, token: str = "") -> None:
        super().__init__()
        self._registry = registry
        self._token = token.encode("utf-8")

    def _authorized(self, request: Request) -> bool:
        if not self._token:
            return True
        header = request.getHeader("authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8"), self._token)

    def render_GET(self, request: Request) -> bytes:
        if not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader("WWW-Authenticate", 'Bearer realm="metrics"')
            request.setHeader("Content-Type", "text/plain; charset=utf-8")
            return b"Unauthorized\n"
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader("Content-Type", content_type)
        return encoder(self._registry)
