"""The network layer under both ``web`` (the S3 front) and ``backends`` (the S3 adapter).

What both sides of the daemon need from sockets and Twisted's transports lives here: socket
tuning (:mod:`.sockets`), the zero-copy splice between two TCP sockets (:mod:`.splice`) and
every access to a private Twisted attribute (:mod:`.twistedcompat`); for HTTP requests to other
servers, the client and its pool (:mod:`.httpclient`) over persistent connections
(:mod:`.http11`), reading answers (:mod:`.responses`), a body in memory (:mod:`.bytesproducer`)
and the stall timer (:mod:`.stallwatch`).  This package imports
nothing from ``web`` or ``backends``.
"""
