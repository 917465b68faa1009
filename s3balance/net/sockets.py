"""Socket tuning shared by the client side (the S3 front) and the backend side (the S3 adapter)."""

from __future__ import annotations

from typing import Any

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
