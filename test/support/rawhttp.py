"""Raw HTTP/1.1 over loopback sockets, for requests no client library would send (slow, partial,
malformed).  Blocking: call from a thread (``in_thread``) while the reactor serves the daemon."""

from __future__ import annotations

import selectors
import socket
import time

__all__ = ["exchange", "read_until_closed"]


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes (or ``timeout`` seconds pass, or a reset)."""
    sock.setblocking(False)
    received = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection and return all the answer until the daemon closes it
    (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)
