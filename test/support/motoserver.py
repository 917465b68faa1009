"""moto's S3 server on loopback, in a thread of the test process.

moto is the second S3 implementation the backend contract runs against: it starts in
milliseconds and follows AWS's answers closely (error codes, XML), where SeaweedFS is the one
that stores real bytes and checks signatures.  moto does not verify signatures.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from test.support.s3client import S3TestServer


class MotoServer(S3TestServer):
    """A ``moto.server.ThreadedMotoServer`` bound to 127.0.0.1 on a free port."""

    region = "us-east-1"
    access_key = "AKIDMOTOTEST0001"
    secret_key = "moto-secret-key-for-tests"

    def __init__(self) -> None:
        self._server: Any = None
        self.port = 0

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request line to stderr; tests want only failures.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        # Port 0: the OS picks a free port when the server binds, so there is no race.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        self.port = server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


_shared: MotoServer | None = None
_shared_lock = threading.Lock()


def shared_moto() -> MotoServer:
    """The one moto server of this test process, started on first use.

    It runs in a daemon thread, so it ends with the process; never stop it from a test.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            server = MotoServer()
            server.start()
            _shared = server
        return _shared
