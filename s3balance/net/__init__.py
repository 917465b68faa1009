"""The network layer under both ``web`` (the S3 front) and ``backends`` (the S3 adapter).

What both sides of the daemon need from sockets and Twisted's transports lives here: socket
tuning (:mod:`.sockets`), the zero-copy splice between two TCP sockets (:mod:`.splice`) and
every access to a private Twisted attribute (:mod:`.twistedcompat`).  This package imports
nothing from ``web`` or ``backends``.
"""
