"""Requests to HTTP servers over pooled persistent connections (:mod:`s3balance.net.http11`):
the pool, the endpoints, TLS trust, and the one retry of a request a stale connection lost.

Nothing here knows S3; the S3 adapter (:mod:`s3balance.backends.s3client`) signs its requests
and sends them through an :class:`HTTPClient`.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from s3balance.net.http11 import HTTP11Connection, Response, encode_head
from s3balance.net.sockets import tune_transport

#: Idle persistent connections kept per server.  Above the small requests one worker has in
#: flight at once (64 connections in the bench): with 32, a third of small GETs opened (and
#: closed) a connection of their own.
MAX_PERSISTENT_PER_HOST = 128
#: Idle connections are dropped well before servers drop them (AWS after about 20 s, nginx 75 s,
#: SeaweedFS 120 s): a request written on a connection the server is just closing fails, and a
#: streamed body cannot be replayed.
CACHED_CONNECTION_TIMEOUT = 5
#: Methods a request without body may be sent again for, when a reused connection was lost
#: before any answer (the server closed it between requests); as Agent retries them.
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


class ConnectionPool:
    """Idle persistent connections, per server, for every :class:`HTTPClient` sharing it.

    A connection is idle between requests only; busy ones are their request's.  The most
    recently used idle connection is taken first, so the others age out after
    ``idle_timeout`` when traffic drops.  One timer sweeps out the aged ones (a timer per idle
    spell would be set and cancelled once per request).
    """

    def __init__(
        self,
        reactor: Any,
        max_idle_per_server: int = MAX_PERSISTENT_PER_HOST,
        idle_timeout: float = CACHED_CONNECTION_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._max_idle = max_idle_per_server
        self._idle_timeout = idle_timeout
        #: Per server, oldest first.
        self._idle: dict[Hashable, list[HTTP11Connection]] = {}
        self._idle_since: dict[HTTP11Connection, float] = {}
        self._server_of: dict[HTTP11Connection, Hashable] = {}
        self._closing: dict[HTTP11Connection, Deferred[None]] = {}
        self._sweep: IDelayedCall | None = None

    def take(self, server: Hashable) -> HTTP11Connection | None:
        """An idle connection to ``server``, now the caller's; ``None`` when there is none."""
        idle = self._idle.get(server)
        if not idle:
            return None
        oldest_allowed = self._reactor.seconds() - self._idle_timeout
        while idle:
            connection = idle.pop()
            del self._server_of[connection]
            since = self._idle_since.pop(connection)
            if connection.usable and since > oldest_allowed:
                self._stop_sweep_when_empty()
                return connection
            connection.close()  # aged out, not swept yet: so are the older ones
        self._stop_sweep_when_empty()
        return None

    def connection(self, server: Hashable) -> HTTP11Connection:
        """A new connection's protocol whose idle times and loss this pool follows."""
        return HTTP11Connection(lambda made: self._put(server, made), self._forget)

    def _put(self, server: Hashable, connection: HTTP11Connection) -> None:
        idle = self._idle.setdefault(server, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        idle.append(connection)
        self._server_of[connection] = server
        self._idle_since[connection] = self._reactor.seconds()
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self._idle_timeout, self._expire)

    def _unlist(self, connection: HTTP11Connection) -> None:
        server = self._server_of.pop(connection, None)
        if server is None:
            return
        self._idle[server].remove(connection)
        del self._idle_since[connection]
        self._stop_sweep_when_empty()

    def _stop_sweep_when_empty(self) -> None:
        if not self._idle_since and self._sweep is not None:
            if self._sweep.active():
                self._sweep.cancel()
            self._sweep = None

    def _expire(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back for the next oldest."""
        self._sweep = None
        now = self._reactor.seconds()
        aged = [
            connection
            for connection, since in self._idle_since.items()
            if since <= now - self._idle_timeout
        ]
        for connection in aged:
            self._unlist(connection)
            connection.close()
        if self._idle_since:
            oldest = min(self._idle_since.values())
            self._sweep = self._reactor.callLater(
                max(0.0, oldest + self._idle_timeout - now), self._expire
            )

    def _forget(self, connection: HTTP11Connection) -> None:
        self._unlist(connection)
        closing = self._closing.pop(connection, None)
        if closing is not None:
            closing.callback(None)

    def closeCachedConnections(self) -> Deferred[None]:
        """Close every idle connection; fires once they are closed (as Agent's pool does)."""
        waits = []
        for connection in list(self._idle_since):
            self._unlist(connection)
            waits.append(self._closing.setdefault(connection, Deferred()))
            connection.close()
        if not waits:
            return succeed(None)
        return gatherResults(waits).addCallback(lambda _: None)


def make_http_pool(reactor: Any) -> ConnectionPool:
    """A connection pool suited to backends (many idle connections per server, short idle
    life)."""
    return ConnectionPool(reactor)


def load_trust_root(ca_bundle: str) -> Any:
    """A trust root made of every certificate in a PEM bundle file.

    :raises ValueError: the file holds no PEM certificate.
    """
    with open(ca_bundle, "rb") as f:
        pem = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    if not blocks:
        raise ValueError(f"no PEM certificate in {ca_bundle}")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])


@implementer(IStreamClientEndpoint)
class TunedEndpoint:
    """Connects like the wrapped endpoint, then tunes the connection (larger reads, no Nagle:
    a streamed request's head and body are written separately)."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        def tuned(protocol: Any) -> Any:
            tune_transport(protocol.transport)
            return protocol

        return self._inner.connect(protocol_factory).addCallback(tuned)


def make_endpoint(
    reactor: Any,
    scheme: str,
    host: str,
    port: int,
    connect_timeout: float,
    policy: IPolicyForHTTPS,
) -> IStreamClientEndpoint:
    """TCP for ``http``, TLS over TCP with the policy's certificate checks for ``https``, the
    connect timeout, tuned (:class:`TunedEndpoint`)."""
    if not host.isascii():
        raise ValueError(f"the host {host!r} is not ASCII")
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):  # nothing to resolve: no trip through the resolver's threads
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if scheme == "https":
        endpoint = wrapClientTLS(policy.creatorForNetloc(host.encode("ascii"), port), endpoint)
    elif scheme != "http":
        raise ValueError(f"unsupported scheme {scheme!r}")
    return TunedEndpoint(endpoint)


class _OneConnection(Factory):
    """Builds the one protocol an endpoint connects."""

    def __init__(self, connection: HTTP11Connection) -> None:
        self._connection = connection

    def buildProtocol(self, addr: Any) -> HTTP11Connection:
        return self._connection


class HTTPClient:
    """Sends requests to one server (``scheme://host:port``) over ``pool``'s connections.

    :param ca_bundle: a PEM file of CA certificates trusted for ``https`` instead of the
        system's.
    """

    def __init__(
        self,
        reactor: Any,
        pool: ConnectionPool,
        scheme: str,
        host: str,
        port: int,
        connect_timeout: float,
        ca_bundle: str | None = None,
    ) -> None:
        policy: IPolicyForHTTPS = (
            BrowserLikePolicyForHTTPS(trustRoot=load_trust_root(ca_bundle))
            if ca_bundle
            else BrowserLikePolicyForHTTPS()
        )
        self._pool = pool
        self._endpoint = make_endpoint(reactor, scheme, host, port, connect_timeout, policy)
        #: Connections are shared with clients of the same server and trust only.
        self._server = (scheme, host, port, ca_bundle)

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: IBodyProducer | None = None,
        length: int | None = None,
        small_body: bytes | None = None,
    ) -> Deferred[Response]:
        """Send a request; fires with the response once its headers arrived and the request
        was sent whole.

        :param target: the request target (path and query), sent as given.
        :param headers: every header but ``Content-Length`` (``Host`` included).
        :param body: a streamed body of ``length`` bytes; or ``small_body``, written with the
            head.  Without either no ``Content-Length`` is sent.
        """
        if small_body is not None:
            length = len(small_body)
        head = encode_head(method, target, headers, length)
        connection = self._pool.take(self._server)
        if connection is None:
            return self._on_new_connection(method, head, body, small_body)
        sending = connection.request(method, head, body, small_body)
        if body is None and small_body is None and method in RETRIED_METHODS:

            def again(failure: Failure) -> Any:
                # Lost before any answer on a connection that had served before: the server
                # closed it between requests; a new connection gets the one retry.
                if failure.check(ResponseNeverReceived):
                    return self._on_new_connection(method, head, None, None)
                return failure

            sending.addErrback(again)
        return sending

    def _on_new_connection(
        self, method: str, head: bytes, body: IBodyProducer | None, small_body: bytes | None
    ) -> Deferred[Response]:
        connection = self._pool.connection(self._server)
        connecting: Deferred[Any] = self._endpoint.connect(_OneConnection(connection))
        return connecting.addCallback(lambda made: made.request(method, head, body, small_body))
