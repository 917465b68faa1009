"""``GET /health``: one JSON document saying whether the daemon can serve, and why not."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from twisted.web.resource import Resource
from twisted.web.server import Request

if TYPE_CHECKING:
    from s3balance.pool import BackendPool


def health_report(pool: BackendPool) -> dict[str, object]:
    """``healthy`` when every enabled backend is, ``degraded`` when some are, ``unhealthy`` when
    no enabled backend can take writes."""
    backends: dict[str, object] = {}
    enabled_healthy = enabled_total = 0
    for name in pool.names():
        state = pool.health.state(name)
        enabled = pool.config(name).enabled
        if enabled:
            enabled_total += 1
            enabled_healthy += int(state.healthy)
        backends[name] = {
            "enabled": enabled,
            "healthy": state.healthy,
            "last_probe": state.last_probe,
            "last_error": state.last_error,
            "probe_latency_seconds": state.latency,
        }
    if enabled_total and enabled_healthy == enabled_total:
        status = "healthy"
    elif enabled_healthy:
        status = "degraded"
    else:
        status = "unhealthy"
    return {"status": status, "backends": backends}


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, pool: BackendPool, worker: int | None = None) -> None:
        super().__init__()
        self._pool = pool
        #: With ``server.workers`` above 1: which worker answers, in ``x-s3balance-worker``.
        self._worker = None if worker is None else f"{worker} {os.getpid()}".encode()

    def render_GET(self, request: Request) -> bytes:
        report = health_report(self._pool)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if self._worker is not None:
            request.setHeader(b"x-s3balance-worker", self._worker)
        if report["status"] == "unhealthy":
            request.setResponseCode(503)
        return json.dumps(report, indent=2).encode("utf-8") + b"\n"
