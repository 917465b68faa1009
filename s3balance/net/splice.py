"""Moving a response body from the backend's socket to the client's inside the kernel (Linux
``splice(2)`` through a pipe).

Relayed through Python, every chunk of a large GET costs a ``recv`` into a new bytes object,
the HTTP client's and HTTPChannel's parsing layers and a ``send``: most of the daemon's CPU
time for a download.  When both connections are plain TCP, the kernel can move the pages from
one socket to the other itself; the reactor only waits for readiness, and backpressure stays
what it was (a full client socket stops the pipe, a full pipe stops reading from the backend).

:class:`SocketSplice` takes over two file descriptors whose Twisted transports have stopped
reading and writing (their owners arrange that) and hands them back untouched by the reactor
when it ends, either way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from s3balance.net import twistedcompat

__all__ = [
    "SinkFailed",
    "SocketSplice",
    "SourceEnded",
    "SourceFailed",
    "available",
    "take_unsent",
    "tcp_socket",
]

#: The pipe's capacity when the kernel grants it (``/proc/sys/fs/pipe-max-size``, 1 MiB by
#: default); otherwise the default 64 KiB pipe is used.
PIPE_SIZE = 1 << 20
#: Bytes moved per reactor wake-up at most, so one fast transfer cannot starve other connections.
TURN_BUDGET = 16 << 20

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
#: The sink side also says more is coming, so the kernel fills whole segments.
_SINK_FLAGS = _FLAGS | getattr(os, "SPLICE_F_MORE", 4)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


def available() -> bool:
    """Whether this platform has ``splice`` (Linux, Python 3.10+)."""
    return hasattr(os, "splice") and hasattr(os, "pipe2")


def tcp_socket(transport: Any) -> socket.socket | None:
    """The socket under a plain, connected TCP transport; ``None`` for anything else (TLS, UNIX
    sockets, wrappers, test transports), which must take the ordinary path."""
    from twisted.internet import tcp

    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not transport.connected or transport.disconnecting or transport.disconnected:
        return None
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def take_unsent(transport: Any) -> bytes:
    """Take back what a TCP transport has buffered but not yet sent, and stop it writing, so
    that the socket has one writer again.

    These are ``FileDescriptor``'s buffer attributes: ``dataBuffer`` and ``offset``, and a
    second, private buffer reached through :mod:`~s3balance.net.twistedcompat` (callers check
    :func:`~s3balance.net.twistedcompat.can_take_unsent` first).  A producer it had paused for a
    full buffer is resumed, as a drained buffer would.
    """
    unsent = bytes(transport.dataBuffer[transport.offset :])
    unsent += twistedcompat.take_unsent_buffers(transport)
    transport.dataBuffer = b""
    transport.offset = 0
    transport.stopWriting()
    if transport.producer is not None and transport.producerPaused:
        transport.producerPaused = False
        transport.producer.resumeProducing()
    return unsent


class SourceEnded(Exception):
    """The backend closed its connection before sending every byte it announced."""


class SourceFailed(Exception):
    """Reading the backend's socket failed."""


class SinkFailed(Exception):
    """Writing to the client's socket failed (it went away)."""


@implementer(IReadDescriptor, IWriteDescriptor)
class _Side:
    """One of the two sockets as the reactor sees it while the splice owns it."""

    def __init__(self, owner: SocketSplice, fd: int, name: str) -> None:
        self._owner = owner
        self._fd = fd
        self._name = name

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._owner.pump()

    def doWrite(self) -> None:
        self._owner.pump()

    def connectionLost(self, reason: Failure) -> None:
        self._owner.lost(self._name, reason)

    def logPrefix(self) -> str:
        return f"splice-{self._name}"


class SocketSplice:
    """Moves ``count`` bytes from ``source`` to ``sink``, after sending ``pending`` to ``sink``.

    :param reactor: the reactor both sockets belong to.
    :param source: the backend's socket, positioned at the next body byte.
    :param sink: the client's socket, with nothing of ours left unsent but ``pending``.
    :param on_progress: called with the byte count each time bytes reach the client.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        source: socket.socket,
        sink: socket.socket,
        count: int,
        pending: bytes,
        on_progress: Any,
    ) -> None:
        self.done: Deferred[int] = Deferred()
        self.moved = 0
        self._reactor = reactor
        self._source = source
        self._sink = sink
        self._count = count
        self._to_read = count
        self._in_pipe = 0
        self._pending = memoryview(pending) if pending else None
        self._on_progress = on_progress
        self._read_side = _Side(self, source.fileno(), "source")
        self._write_side = _Side(self, sink.fileno(), "sink")
        self._reading = False
        self._writing = False
        self._ended = False
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe_size = self._grow_pipe()

    def _grow_pipe(self) -> int:
        set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
        get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
        if set_size is not None:
            try:
                fcntl.fcntl(self._pipe_w, set_size, PIPE_SIZE)
            except OSError:
                pass  # over pipe-max-size for an unprivileged process: keep the default
        if get_size is not None:
            return int(fcntl.fcntl(self._pipe_w, get_size))
        return 64 << 10

    def start(self) -> Deferred[int]:
        """Begin; the Deferred fires with ``count`` once every byte was handed to the client's
        socket, or fails with :class:`SourceEnded`, :class:`SourceFailed` or
        :class:`SinkFailed`.  Either way the sockets are no longer watched when it fires."""
        self.pump()
        return self.done

    def stop(self) -> None:
        """Give up without firing :attr:`done` (the caller aborts both connections itself)."""
        self._end()

    def pump(self) -> None:
        """Move what can move now, then wait for the side that blocks."""
        if self._ended:
            return
        budget = TURN_BUDGET
        source_blocked = sink_blocked = False
        while budget > 0:
            progressed = False
            if self._pending is not None:
                try:
                    sent = self._sink.send(self._pending)
                except BlockingIOError:
                    sink_blocked = True
                    break
                except OSError as e:
                    self._fail(SinkFailed(f"the client's connection failed: {e}"))
                    return
                self._pending = self._pending[sent:] if sent < len(self._pending) else None
                progressed = sent > 0
                if self._pending is not None:
                    sink_blocked = True
                    break
            if self._to_read and self._in_pipe < self._pipe_size and not source_blocked:
                want = min(self._to_read, self._pipe_size - self._in_pipe)
                try:
                    got = os.splice(self._source.fileno(), self._pipe_w, want, flags=_FLAGS)
                except BlockingIOError:
                    source_blocked = True
                else:
                    if got == 0:
                        self._fail(
                            SourceEnded(
                                f"backend closed after {self._count - self._to_read} of "
                                f"{self._count} bytes"
                            )
                        )
                        return
                    self._to_read -= got
                    self._in_pipe += got
                    progressed = True
            if self._in_pipe:
                try:
                    put = os.splice(self._pipe_r, self._sink.fileno(), self._in_pipe,
                                    flags=_SINK_FLAGS)
                except BlockingIOError:
                    sink_blocked = True
                except OSError as e:
                    if e.errno in _GONE:
                        self._fail(SinkFailed(f"the client's connection failed: {e}"))
                    else:
                        self._fail(e)
                    return
                else:
                    self._in_pipe -= put
                    self.moved += put
                    budget -= put
                    progressed = progressed or put > 0
                    if put:
                        self._on_progress(put)
            if not self._to_read and not self._in_pipe and self._pending is None:
                self._end()
                self.done.callback(self.moved)
                return
            if not progressed:
                break
        # Wait for whichever side blocked; with budget left over, both may simply be ready.
        self._watch_source(bool(self._to_read) and self._in_pipe < self._pipe_size)
        self._watch_sink(sink_blocked or (budget <= 0 and self._in_pipe > 0))
        if budget <= 0 and not sink_blocked and not source_blocked:
            # Out of budget with both sides ready: come back on the next reactor turn.
            self._watch_sink(True)

    def lost(self, name: str, reason: Failure) -> None:
        """The reactor gave up on one of the descriptors (an error it found, not ours)."""
        if self._ended:
            return
        if name == "sink":
            self._fail(SinkFailed(f"the client's connection failed: {reason.getErrorMessage()}"))
        else:
            self._fail(SourceFailed(f"the backend's connection failed: {reason.getErrorMessage()}"))

    def _watch_source(self, on: bool) -> None:
        if on and not self._reading:
            self._reactor.addReader(self._read_side)
        elif not on and self._reading:
            self._reactor.removeReader(self._read_side)
        self._reading = on

    def _watch_sink(self, on: bool) -> None:
        if on and not self._writing:
            self._reactor.addWriter(self._write_side)
        elif not on and self._writing:
            self._reactor.removeWriter(self._write_side)
        self._writing = on

    def _fail(self, error: Exception) -> None:
        self._end()
        self.done.errback(Failure(error))

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._watch_source(False)
        self._watch_sink(False)
        for fd in (self._pipe_r, self._pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass
