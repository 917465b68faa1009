"""``python -m bench.backend``: CPU per request of the S3 adapter alone, against Twisted's Agent.

A small loopback server in a child process answers every request at once (a 4 KiB body to a
GET, an ETag to a PUT, keep-alive).  In this process, ``S3Backend.get_object`` (body read to the
end) and ``put_object`` (a 4 KiB body) run with 16 requests in flight, and so does a bare
``twisted.web.client.Agent`` request of the same size on a persistent pool, the stock Twisted
client, in alternating rounds.  The figure is this process's CPU time per request (the
server's is not counted), the best of the rounds; the ratio says what signing, the adapter and
our HTTP client cost against the bare Agent request.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

BODY = b"x" * 4096
IN_FLIGHT = 16
ETAG = b'"0123456789abcdef0123456789abcdef"'


def serve(port: int) -> None:
    """The child process: answers requests on ``127.0.0.1:port`` until killed."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    get_answer = (
        b"HTTP/1.1 200 OK\r\nETag: " + ETAG + b"\r\nLast-Modified: Tue, 08 Dec 2026 00:00:00 GMT"
        b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n" + BODY
    )
    put_answer = b"HTTP/1.1 200 OK\r\nETag: " + ETAG + b"\r\nContent-Length: 0\r\n\r\n"

    class Answering(Protocol):
        def __init__(self) -> None:
            self.buffer = b""

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head, length = self.buffer[:end], 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                assert self.transport is not None
                self.transport.write(get_answer if head.startswith(b"GET") else put_answer)

    reactor.listenTCP(port, Factory.forProtocol(Answering), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def cpu_per_request(request: Callable[[int], Awaitable[Any]], count: int) -> float:
    """Microseconds of this process's CPU per request, ``IN_FLIGHT`` at a time."""
    from twisted.internet import defer

    async def worker(first: int) -> None:
        for i in range(first, count, IN_FLIGHT):
            await request(i)

    started = time.process_time()
    await defer.gatherResults([defer.ensureDeferred(worker(i)) for i in range(IN_FLIGHT)])
    return (time.process_time() - started) / count * 1e6


async def measure(reactor: Any, port: int, count: int, rounds: int) -> dict[str, float]:
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    from s3balance.backends.s3 import S3Backend
    from s3balance.net.bytesproducer import BytesProducer

    class Drain(Protocol):
        def __init__(self) -> None:
            self.done: Deferred[None] = Deferred()

        def connectionLost(self, reason: Any = None) -> None:
            self.done.callback(None)

    backend = S3Backend(
        "bench", f"http://127.0.0.1:{port}", "bucket", "us-east-1", "AK", "SK", True, reactor
    )
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = IN_FLIGHT
    agent = Agent(reactor, pool=pool)
    url = f"http://127.0.0.1:{port}/bucket/key".encode()

    async def adapter_get(i: int) -> None:
        stream = await backend.get_object(f"key{i}")
        drain = Drain()
        stream.deliverBody(drain)
        await drain.done

    async def adapter_put(i: int) -> None:
        await backend.put_object(f"key{i}", BytesProducer(BODY), len(BODY), {}, {})

    async def agent_get(i: int) -> None:
        response = await agent.request(b"GET", url, Headers())
        drain = Drain()
        response.deliverBody(drain)
        await drain.done

    async def agent_put(i: int) -> None:
        response = await agent.request(b"PUT", url, Headers(), BytesProducer(BODY))
        drain = Drain()
        response.deliverBody(drain)
        await drain.done

    requests = {
        "GET S3Backend": adapter_get,
        "GET Agent": agent_get,
        "PUT S3Backend": adapter_put,
        "PUT Agent": agent_put,
    }
    best = {name: float("inf") for name in requests}
    try:
        for request in requests.values():
            await cpu_per_request(request, IN_FLIGHT * 8)  # connections open, caches warm
        for _ in range(rounds):
            for name, request in requests.items():
                best[name] = min(best[name], await cpu_per_request(request, count))
    finally:
        await backend.close()
        await pool.closeCachedConnections()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    from twisted.internet import defer, task

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.backend", "--serve", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("the loopback server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)
        results: dict[str, float] = {}

        async def run(reactor: Any) -> None:
            results.update(await measure(reactor, port, args.requests, args.rounds))

        try:
            task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
        except SystemExit as ended:
            if ended.code:
                return int(ended.code)
    finally:
        server.kill()
        server.wait(timeout=10)
    print(f"4 KiB requests, {IN_FLIGHT} in flight, CPU of this process (best of {args.rounds}):")
    for method in ("GET", "PUT"):
        ours, agent = results[f"{method} S3Backend"], results[f"{method} Agent"]
        print(
            f"  {method}  S3Backend {ours:6.0f} µs   bare Agent request {agent:6.0f} µs"
            f"   ratio {ours / agent:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
