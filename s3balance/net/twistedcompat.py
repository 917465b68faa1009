"""Every use of a private Twisted attribute, in one place, each with the reason we need it.

Stock ``twisted.web`` buffers whole request bodies and owns its sockets; streaming S3 bodies
through it, and handing a socket to the kernel for a zero-copy download, needs a few of its
internals.  They are reached only through the functions below, and :func:`check_twisted` (run
when the S3 site is built, so at daemon start) verifies that the running Twisted still has the
ones without a fallback, naming the attribute and the Twisted version when one is gone.

Each entry of :data:`REQUIRED` has no safe substitute: without it streaming would silently
misbehave, so its absence stops the daemon.  The entries of :data:`DEGRADABLE` have a documented
fallback, used per call when the attribute is missing:

- ``HTTPChannel._send100Continue``: we write the same ``100 Continue`` line ourselves.
- ``HTTPChannel._networkProducer``: the channel's transport (what Twisted uses for a transport
  that is a push producer, as every TCP and TLS transport is).
- ``FileDescriptor._tempDataBuffer``/``_tempDataLen``: the zero-copy download is not used for
  that transport (the ordinary relay path serves it).
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.web.http import HTTPChannel

import twisted

__all__ = [
    "DEGRADABLE",
    "REQUIRED",
    "TwistedIncompatible",
    "abort_call_pending",
    "can_take_unsent",
    "check_twisted",
    "handling_request",
    "network_producer",
    "request_line",
    "request_producer",
    "restore_idle_timeout_later",
    "send_100_continue",
    "set_abort_call",
    "set_waiting_for_transport",
    "take_unsent_buffers",
    "waiting_for_transport",
]

#: Attributes without a fallback: (owner, attribute) -> why we need it.
REQUIRED: dict[tuple[str, str], str] = {
    ("HTTPChannel", "_command"): "the request line's method, known when the headers end (a "
    "streamed request runs before Twisted's own requestReceived)",
    ("HTTPChannel", "_path"): "the request line's target, for the same reason",
    ("HTTPChannel", "_version"): "the request line's HTTP version, for the same reason and to "
    "decide on 100 Continue",
    ("HTTPChannel", "_savedTimeOut"): "the idle timeout Twisted restores when a request is done; "
    "a streamed request suspends it while its body's own stall timer runs",
    ("HTTPChannel", "_handlingRequest"): "whether a request is being answered: the header "
    "deadline only covers the headers of a request not yet dispatched",
    ("HTTPChannel", "_requestProducer"): "the response's producer, resumed when our write "
    "buffer drains while the client's reads stay held",
    ("HTTPChannel", "_waitingForTransport"): "whether our write buffer holds the client paused; "
    "the client's reads are resumed only when neither it nor a streamed body holds them",
    ("HTTPChannel", "_abortingCall"): "the pending forced abort of a closing connection; a "
    "refusal schedules one so that a client that reads nothing cannot hold the connection",
    ("HTTPChannel", "_maybeChooseTransferDecoder"): "the Content-Length check we override (a "
    "renamed hook would silently drop our strict length parsing)",
    ("HTTPChannel", "_respondToBadRequestAndDisconnect"): "the refusal of what Twisted cannot "
    "parse, which we override to answer with S3's XML error (a renamed hook would bring back a "
    "bare 400 with no body)",
}

#: Attributes with a fallback (see the module docstring): (owner, attribute) -> why.
DEGRADABLE: dict[tuple[str, str], str] = {
    ("HTTPChannel", "_send100Continue"): "answer Expect: 100-continue only when the body is "
    "wanted",
    ("HTTPChannel", "_networkProducer"): "pause and resume reading from the client for a "
    "streamed body's backpressure",
    ("FileDescriptor", "_tempDataBuffer"): "take back what a transport has not yet sent before "
    "the kernel writes to its socket (zero-copy download)",
    ("FileDescriptor", "_tempDataLen"): "the length of that buffer, reset with it",
}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class TwistedIncompatible(RuntimeError):
    """The running Twisted lacks an internal attribute s3balance cannot do without."""


def _missing(owner: str, attribute: str, why: str) -> TwistedIncompatible:
    return TwistedIncompatible(
        f"Twisted {twisted.__version__} has no {owner}.{attribute}, which s3balance needs "
        f"({why}); run s3balance with a Twisted version it supports"
    )


_INSPECTED_ADDRESS = IPv4Address("TCP", "127.0.0.1", 0)


class _InspectedTransport:
    """The transport of a channel that is only inspected: it reads one request line and never
    writes.  Not ``twisted.internet.testing.StringTransport``, whose module brings Trial and
    ``unittest`` into the daemon for its whole life (about 1 MiB resident)."""

    disconnecting = False

    def getPeer(self) -> IPv4Address:
        return _INSPECTED_ADDRESS

    def getHost(self) -> IPv4Address:
        return _INSPECTED_ADDRESS

    def write(self, data: bytes) -> None:
        raise AssertionError("an inspected channel never answers")

    def writeSequence(self, data: list[bytes]) -> None:
        raise AssertionError("an inspected channel never answers")

    def loseConnection(self) -> None:
        self.disconnecting = True


def _sample_channel() -> HTTPChannel:
    """A channel that has read a request line, so that its per-request attributes exist."""
    channel = HTTPChannel()
    channel.timeOut = None  # no idle timer on the reactor for a channel that is only inspected
    channel.makeConnection(_InspectedTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    return channel


def _samples() -> dict[str, Any]:
    return {"HTTPChannel": _sample_channel(), "FileDescriptor": FileDescriptor()}


def check_twisted(samples: dict[str, Any] | None = None) -> list[str]:
    """Verify the private attributes we rely on; raise for a missing required one.

    :param samples: objects to inspect by owner name (tests pass ones that lack an attribute);
        by default fresh Twisted objects.
    :returns: ``owner.attribute`` of each missing attribute whose fallback will be used.
    :raises TwistedIncompatible: a required attribute is missing (the message names it and
        the Twisted version).
    """
    if samples is None:
        samples = _samples()
    for (owner, attribute), why in REQUIRED.items():
        if not hasattr(samples[owner], attribute):
            raise _missing(owner, attribute, why)
    return [
        f"{owner}.{attribute}"
        for owner, attribute in DEGRADABLE
        if not hasattr(samples[owner], attribute)
    ]


@functools.cache
def check_running_twisted() -> tuple[str, ...]:
    """:func:`check_twisted` once per process."""
    return tuple(check_twisted())


# -- HTTPChannel ---------------------------------------------------------------------------------


def request_line(channel: Any) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of the request whose headers just ended."""
    return channel._command, channel._path, channel._version


def restore_idle_timeout_later(channel: Any, timeout: float) -> None:
    """Have Twisted restore the idle ``timeout`` when the current request is done."""
    channel._savedTimeOut = timeout


def send_100_continue(channel: Any) -> None:
    """Tell the client to send its body; without Twisted's method, write its line ourselves."""
    send = getattr(channel, "_send100Continue", None)
    if send is not None:
        send()
        return
    transport = getattr(channel, "transport", None)
    if transport is not None:
        transport.write(_CONTINUE)


def handling_request(channel: Any) -> bool:
    """Whether the channel dispatched a request that is not yet done."""
    return bool(channel._handlingRequest)


def network_producer(channel: Any) -> Any:
    """What pauses and resumes reading from the client: Twisted's producer, else the transport."""
    producer = getattr(channel, "_networkProducer", None)
    return producer if producer is not None else channel.transport


def request_producer(channel: Any) -> Any:
    """The producer registered for the current response, or ``None``."""
    return channel._requestProducer


def waiting_for_transport(channel: Any) -> bool:
    """Whether the channel's write buffer is full (Twisted paused the client for it).

    Required, so present on every real channel (:func:`check_twisted`); a stand-in channel
    without it (unit tests) counts as not waiting."""
    return bool(getattr(channel, "_waitingForTransport", False))


def set_waiting_for_transport(channel: Any, waiting: bool) -> None:
    """Record that the channel's write buffer drained (or filled)."""
    channel._waitingForTransport = waiting


def abort_call_pending(channel: Any) -> bool:
    """Whether a forced abort of the connection is already scheduled."""
    return channel._abortingCall is not None


def set_abort_call(channel: Any, call: Any) -> None:
    """Record the scheduled forced abort, so Twisted cancels it when the connection closes."""
    channel._abortingCall = call


# -- transports ----------------------------------------------------------------------------------


def can_take_unsent(transport: Any) -> bool:
    """Whether :func:`take_unsent_buffers` works on ``transport`` (else: no zero-copy)."""
    return hasattr(transport, "_tempDataBuffer") and hasattr(transport, "_tempDataLen")


def take_unsent_buffers(transport: Any) -> bytes:
    """Empty the write buffer Twisted keeps besides ``dataBuffer`` and return its bytes.

    Call only when :func:`can_take_unsent` said so."""
    pending = b"".join(transport._tempDataBuffer)
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    return pending


