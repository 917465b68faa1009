"""The admin API under ``/api``: the Go S3 Balance paths, JSON in and out.

Every request but a CORS preflight (``OPTIONS``) must carry ``api.token``, as
``Authorization: Bearer <token>`` or as the bare token (both are what the Go project accepts);
otherwise the answer is 401 ``{"error": "..."}``.  Times are float seconds since the epoch (UTC),
sizes are bytes, months are ``"YYYY-MM"`` (UTC).  Errors are ``{"error": "<message>", "status":
<status>}`` with that 4xx/5xx status, except a refused configuration: 400 ``{"errors": ["<key
path>: <problem>", ...], "status": 400}``.  Every error, unexpected ones included, is JSON.

Endpoints and their answers:

``GET /api/buckets`` -> ``{"buckets": [<bucket>, ...]}``, real buckets first (by name), then
virtual ones.  A real bucket is ``{"name", "virtual": false, "endpoint", "region", "bucket"
(its name on the service), "path" (local directory or null), "enabled", "weight", "max_size",
"healthy", "last_probe", "last_error", "probe_latency_seconds", "used_bytes", "object_count",
"capacity_bytes" (max_size, or what the storage reports, or null), "storage_free_bytes",
"month", "class_a_operations", "class_b_operations", "class_a_limit", "class_b_limit"}``
(limits: 0 means unlimited), with ``"draining"``, ``"drain_job"``, ``"drain_state"`` and
``"removable"`` (see drain below; a draining bucket also has the ``"held_*"`` counts).  A
virtual bucket is ``{"name", "virtual": true, "created", "from_config"}``.

``GET /api/buckets/{name}`` -> one ``<bucket>``, or 404.

``POST /api/buckets/{name}/enable`` and ``.../disable`` -> ``{"bucket": <bucket>, "changes":
[...]}``; the change is made to the running configuration (so ``GET /api/config`` shows it), but
not written to the file: a SIGHUP reload goes back to what the file says.

``POST /api/strategy`` with ``{"strategy": "<one of STRATEGIES>"}`` -> ``{"strategy",
"changes"}``; ``GET /api/strategy`` -> ``{"strategy", "strategies": [...]}``.

``GET /api/health`` -> ``{"status": "healthy"|"degraded"|"unhealthy", "reason", "backends":
{...}}`` (the ``/health`` document plus a one-line reason); ``POST /api/health/probe`` runs a
probe round first.

``GET /api/config`` -> the running configuration in the file's format, secrets as ``"***"``.
``POST /api/config`` with a full or partial configuration (the file's format, as JSON; in
``buckets`` an entry updates the bucket of the same name, ``{"name": x, "remove": true}``
removes one, ``"***"`` keeps a secret) -> ``{"changes": [...], "config": {...}}``.  The update is
validated like the file at start, with JSON's types (a number where text belongs, such as a
secret, is refused); ``${VAR}`` is not expanded from the daemon's environment.
Sections that need a restart are listed in ``changes`` and left as they run.

``GET /api/stats/monthly`` (this month), ``GET /api/stats/monthly/{year}/{month}`` ->
``{"month", "backends": {<name>: <counts>}, "total": <counts>}`` with ``<counts>`` =
``{"class_a", "class_b", "bytes_in", "bytes_out"}``; this month lists every configured backend,
also those with no operations yet.

``GET /api/stats/monthly/range?start=YYYY-MM&end=YYYY-MM`` -> ``{"start", "end", "months":
[{"month", "backends", "total"}, ...]}``, one entry per month of the range (at most 120).

``GET /api/stats/bucket/{name}/history[?start=YYYY-MM&end=YYYY-MM]`` -> ``{"bucket", "months":
[{"month", "class_a", "class_b", "bytes_in", "bytes_out"}, ...]}`` for a real bucket.

``POST /api/scrub`` with ``{"remove_orphans": bool, "backends": [names] (optional, default all),
"grace": seconds (optional, default 3600)}`` -> the :class:`s3balance.scrub.ScrubReport` as JSON
(``{"clean", "orphans", "dangling", "removed", "errors", "backends": {<name>: {...}}, ...}``).
A scrub lists whole real buckets: it can take long on big ones.

``GET /api/repair`` -> ``{"running", "current_pass", "last_pass", "backlog", "verification",
"settings"}``: a pass is ``{"started", "finished", "examined", "repaired", "copies",
"bytes_copied", "dropped", "backlog", "no_source", "claimed_elsewhere", "failures",
"full_buckets", "queued", "on_lost_backends", "verified", "missing", "errors"}``
(:class:`s3balance.repair.RepairPass`); ``backlog`` is the last pass's (objects left with too few
or too many copies), null before any; ``verification`` is ``{backend: {"fraction", "buckets":
{bucket: {"after", "checked", "last_total", "cycles", "sweep", "updated_at"}}}}``, where the
incremental verification of copies is (:meth:`s3balance.repair.Repairer.verification`).

``GET /api/jobs[?state=running]`` -> ``{"jobs": [<job>, ...]}``, newest first (at most 200);
``GET /api/jobs/{id}`` -> ``<job>``; ``POST /api/jobs/{id}/pause``, ``.../resume``,
``.../cancel`` -> ``<job>`` as it is now (409 when its state does not allow it: only queued or
running jobs pause, paused or failed ones resume, finished ones cannot be cancelled).  A job is
``{"id", "kind", "target", "params", "state", "objects_done", "objects_left", "bytes_done",
"bytes_left", "errors", "last_error", "cursor", "created", "started", "finished", "updated",
"eta_seconds", "owner", "claim_expires"}`` (:func:`s3balance.jobs.job_document`; ``*_left`` and
``eta_seconds`` are null while unknown).

``POST /api/buckets/{name}/drain`` (a real bucket) -> ``{"bucket": <bucket>, "job": <job>}``:
the bucket takes no new writes from now on and a ``drain`` job moves its objects to the others
(:mod:`s3balance.drain`); draining a drained bucket answers its job.  ``GET /api/buckets/{name}``
of a real bucket also says ``"draining"``, ``"drain_job"``, ``"drain_state"``,
``"held_objects"``, ``"held_bytes"``, ``"uploads_in_progress"``, ``"deletions_pending"`` and
``"removable"`` (drained, its job done, and nothing s3balance wrote left on it: it can be removed
from the configuration).  Cancelling the drain job gives the bucket back to placement, and so
does ``POST /api/buckets/{name}/undrain`` -> ``{"bucket", "job"}`` (the drain job, cancelled
unless it had finished; null when there was none), also after the drain is done.

``POST /api/rebalance`` with ``{"mode": "spread"|"pack", "threshold": 0..1, "dry_run": bool,
"max_moves": n, "max_bytes": n}`` (all optional; mode and threshold default to
``balancer.rebalance`` and ``balancer.rebalance_threshold``) -> with ``dry_run``: ``{"dry_run":
true, "plan": <plan>}`` (:meth:`s3balance.rebalancing.Planner.report`), nothing moved; without:
``{"dry_run": false, "job": <job>}``, a queued ``rebalance`` job (:mod:`s3balance.rebalance`), or
409 ``{"error", "job"}`` while one is queued, running or paused.  ``GET /api/rebalance`` ->
``{"settings": {"rebalance", "threshold", "interval"}, "job": <job under way> or null,
"last_check"}`` (the last automatic check of ``balancer.rebalance``: ``{"time", "started_job",
"under_way", "plan"}``, null before any).

For the web console (:mod:`s3balance.console`), which has no other way in:

``POST /api/buckets`` with ``{"name"}`` -> the new ``<virtual bucket>`` (CreateBucket's rules:
``s3api.allow_create_bucket``, the name rules; S3 errors come back as their status with
``{"error", "code"}``).  ``DELETE /api/buckets/{name}`` -> ``{"deleted"}``, an empty virtual bucket
only (409 ``BucketNotEmpty``; 409 for a real bucket's name).

``GET /api/virtual-buckets`` -> ``{"buckets": [<virtual bucket> + "object_count", "bytes"]}``.

``GET /api/buckets/{name}/objects?prefix=&delimiter=&start_after=&max_keys=`` (delimiter ``/``
and 100 keys by default, at most 1000) -> ``{"bucket", "prefix", "objects": [{"key", "size",
"last_modified", "etag" (unquoted), "content_type", "locations": [{"backend", "real_key"}]}],
"prefixes", "truncated", "next_start_after"}``.

``GET /api/buckets/{name}/download?key=K`` -> the object's bytes, relayed from its backend as
they come (``Content-Disposition: attachment``); ``HEAD`` -> the object's document.
``DELETE /api/buckets/{name}/object?key=K`` -> ``{"deleted", "bucket"}``.

``GET /api/balancer`` -> ``{"strategy", "strategies", "decisions": {<real bucket>: {"total",
<strategy>: count, ...}}}``: placements since the daemon started.

``GET /api/history`` -> ``{"period", "samples": [{"time", "requests_per_second",
"server_errors_per_second", "client_errors_per_second", "bytes_in_per_second",
"bytes_out_per_second"}]}``, oldest first, the last hour (:mod:`s3balance.admin.history`).

``GET /api/config/yaml`` -> ``{"yaml" (secrets masked), "restart_keys"}``.
``POST /api/config/validate`` with ``{"yaml": "<text>"}`` or ``{"config": {...}}`` -> ``{"valid",
"problems": [{"key", "message", "line", "text"}]}``: ``POST /api/config``'s validation, without
applying (a backend that cannot be built is only found by applying).  ``POST /api/config/yaml``
with the same body applies like ``POST /api/config`` (answer: ``{"changes", "config"}``; refused:
400 ``{"errors", "problems"}``).  YAML that does not parse is 400 with its line.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from s3balance.config import STRATEGIES, BucketConfig, Config
from s3balance.configfile import ConfigError, config_to_dict, merge_config, parse_config
from s3balance.db.records import OperationCounts
from s3balance.etags import unquoted_etag
from s3balance.logs import make_logger
from s3balance.pool import month_of
from s3balance.rebalance import (
    MAX_MOVES,
    RebalanceBusy,
    RebalanceSettings,
    active_rebalance,
    plan_rebalance,
    start_rebalance,
)
from s3balance.rebalancing import MODES
from s3balance.web import lifecycle
from s3balance.web.health import health_report

if TYPE_CHECKING:
    from s3balance.admin.history import TrafficHistory
    from s3balance.db.store import MetadataStore
    from s3balance.gateway import Gateway
    from s3balance.health import HealthMonitor
    from s3balance.jobs import JobRunner
    from s3balance.pool import BackendPool
    from s3balance.rebalance import RebalanceWatch
    from s3balance.repair import Repairer
    from s3balance.usage import UsageMonitor
    from s3balance.web.request import StreamingRequest

log = make_logger()

#: A configuration update is a few kilobytes; refuse anything absurd before parsing it.
MAX_BODY = 1024 * 1024
#: Longest month range one stats request may cover (ten years).
MAX_RANGE_MONTHS = 120

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")

JSON = dict[str, Any]
Handler = Callable[..., Coroutine[Any, Any, JSON]]


class DaemonView(Protocol):
    """What the admin API reads of the running daemon; read at every request, so a reload is
    seen at once."""

    @property
    def config(self) -> Config:
        """The configuration in effect."""
        ...

    @property
    def store(self) -> MetadataStore: ...

    @property
    def pool(self) -> BackendPool: ...

    @property
    def health(self) -> HealthMonitor: ...

    @property
    def usage(self) -> UsageMonitor: ...

    @property
    def gateway(self) -> Gateway: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def traffic(self) -> TrafficHistory | None:
        """The console's traffic history; None when the daemon keeps none."""
        ...

    @property
    def repair(self) -> Repairer:
        """The repair loop (its last pass and backlog)."""
        ...

    @property
    def jobs(self) -> JobRunner:
        """Queues, controls (and in housekeeping's process runs) drains and other jobs."""
        ...

    @property
    def rebalance_watch(self) -> RebalanceWatch:
        """The check of ``balancer.rebalance`` (its last finding)."""
        ...


class Reconfiguring(Protocol):
    """What the admin API changes: the configuration, as a whole (validated already)."""

    def apply(self, new: Config) -> Deferred[list[str]]:
        """Make ``new`` the configuration in effect.

        :returns: one line per change made or refused.
        :raises ConfigError: (as the Deferred's failure) it was refused; nothing changed.
        """
        ...


class ApiError(Exception):
    """An answer other than 200, with a JSON body."""

    def __init__(self, status: int, body: JSON) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _error(status: int, message: str) -> ApiError:
    return ApiError(status, {"error": message})


class AdminResource(Resource):
    """The ``/api`` subtree; every path below it is routed here (it is a leaf).

    :param daemon: what the API reads of the running daemon.
    :param reconfigurator: what it changes (the configuration; in a worker, in every worker).
    :param allow_origin: the ``Access-Control-Allow-Origin`` sent to browsers; the token, not
        the origin, is what guards the API.
    """

    isLeaf = True

    def __init__(
        self, daemon: DaemonView, reconfigurator: Reconfiguring, allow_origin: str = "*"
    ) -> None:
        super().__init__()
        self.daemon = daemon
        self.reconfigurator = reconfigurator
        self.allow_origin = allow_origin
        self._routes: list[tuple[bytes, tuple[str, ...], Handler]] = [
            (b"GET", ("buckets",), self.get_buckets),
            (b"GET", ("buckets", "{}"), self.get_bucket),
            (b"POST", ("buckets", "{}", "enable"), self.enable_bucket),
            (b"POST", ("buckets", "{}", "disable"), self.disable_bucket),
            (b"GET", ("strategy",), self.get_strategy),
            (b"POST", ("strategy",), self.set_strategy),
            (b"GET", ("health",), self.get_health),
            (b"POST", ("health", "probe"), self.probe_health),
            (b"GET", ("config",), self.get_config),
            (b"POST", ("config",), self.post_config),
            (b"GET", ("stats", "monthly"), self.stats_this_month),
            (b"GET", ("stats", "monthly", "range"), self.stats_range),
            (b"GET", ("stats", "monthly", "{}", "{}"), self.stats_month),
            (b"GET", ("stats", "bucket", "{}", "history"), self.stats_history),
            (b"POST", ("scrub",), self.post_scrub),
            (b"GET", ("repair",), self.get_repair),
            (b"POST", ("rebalance",), self.post_rebalance),
            (b"GET", ("rebalance",), self.get_rebalance),
            (b"GET", ("jobs",), self.get_jobs),
            (b"GET", ("jobs", "{}"), self.get_job),
            (b"POST", ("jobs", "{}", "pause"), self.pause_job),
            (b"POST", ("jobs", "{}", "resume"), self.resume_job),
            (b"POST", ("jobs", "{}", "cancel"), self.cancel_job),
            (b"POST", ("buckets", "{}", "drain"), self.drain_bucket),
            (b"POST", ("buckets", "{}", "undrain"), self.undrain_bucket),
        ]
        # For the web console (s3balance.console); documented in the module docstring.
        self._routes += [
            (b"POST", ("buckets",), self.create_bucket),
            (b"DELETE", ("buckets", "{}"), self.delete_bucket),
            (b"GET", ("buckets", "{}", "objects"), self.list_objects),
            (b"GET", ("buckets", "{}", "download"), self.download_object),
            (b"DELETE", ("buckets", "{}", "object"), self.delete_object),
            (b"GET", ("virtual-buckets",), self.get_virtual_buckets),
            (b"GET", ("balancer",), self.get_balancer),
            (b"GET", ("history",), self.get_history),
            (b"GET", ("config", "yaml"), self.get_config_yaml),
            (b"POST", ("config", "yaml"), self.post_config_yaml),
            (b"POST", ("config", "validate"), self.validate_config),
        ]

    # -- plumbing ----------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        self._cors(request)
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"access-control-max-age", b"600")
            return b""
        try:
            self._authorize(request)
            handler, params = self._route(request)
        except ApiError as error:
            return self._body(request, error.status, error.body)
        except Exception:
            log.failure("admin API request {uri} failed", uri=request.uri)
            return self._body(request, 500, {"error": "internal error"})
        return lifecycle.serve(
            request,
            self._run(request, handler, params),
            lambda payload: self._send(request, payload),
            lambda failure: self._fail(request, failure),
            lambda: f"admin API request {request.method.decode('latin-1')} {request.uri!r}",
        )

    async def _run(self, request: Request, handler: Handler, params: list[str]) -> bytes:
        # Encoded here, before anything is written: a value JSON cannot hold fails the work
        # and is answered like any other failure (JSON 500), never a request left unanswered.
        return self._body(request, 200, await handler(request, *params))

    def _send(self, request: Request, payload: bytes) -> None:
        request.write(payload)
        request.finish()

    def _fail(self, request: Request, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, ApiError):
            status, body = error.status, error.body
        else:
            log.failure("admin API request {uri} failed", failure, uri=request.uri)
            status, body = 500, {"error": f"internal error: {failure.getErrorMessage()}"}
        self._send(request, self._body(request, status, body))

    def _cors(self, request: Request) -> None:
        request.setHeader(b"access-control-allow-origin", self.allow_origin.encode("utf-8"))
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Authorization, Content-Type")

    def _body(self, request: Request, status: int, body: JSON) -> bytes:
        """The JSON answer; an error's body also carries its HTTP ``status``."""
        if status >= 400 and "status" not in body:
            body = {**body, "status": status}
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="s3balance-api"')
        return json.dumps(body, indent=2, sort_keys=False).encode("utf-8") + b"\n"

    def _authorize(self, request: Request) -> None:
        token = self.daemon.config.api.token.encode("utf-8")
        if not token:
            raise _error(401, "the admin API has no token configured (api.token)")
        # Raw bytes: a header that is not UTF-8 is simply a wrong token, never a decoding error.
        header = b",".join(request.requestHeaders.getRawHeaders(b"authorization", [])).strip()
        if not header:
            raise _error(401, "missing Authorization header")
        scheme, _, rest = header.partition(b" ")
        presented = rest.strip() if scheme.lower() == b"bearer" else header
        if not hmac.compare_digest(presented, token):
            raise _error(401, "invalid token")

    def _route(self, request: Request) -> tuple[Handler, list[str]]:
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath or []]
        while segments and segments[-1] == "":
            segments.pop()
        allowed: list[bytes] = []
        for method, pattern, handler in self._routes:
            params = _match(pattern, segments)
            if params is None:
                continue
            if method == request.method or (method == b"GET" and request.method == b"HEAD"):
                return handler, params
            allowed.append(method)
        if allowed:
            request.setHeader(b"allow", b", ".join(sorted(set(allowed)) + [b"OPTIONS"]))
            raise _error(405, f"method {request.method.decode('latin-1')} not allowed here")
        raise _error(404, "no such endpoint: /api/" + "/".join(segments))

    # -- buckets -----------------------------------------------------------------------------

    async def get_buckets(self, request: Request) -> JSON:
        from s3balance.drain import drain_document

        store = self.daemon.store
        drained = await store.drained_backends()
        real = []
        for name in self.daemon.pool.names():
            job_id = drained.get(name)
            if job_id is None:
                drain = {"draining": False, "drain_job": None, "drain_state": None,
                         "removable": False}  # fmt: skip
            else:
                # Only a drained bucket is counted: a count per bucket on every list is too dear.
                drain = drain_document(await store.held_on(name), await store.get_job(job_id))
            real.append({**self._real_bucket(name), **drain})
        virtual = [_virtual_bucket(record) for record in await self.daemon.store.list_buckets()]
        return {"buckets": real + virtual}

    async def get_bucket(self, request: Request, name: str) -> JSON:
        if name in self.daemon.pool.names():
            return {**self._real_bucket(name), **(await self._drain_state(name))}
        record = await self.daemon.store.get_bucket(name)
        if record is None:
            raise _error(404, f"no bucket named {name!r}")
        return _virtual_bucket(record)

    async def enable_bucket(self, request: Request, name: str) -> JSON:
        return await self._set_enabled(name, True)

    async def disable_bucket(self, request: Request, name: str) -> JSON:
        return await self._set_enabled(name, False)

    async def _set_enabled(self, name: str, enabled: bool) -> JSON:
        config = self.daemon.config
        if name not in {b.name for b in config.real_buckets}:
            raise _error(404, f"no real bucket named {name!r}")
        buckets = [
            dataclasses.replace(b, enabled=enabled) if b.name == name and not b.virtual else b
            for b in config.buckets
        ]
        changes = await self._apply(dataclasses.replace(config, buckets=buckets))
        return {"bucket": self._real_bucket(name), "changes": changes}

    async def drain_bucket(self, request: Request, name: str) -> JSON:
        from s3balance.drain import start_drain
        from s3balance.jobs import job_document

        if name not in self.daemon.pool.names():
            if await self.daemon.store.get_bucket(name) is not None:
                raise _error(409, f"{name!r} is a virtual bucket: only real buckets are drained")
            raise _error(404, f"no real bucket named {name!r}")
        record = await start_drain(self.daemon.jobs, name)
        bucket = {**self._real_bucket(name), **(await self._drain_state(name))}
        return {"bucket": bucket, "job": job_document(record, self.daemon.clock.seconds())}

    async def undrain_bucket(self, request: Request, name: str) -> JSON:
        from s3balance.jobs import job_document

        if name not in self.daemon.pool.names():
            raise _error(404, f"no real bucket named {name!r}")
        store = self.daemon.store
        record = await store.undrain_backend(name, self.daemon.clock.seconds())
        self.daemon.pool.set_drained(await store.drained_backends())
        bucket = {**self._real_bucket(name), **(await self._drain_state(name))}
        now = self.daemon.clock.seconds()
        return {"bucket": bucket, "job": None if record is None else job_document(record, now)}

    async def _drain_state(self, name: str) -> JSON:
        from s3balance.drain import drain_document

        store = self.daemon.store
        job_id = (await store.drained_backends()).get(name)
        job = await store.get_job(job_id) if job_id is not None else None
        return drain_document(await store.held_on(name), job)

    def _real_bucket(self, name: str) -> JSON:
        daemon = self.daemon
        config: BucketConfig = daemon.pool.config(name)
        state = daemon.health.state(name)
        usage = daemon.usage.usage(name)
        counts = daemon.pool.operation_counts(name)
        capacity = config.max_size
        if capacity is None:
            capacity = daemon.usage.storage_total(name)
        return {
            "name": name,
            "virtual": False,
            "endpoint": config.endpoint,
            "region": config.region,
            "bucket": config.real_name,
            "path": config.path,
            "enabled": config.enabled,
            "weight": config.weight,
            "max_size": config.max_size,
            "healthy": state.healthy,
            "last_probe": state.last_probe,
            "last_error": state.last_error,
            "probe_latency_seconds": state.latency,
            "used_bytes": usage.used_bytes,
            "object_count": usage.object_count,
            "capacity_bytes": capacity,
            "storage_free_bytes": daemon.usage.storage_free(name),
            "month": counts.month,
            "class_a_operations": counts.class_a,
            "class_b_operations": counts.class_b,
            "class_a_limit": config.operation_limits.type_a,
            "class_b_limit": config.operation_limits.type_b,
        }

    # -- strategy ----------------------------------------------------------------------------

    async def get_strategy(self, request: Request) -> JSON:
        return {"strategy": self.daemon.config.balancer.strategy, "strategies": list(STRATEGIES)}

    async def set_strategy(self, request: Request) -> JSON:
        body = _json_body(request)
        strategy = body.get("strategy")
        if strategy not in STRATEGIES:
            raise ApiError(
                400,
                {"errors": [f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}"]},
            )
        config = self.daemon.config
        balancer = dataclasses.replace(config.balancer, strategy=strategy)
        changes = await self._apply(dataclasses.replace(config, balancer=balancer))
        return {"strategy": self.daemon.config.balancer.strategy, "changes": changes}

    # -- health ------------------------------------------------------------------------------

    async def get_health(self, request: Request) -> JSON:
        return self._health()

    async def probe_health(self, request: Request) -> JSON:
        await self.daemon.health.probe_now()
        return self._health()

    def _health(self) -> JSON:
        report = health_report(self.daemon.pool)
        backends: dict[str, dict[str, Any]] = report["backends"]  # type: ignore[assignment]
        enabled = {name: b for name, b in backends.items() if b["enabled"]}
        sick = sorted(name for name, b in enabled.items() if not b["healthy"])
        if not enabled:
            reason = "no backend is enabled"
        elif not sick:
            reason = f"all {len(enabled)} enabled backends are healthy"
        else:
            details = ", ".join(
                f"{name} ({backends[name]['last_error'] or 'down'})" for name in sick
            )
            reason = f"{len(sick)} of {len(enabled)} enabled backends unhealthy: {details}"
        return {"status": report["status"], "reason": reason, "backends": backends}

    # -- configuration -----------------------------------------------------------------------

    async def get_config(self, request: Request) -> JSON:
        return config_to_dict(self.daemon.config, mask_secrets=True)

    async def post_config(self, request: Request) -> JSON:
        partial = _json_body(request)
        current = config_to_dict(self.daemon.config, mask_secrets=False)
        try:
            new = parse_config(merge_config(current, partial), environ={}, typed=True)
        except ConfigError as error:
            raise ApiError(400, {"errors": error.problems}) from error
        changes = await self._apply(new)
        return {"changes": changes, "config": config_to_dict(self.daemon.config, True)}

    async def _apply(self, new: Config) -> list[str]:
        try:
            return await self.reconfigurator.apply(new)
        except ConfigError as error:
            raise ApiError(400, {"errors": error.problems}) from error

    # -- statistics --------------------------------------------------------------------------

    async def stats_this_month(self, request: Request) -> JSON:
        month = month_of(self.daemon.clock.seconds())
        return await self._month(month, include=self.daemon.pool.names())

    async def stats_month(self, request: Request, year: str, month: str) -> JSON:
        text = f"{year}-{month.zfill(2)}"
        if not _is_month(text):
            raise _error(400, f"not a month: {year}/{month} (expected /YYYY/MM)")
        return await self._month(text, include=[])

    async def stats_range(self, request: Request) -> JSON:
        start = _query(request, "start")
        end = _query(request, "end")
        months = _months_between(start, end)
        await self.daemon.pool.flush()
        assert start is not None and end is not None  # checked by _months_between
        history = await self.daemon.store.operation_history(None, start, end)
        by_month: dict[str, dict[str, OperationCounts]] = {m: {} for m in months}
        for counts in history:
            by_month.setdefault(counts.month, {})[counts.backend] = counts
        return {
            "start": start,
            "end": end,
            "months": [_month_document(m, by_month[m], []) for m in months],
        }

    async def stats_history(self, request: Request, name: str) -> JSON:
        start = _query(request, "start", required=False)
        end = _query(request, "end", required=False)
        for text in (start, end):
            if text is not None and not _is_month(text):
                raise _error(400, f"not a month: {text!r} (expected YYYY-MM)")
        await self.daemon.pool.flush()
        history = await self.daemon.store.operation_history(name, start or "", end or "9999-12")
        if not history and name not in self.daemon.pool.names():
            raise _error(404, f"no real bucket named {name!r} and no history for it")
        return {
            "bucket": name,
            "months": [{"month": c.month, **_counts(c)} for c in history],
        }

    # -- scrub -------------------------------------------------------------------------------

    async def get_repair(self, request: Request) -> JSON:
        return self.daemon.repair.report()

    # -- rebalance ---------------------------------------------------------------------------

    async def post_rebalance(self, request: Request) -> JSON:
        from s3balance.jobs import job_document

        body = _json_body(request)
        settings = _rebalance_settings(body, self.daemon.config)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise _error(400, "dry_run must be true or false")
        if dry_run:
            planner, partial = await plan_rebalance(
                self.daemon.pool, self.daemon.store, settings
            )
            return {"dry_run": True, "plan": planner.report(partial)}
        now = self.daemon.clock.seconds()
        try:
            record = await start_rebalance(self.daemon.jobs, settings)
        except RebalanceBusy as busy:
            raise ApiError(
                409,
                {
                    "error": f"{busy}: pause, cancel or wait for it first",
                    "job": job_document(busy.job, now),
                },
            ) from busy
        return {"dry_run": False, "job": job_document(record, now)}

    async def get_rebalance(self, request: Request) -> JSON:
        from s3balance.jobs import job_document

        balancer = self.daemon.config.balancer
        under_way = await active_rebalance(self.daemon.store)
        now = self.daemon.clock.seconds()
        return {
            "settings": {
                "rebalance": balancer.rebalance,
                "threshold": balancer.rebalance_threshold,
                "interval": balancer.rebalance_interval,
            },
            "job": None if under_way is None else job_document(
                under_way, now, self.daemon.jobs.active.get(under_way.id)
            ),
            "last_check": self.daemon.rebalance_watch.last,
        }  # fmt: skip

    # -- jobs --------------------------------------------------------------------------------

    async def get_jobs(self, request: Request) -> JSON:
        from s3balance.db.records import JOB_STATES
        from s3balance.jobs import job_document

        state = _query(request, "state", required=False)
        if state is not None and state not in JOB_STATES:
            raise _error(400, f"state: {state!r} is not one of {', '.join(JOB_STATES)}")
        records = await self.daemon.store.list_jobs(None if state is None else (state,), 200)
        now = self.daemon.clock.seconds()
        running = self.daemon.jobs.active
        return {"jobs": [job_document(r, now, running.get(r.id)) for r in records]}

    async def get_job(self, request: Request, text: str) -> JSON:
        from s3balance.jobs import job_document

        job_id = _job_id(text)
        record = await self.daemon.store.get_job(job_id)
        if record is None:
            raise _error(404, f"no job {job_id}")
        live = self.daemon.jobs.active.get(job_id)
        return job_document(record, self.daemon.clock.seconds(), live)

    async def pause_job(self, request: Request, text: str) -> JSON:
        return await self._control_job(text, "pause")

    async def resume_job(self, request: Request, text: str) -> JSON:
        return await self._control_job(text, "resume")

    async def cancel_job(self, request: Request, text: str) -> JSON:
        return await self._control_job(text, "cancel")

    async def _control_job(self, text: str, action: str) -> JSON:
        from s3balance.db.store import JobStateError
        from s3balance.jobs import job_document

        job_id = _job_id(text)
        try:
            record = await self.daemon.jobs.control(job_id, action)
        except JobStateError as error:
            raise _error(409, str(error)) from error
        if record is None:
            raise _error(404, f"no job {job_id}")
        if record.kind == "drain" and action == "cancel":
            # The bucket takes writes again here at once (elsewhere within a flush period).
            self.daemon.pool.set_drained(await self.daemon.store.drained_backends())
        return job_document(record, self.daemon.clock.seconds())

    async def post_scrub(self, request: Request) -> JSON:
        from s3balance.scrub import DEFAULT_GRACE, scrub

        body = _json_body(request)
        remove = body.get("remove_orphans", False)
        if not isinstance(remove, bool):
            raise _error(400, "remove_orphans must be true or false")
        grace = body.get("grace", DEFAULT_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise _error(400, "grace must be a number of seconds >= 0")
        available = self.daemon.pool.backends()
        names = body.get("backends")
        if names is None:
            names = sorted(available)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _error(400, "backends must be a list of real bucket names")
        unknown = sorted(set(names) - set(available))
        if unknown:
            raise _error(404, f"no real bucket named {', '.join(unknown)}")
        report = await scrub(
            self.daemon.store,
            {name: available[name] for name in names},
            remove_orphans=remove,
            grace=float(grace),
            now=self.daemon.clock.seconds,
            record_operation=self.daemon.pool.record_operation,
        )
        return report.to_json()

    async def _month(self, month: str, include: list[str]) -> JSON:
        # Counts still in the pool's memory go to the store first, so the answer is complete.
        await self.daemon.pool.flush()
        counts = await self.daemon.store.operation_counts(month)
        return _month_document(month, counts, include)

    # -- for the web console -----------------------------------------------------------------

    async def create_bucket(self, request: Request) -> JSON:
        body = _json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _error(400, "name: a bucket name is required")
        if name in self.daemon.pool.names():
            raise _error(409, f"{name!r} is a real bucket's name")
        await _s3_call(self.daemon.gateway.create_bucket(name))
        record = await self.daemon.store.get_bucket(name)
        return _virtual_bucket(record)

    async def delete_bucket(self, request: Request, name: str) -> JSON:
        if name in self.daemon.pool.names():
            raise _error(409, f"{name!r} is a real bucket: remove it from the configuration")
        await _s3_call(self.daemon.gateway.delete_bucket(name))
        return {"deleted": name}

    async def get_virtual_buckets(self, request: Request) -> JSON:
        totals = await self.daemon.store.bucket_totals()
        buckets = []
        for record in await self.daemon.store.list_buckets():
            counted = totals.get(record.name)
            buckets.append(
                {
                    **_virtual_bucket(record),
                    "object_count": counted.object_count if counted else 0,
                    "bytes": counted.bytes if counted else 0,
                }
            )
        return {"buckets": buckets}

    async def list_objects(self, request: Request, name: str) -> JSON:
        prefix = _query(request, "prefix", required=False) or ""
        delimiter = _query(request, "delimiter", required=False)
        start_after = _query(request, "start_after", required=False) or ""
        text = _query(request, "max_keys", required=False) or str(DEFAULT_PAGE)
        if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
            raise _error(400, f"max_keys: {text!r} is not a whole number from 1 to {MAX_PAGE}")
        page = await _s3_call(
            self.daemon.gateway.list_objects(
                name,
                prefix=prefix,
                delimiter="/" if delimiter is None else delimiter,
                start_after=start_after,
                max_keys=int(text),
            )
        )
        return {
            "bucket": name,
            "prefix": prefix,
            "objects": [_object_document(record) for record in page.objects],
            "prefixes": list(page.common_prefixes),
            "truncated": page.is_truncated,
            "next_start_after": page.next_marker if page.is_truncated else None,
        }

    async def download_object(self, request: Request, name: str) -> JSON:
        from s3balance.reads import ReadRequest
        from s3balance.web.request import StreamingRequest

        if not isinstance(request, StreamingRequest):
            raise _error(501, "downloads need the daemon's own site (a streaming request)")
        key = _query(request, "key")
        assert key is not None
        wanted = ReadRequest(with_body=request.method != b"HEAD", may_redirect=False)
        plan = await _s3_call(self.daemon.gateway.read(name, key, wanted))
        if plan.stream is None:
            return _object_document(plan.record)
        async with plan:
            await self._send_object(request, key, plan.record, plan.stream)
        return {}

    async def _send_object(
        self, request: StreamingRequest, key: str, record: Any, stream: Any
    ) -> None:
        """Stream ``record``'s bytes as an attachment (the plan holding them counts as a reader
        of their location, so an overwrite does not delete them under the download)."""
        from s3balance.web.relay import relay_object

        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)
        request.setResponseCode(200)
        content_type = record.headers.get("content-type") or "application/octet-stream"
        request.setHeader(b"content-type", content_type.encode("latin-1", "replace"))
        request.setHeader(b"content-disposition", _attachment(key))
        request.setHeader(b"etag", record.etag.encode("latin-1", "replace"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"sandbox")
        stall = float(self.daemon.config.server.write_timeout) or 60.0
        try:
            await relay_object(request, stream, self.daemon.clock, max(stall, 60.0))
        except Exception as error:  # the connection was aborted: nothing more to answer
            log.warn(
                "download of {bucket}/{key} through the admin API ended: {error}",
                bucket=record.bucket, key=key, error=error,
            )
        # The response is over (finished, or its connection aborted): wait until
        # twisted.web says so, so that nothing is written after it.
        await finished

    async def delete_object(self, request: Request, name: str) -> JSON:
        key = _query(request, "key")
        assert key is not None
        await _s3_call(self.daemon.gateway.delete_object(name, key))
        return {"deleted": key, "bucket": name}

    async def get_balancer(self, request: Request) -> JSON:
        from s3balance.admin.history import balancer_decisions

        decisions = balancer_decisions()
        names = sorted(set(self.daemon.pool.names()) | set(decisions))
        return {
            "strategy": self.daemon.config.balancer.strategy,
            "strategies": list(STRATEGIES),
            "decisions": {
                name: {"total": sum(decisions.get(name, {}).values()), **decisions.get(name, {})}
                for name in names
            },
        }

    async def get_history(self, request: Request) -> JSON:
        from s3balance.admin.history import DEFAULT_PERIOD

        history = self.daemon.traffic
        if history is None:
            return {"period": DEFAULT_PERIOD, "samples": []}
        return {"period": history.period, "samples": history.samples()}

    async def get_config_yaml(self, request: Request) -> JSON:
        from s3balance.admin.configcheck import config_yaml, restart_keys

        document = config_to_dict(self.daemon.config, mask_secrets=True)
        return {"yaml": config_yaml(document), "restart_keys": restart_keys()}

    async def validate_config(self, request: Request) -> JSON:
        from s3balance.admin.configcheck import problem_documents

        body = _json_body(request)
        partial, lines = _partial_from(body)
        current = config_to_dict(self.daemon.config, mask_secrets=False)
        try:
            # JSON is typed (a number is not a secret); YAML text reads like the file.
            parse_config(merge_config(current, partial), environ={}, typed="yaml" not in body)
        except ConfigError as error:
            return {"valid": False, "problems": problem_documents(error.problems, lines)}
        return {"valid": True, "problems": []}

    async def post_config_yaml(self, request: Request) -> JSON:
        from s3balance.admin.configcheck import problem_documents

        body = _json_body(request)
        partial, lines = _partial_from(body)
        current = config_to_dict(self.daemon.config, mask_secrets=False)
        try:
            new = parse_config(
                merge_config(current, partial), environ={}, typed="yaml" not in body
            )
            changes = await self.reconfigurator.apply(new)
        except ConfigError as error:
            problems = problem_documents(error.problems, lines)
            raise ApiError(400, {"errors": error.problems, "problems": problems}) from error
        return {"changes": changes, "config": config_to_dict(self.daemon.config, True)}


def _match(pattern: tuple[str, ...], segments: list[str]) -> list[str] | None:
    if len(pattern) != len(segments):
        return None
    params = []
    for expected, actual in zip(pattern, segments, strict=True):
        if expected == "{}":
            if not actual:
                return None
            params.append(actual)
        elif expected != actual:
            return None
    return params


def _job_id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise _error(404, f"no job {text!r} (job ids are numbers)")
    return int(text)


def _virtual_bucket(record: Any) -> JSON:
    return {
        "name": record.name,
        "virtual": True,
        "created": record.created_at,
        "from_config": record.from_config,
    }


def _json_body(request: Request) -> JSON:
    content = request.content
    data = content.read(MAX_BODY + 1) if content is not None else b""
    if len(data) > MAX_BODY:
        raise _error(413, f"request body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(data or b"{}")
    except ValueError as error:
        raise _error(400, f"request body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise _error(400, "request body must be a JSON object")
    return body


def _rebalance_settings(body: JSON, config: Config) -> RebalanceSettings:
    """A rebalance request's settings; the mode and threshold default to ``balancer.rebalance``
    and ``balancer.rebalance_threshold``."""
    configured = config.balancer.rebalance
    mode = body.get("mode", configured if configured in MODES else None)
    if mode not in MODES:
        raise _error(400, f"mode must be one of {', '.join(MODES)} (got {json.dumps(mode)})")
    threshold = body.get("threshold", config.balancer.rebalance_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise _error(400, f"threshold must be a number from 0 to 1 (got {json.dumps(threshold)})")
    max_moves = body.get("max_moves", MAX_MOVES)
    if isinstance(max_moves, bool) or not isinstance(max_moves, int) or max_moves < 1:
        raise _error(400, f"max_moves must be a whole number, 1 or more (got {max_moves!r})")
    max_bytes = body.get("max_bytes")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise _error(400, f"max_bytes must be a whole number, 1 or more (got {max_bytes!r})")
    try:
        return RebalanceSettings(mode, float(threshold), max_moves, max_bytes)
    except ValueError as error:
        raise _error(400, str(error)) from error


def _query(request: Request, name: str, required: bool = True) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        if required:
            raise _error(400, f"query parameter {name} (YYYY-MM) is required")
        return None
    return values[0].decode("utf-8", "replace")


def _is_month(text: str) -> bool:
    match = _MONTH_RE.match(text)
    return match is not None and 1 <= int(match.group(2)) <= 12


def _months_between(start: str | None, end: str | None) -> list[str]:
    for text in (start, end):
        if text is None or not _is_month(text):
            raise _error(400, f"not a month: {text!r} (expected YYYY-MM)")
    assert start is not None and end is not None
    if start > end:
        raise _error(400, f"start {start} is after end {end}")
    year, month = int(start[:4]), int(start[5:])
    months: list[str] = []
    while True:
        current = f"{year:04d}-{month:02d}"
        months.append(current)
        if current == end:
            return months
        if len(months) == MAX_RANGE_MONTHS:
            raise _error(400, f"a range covers at most {MAX_RANGE_MONTHS} months")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _counts(counts: OperationCounts | None) -> JSON:
    if counts is None:
        return {"class_a": 0, "class_b": 0, "bytes_in": 0, "bytes_out": 0}
    return {
        "class_a": counts.class_a,
        "class_b": counts.class_b,
        "bytes_in": counts.bytes_in,
        "bytes_out": counts.bytes_out,
    }


def _month_document(month: str, counts: dict[str, OperationCounts], include: list[str]) -> JSON:
    names = sorted(set(counts) | set(include))
    backends = {name: _counts(counts.get(name)) for name in names}
    total = {
        key: sum(b[key] for b in backends.values())
        for key in ("class_a", "class_b", "bytes_in", "bytes_out")
    }
    return {"month": month, "backends": backends, "total": total}


# -- helpers of the web console's endpoints ---------------------------------------------------

#: Objects per page of ``GET /api/buckets/{name}/objects`` by default, and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


async def _s3_call(awaitable: Any) -> Any:
    """Await a gateway call; its S3 error becomes the same status with a JSON body."""
    from s3balance.errors import S3Error

    try:
        return await awaitable
    except S3Error as error:
        raise ApiError(error.status, {"error": error.message, "code": error.code}) from error


def _object_document(record: Any) -> JSON:
    return {
        "key": record.key,
        "size": record.size,
        "last_modified": record.last_modified,
        "etag": unquoted_etag(record.etag),
        "content_type": record.headers.get("content-type"),
        "locations": [
            {"backend": location.backend, "real_key": location.real_key}
            for location in record.locations
        ],
    }


def _attachment(key: str) -> bytes:
    """``Content-Disposition`` naming the key's last segment (RFC 6266 / RFC 5987)."""
    from urllib.parse import quote

    filename = key.rstrip("/").rsplit("/", 1)[-1] or "object"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}".encode(
        "ascii"
    )


def _partial_from(body: JSON) -> tuple[JSON, dict[str, int]]:
    """The configuration a console request carries: ``{"yaml": text}`` (with the line of each
    key) or ``{"config": {...}}``.

    :raises ApiError: 400 with ``problems`` for YAML that does not parse.
    """
    from s3balance.admin.configcheck import YamlTextError, parse_yaml_text

    if "yaml" in body:
        text = body["yaml"]
        if not isinstance(text, str):
            raise _error(400, "yaml must be a string")
        try:
            return parse_yaml_text(text)
        except YamlTextError as error:
            problem = {"key": None, "message": error.message, "line": error.line}
            problem["text"] = error.message
            raise ApiError(400, {"errors": [error.message], "problems": [problem]}) from error
    partial = body.get("config")
    if not isinstance(partial, dict):
        raise _error(400, 'send {"yaml": "<text>"} or {"config": {...}}')
    return partial, {}
