"""A loopback TCP proxy in front of a backend that can hold the backend's answers.

While :meth:`StallProxy.hold` is on, everything a client sends still reaches the backend (so the
backend stores what it was sent), but nothing the backend answers reaches the client: to the
client the backend has stalled, as a backend paused with SIGSTOP after reading a request would.
:meth:`StallProxy.release` lets the held bytes through to clients that are still connected.

Threads, not the reactor, so it serves in-process daemons and daemon processes alike.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class StallProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (host, port); use as a context manager."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._released = threading.Event()
        self._released.set()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        #: Bytes the backend answered while held (for the test to see it did answer).
        self.held_bytes = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """From now on, keep the backend's answers from the clients."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                backend = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.extend([client, backend])
            threading.Thread(target=self._pump, args=(client, backend, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(backend, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        source.settimeout(None)
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers and not self._released.is_set():
                    self.held_bytes += len(data)
                    # Bounded: a test releases or closes the proxy well within this.
                    if not self._released.wait(60):
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (sink, source):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
