"""The HTTP/1.1 connection of the S3 front: stock ``HTTPChannel`` made safe for streamed bodies.

Three things differ from stock (see ``/work/shared/design/streaming.md``, section 4):

- ``Expect: 100-continue`` is answered only when the body is actually wanted: at once for a
  buffered request, at the first ``RequestBody.startProducing`` for a streamed one, never when
  the request already has its final answer (pitfall 2).
- While a streamed body holds the client paused for backpressure, draining our own write buffer
  must not resume reading from the client (pitfall 6): one owner of the pause at a time.
- Once a connection is known to close after the current answer, whatever the client still
  sends (the unread rest of a body) is dropped, never parsed as a request (pitfall 1).

Header count and size limits stay those of stock Twisted (``maxHeaders``, ``totalHeadersSize``).
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel

#: Bytes read from a socket per ``recv`` (and, in Twisted, the write buffer above which the
#: producer feeding a connection is paused): Twisted's 64 KiB made per-chunk Python work (parsing,
#: filters, hand-over to the backend) a large share of an upload's CPU time.  Measured with the
#: bench: 1 MiB did not use clearly less CPU per GiB, and added 5-7 MiB to the daemon's peak
#: resident memory where 256 KiB adds about 3.
READ_SIZE = 256 << 10
#: Bytes handed to one ``send``: Twisted's 128 KiB, with one ``send`` per writable event, made
#: the client side lag the 256 KiB reads and pause the other socket every few chunks.  The
#: kernel takes what fits in its buffer; the rest waits for the next event, as before.
SEND_SIZE = 4 << 20


def tune_transport(transport: Any) -> None:
    """Larger reads and sends, no Nagle delay, on a TCP connection (or the one under TLS).

    Without ``TCP_NODELAY``, a small answer written in two pieces (headers, then body) can
    wait for the peer's delayed ACK.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        if candidate is None or not hasattr(candidate, "bufferSize"):
            continue
        candidate.bufferSize = READ_SIZE
        candidate.SEND_LIMIT = SEND_SIZE
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket (a UNIX socket endpoint)
        return


class S3Channel(HTTPChannel):
    """One client connection; HTTP/1.1 only (``S3Site`` never offers h2)."""

    _input_held = False
    _discarding = False

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_transport(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        if self._discarding or request.finished or request.startedWriting:
            return  # already answered: a 100 now would precede nothing the client should send
        if getattr(request, "streamed", False):
            return  # the request sends 100 Continue itself when its body is first consumed
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def allContentReceived(self) -> None:
        if self._discarding or not self.requests:
            # The request was answered before its body ended; the connection is closing.
            self._discarding = True
            return
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._input_held = False
        if not self.persistent:
            self._discarding = True
        super().requestDone(request)

    def hold_input(self) -> None:
        """Stop reading from the client (a streamed body's consumer is full)."""
        if self._input_held or self._closing():
            return
        self._input_held = True
        self._networkProducer.pauseProducing()

    def release_input(self) -> None:
        """Read from the client again, unless our own write buffer still wants it paused."""
        if not self._input_held:
            return
        self._input_held = False
        if self._closing():
            return
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()

    def resumeProducing(self) -> None:
        """Our write buffer drained: resume the response producer, but leave the client paused
        while a streamed body holds it."""
        if not self._input_held:
            super().resumeProducing()
            return
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()

    def _closing(self) -> bool:
        return bool(
            self._discarding
            or self.transport is None
            or getattr(self.transport, "disconnecting", False)
        )
