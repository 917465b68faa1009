"""The stock ``twisted.web.proxy.ReverseProxyResource`` before the backend: what Twisted itself
spends on proxying one request, the bar for s3balance's small objects.

Run as its own process (``python -m bench.twistedproxy PORT UPSTREAM_PORT``) so its CPU time is
read from ``/proc`` like the other servers'.  Nothing is changed from stock but the access log,
which is off as it is for every other server the bench measures.
"""

from __future__ import annotations

import os
import sys

from bench.daemon import REPO_ROOT
from bench.nginx import BACKEND_BUCKET
from bench.procs import LOOPBACK, LoopbackServer, ServerProcess, free_port


def serve(port: int, upstream_port: int) -> None:
    """Listen on ``port`` and proxy every request to ``upstream_port``, until killed."""
    from twisted.internet import reactor
    from twisted.web.http import Request
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.server import Site

    class QuietSite(Site):
        def log(self, request: Request) -> None:
            """No access log."""

    site = QuietSite(ReverseProxyResource(LOOPBACK, upstream_port, b""))
    reactor.listenTCP(port, site, interface=LOOPBACK)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


class TwistedProxy(LoopbackServer):
    """The stock reverse proxy as a child process; its first process is the python serving."""

    ready_path = f"/{BACKEND_BUCKET}"

    def __init__(self, workdir: str, upstream_port: int) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        self.server = ServerProcess(
            "twisted-proxy",
            [sys.executable, "-m", "bench.twistedproxy", str(self.port), str(upstream_port)],
            os.path.join(workdir, "twisted-proxy.log"),
            cwd=workdir,
            env=env,
        )


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
