"""The ``/web`` subtree: one HTML shell for every page, and its script, style sheet and icon.

Why a static shell and a script rather than pages rendered on the server: the console holds no
session (the admin token lives in the browser tab and goes out as ``Authorization: Bearer`` on
each admin API call, so there is no cookie and no CSRF), so the server cannot render data into a
page without the token anyway.  The server therefore only hands out fixed files; every figure on
a page comes from the admin API, fetched by ``app.js``.  No build step: the files in
``static/`` are what the browser runs, shipped as package data in the wheel.

Every answer carries a strict Content-Security-Policy (only this origin's script, style, images
and API; no inline script or style; no framing), ``X-Frame-Options: DENY``,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request

#: The pages the shell serves (the script draws the one the path names).
PAGES = frozenset(
    {"", "signin", "dashboard", "backends", "buckets", "balancer", "jobs", "stats", "settings"}
)

#: Assets under ``/web/static/`` and their content types.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _read(name: str) -> bytes:
    return resources.files("s3balance.console").joinpath("static", name).read_bytes()


class ConsoleResource(Resource):
    """Serves ``/web``, ``/web/<page>``, ``/web/buckets/<name>`` and ``/web/static/<asset>``;
    anything else under ``/web`` is 404.  The files are read once, when the daemon starts."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._files = {name: _read(name) for name in ASSETS}
        self._shell = _read("shell.html")
        self._etags = {
            name: b'"' + hashlib.sha256(data).hexdigest()[:16].encode() + b'"'
            for name, data in self._files.items()
        }

    def render(self, request: Request) -> bytes:
        # On every answer, the 405 for another method included.
        self._security_headers(request)
        result: bytes = super().render(request)
        return result

    def render_GET(self, request: Request) -> bytes:
        segments = [s.decode("utf-8", "replace") for s in request.postpath or []]
        while segments and segments[-1] == "":
            segments.pop()
        if len(segments) == 2 and segments[0] == "static" and segments[1] in ASSETS:
            return self._asset(request, segments[1])
        if (
            not segments
            or (len(segments) == 1 and segments[0] in PAGES)
            or (len(segments) == 2 and segments[0] == "buckets" and segments[1])
        ):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return self._shell
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found: no such console page.\n"

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)

    def _asset(self, request: Request, name: str) -> bytes:
        request.setHeader(b"content-type", ASSETS[name].encode("ascii"))
        request.setHeader(b"cache-control", b"no-cache")
        etag = self._etags[name]
        request.setHeader(b"etag", etag)
        if request.getHeader("if-none-match") == etag.decode("ascii"):
            request.setResponseCode(304)
            return b""
        return self._files[name]

    @staticmethod
    def _security_headers(request: Request) -> None:
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii"))
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cross-origin-opener-policy", b"same-origin")
