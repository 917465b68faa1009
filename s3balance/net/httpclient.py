"""Connections to HTTP servers through Twisted's Agent: the pool, the endpoints, TLS trust.

Nothing here knows S3; the S3 adapter (:mod:`s3balance.backends.s3client`) signs and sends its
requests through an agent made by :func:`make_agent`.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from s3balance.net.sockets import tune_transport

#: Persistent connections per backend host; Twisted's default of 2 serialises concurrent GETs.
#: Above the small requests one worker has in flight at once (64 connections in the bench):
#: with 32, a third of small GETs opened (and closed) a connection of their own.
MAX_PERSISTENT_PER_HOST = 128
#: Idle connections are dropped well before servers drop them (AWS after about 20 s, nginx 75 s,
#: SeaweedFS 120 s): a request written on a connection the server is just closing fails, and a
#: streamed body cannot be replayed.
CACHED_CONNECTION_TIMEOUT = 5


def make_http_pool(reactor: Any, persistent: bool = True) -> HTTPConnectionPool:
    """A connection pool suited to backends (more connections per host, short idle life)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = CACHED_CONNECTION_TIMEOUT
    pool.retryAutomatically = True
    return pool


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


def make_agent(
    reactor: Any,
    pool: HTTPConnectionPool,
    connect_timeout: float,
    ca_bundle: str | None = None,
) -> IAgent:
    """An Agent whose connections are tuned (:class:`TunedEndpoint`) and whose ``https``
    certificates are checked against ``ca_bundle`` when given, else the system's roots."""
    policy: IPolicyForHTTPS = (
        BrowserLikePolicyForHTTPS(trustRoot=load_trust_root(ca_bundle))
        if ca_bundle
        else BrowserLikePolicyForHTTPS()
    )
    return Agent.usingEndpointFactory(
        reactor, TunedEndpointFactory(reactor, policy, connect_timeout), pool=pool
    )


@implementer(IStreamClientEndpoint)
class TunedEndpoint:
    """Connects like the wrapped endpoint, then tunes the connection (larger reads, no Nagle:
    Agent writes a request's headers and its body separately)."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        def tuned(protocol: Any) -> Any:
            tune_transport(protocol.transport)
            return protocol

        return self._inner.connect(protocol_factory).addCallback(tuned)


@implementer(IAgentEndpointFactory)
class TunedEndpointFactory:
    """Agent's endpoints, as stock Agent makes them (TCP for ``http``, TLS over TCP for
    ``https``, the policy's certificate checks, the connect timeout), each wrapped in a
    :class:`TunedEndpoint`."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout
        #: Agent asks for an endpoint on every request, even one a pooled connection serves:
        #: one per backend address, built once (endpoints are reusable).
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        found = self._endpoints.get(key)
        if found is None:
            found = self._endpoints[key] = self._endpoint(uri)
        return found

    def _endpoint(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):  # nothing to resolve: no trip through the resolver's threads
            endpoint = TCP4ClientEndpoint(
                self._reactor, host, uri.port, timeout=self._connect_timeout
            )
        else:
            endpoint = HostnameEndpoint(
                self._reactor, host, uri.port, timeout=self._connect_timeout
            )
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return TunedEndpoint(endpoint)
