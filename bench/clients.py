"""The load generators: curl for large objects, wrk (or a thread pool) for many small ones.

Both are native or tight clients so that on loopback they outrun every server measured; the
bench checks that curl straight to the backend exceeds 1 GB/s and says so when it does not.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CURL = "curl"
WRK = "wrk"
CHUNK = 8 << 20


class TransferError(RuntimeError):
    """A request failed: the bench reports it instead of a figure."""


@dataclass
class Transfer:
    """One large-object request as curl measured it."""

    status: int
    seconds: float
    bytes_moved: int

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_moved / self.seconds / 1e6 if self.seconds > 0 else 0.0


def make_source_file(path: str, size: int) -> str:
    """Write ``size`` random bytes (incompressible, so nothing on the way can cheat).

    :returns: the MD5 hex digest of the file, to check downloads against.
    """
    digest = hashlib.md5()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(CHUNK, remaining))
            digest.update(block)
            f.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def _curl(args: list[str], timeout: float) -> Transfer:
    argv = [CURL, "-sS", "--max-time", str(int(timeout)), "-w", "%{http_code} %{time_total}"]
    done = subprocess.run(argv + args, capture_output=True, timeout=timeout + 5)
    fields = done.stdout.decode().split()
    if done.returncode != 0 or len(fields) < 2:
        raise TransferError(f"curl {' '.join(args)}: {done.stderr.decode().strip()}")
    return Transfer(status=int(fields[0]), seconds=float(fields[1]), bytes_moved=0)


def put_file(url: str, path: str, timeout: float) -> Transfer:
    """PUT a file with a plain Content-Length body (no ``Expect: 100-continue`` round trip)."""
    size = os.path.getsize(path)
    transfer = _curl(
        [
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            path,
            url,
        ],
        timeout,
    )
    if not 200 <= transfer.status < 300:
        raise TransferError(f"PUT {url}: HTTP {transfer.status}")
    transfer.bytes_moved = size
    return transfer


#: aws-chunked chunk size of the trailer uploads (what the AWS SDKs for Go and Java use).
TRAILER_CHUNK = 64 << 10


def put_file_with_crc64nvme_trailer(url: str, path: str, timeout: float) -> Transfer:
    """PUT a file as current AWS SDKs do: an aws-chunked body (``STREAMING-UNSIGNED-PAYLOAD-
    TRAILER``) whose CRC64NVME, computed while sending, ends it as a trailer.

    A Python client (curl cannot write trailers): the CRC runs in C (awscrt) over 1 MiB reads,
    and the 16 framed chunks of each read leave in one ``sendmsg`` without being copied, so the
    client does little more than curl does.

    :raises TransferError: a status other than 2xx, or an answer not echoing the checksum.
    """
    import base64

    from awscrt import checksums

    size = os.path.getsize(path)
    chunks, tail = divmod(size, TRAILER_CHUNK)
    framing = chunks * (len(f"{TRAILER_CHUNK:x}") + 4) + (len(f"{tail:x}") + 4 if tail else 0)
    trailer_name = "x-amz-checksum-crc64nvme"
    trailer_length = len(trailer_name) + 1 + 12  # base64 of 8 bytes
    length = size + framing + 3 + trailer_length + 4  # "0\r\n" + trailer + "\r\n\r\n"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    started = time.monotonic()
    try:
        connection.putrequest("PUT", parts.path, skip_accept_encoding=True)
        for name, value in (
            ("Content-Type", "application/octet-stream"),
            ("Content-Encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("x-amz-trailer", trailer_name),
            ("x-amz-sdk-checksum-algorithm", "CRC64NVME"),
            ("x-amz-decoded-content-length", str(size)),
            ("Content-Length", str(length)),
        ):
            connection.putheader(name, value)
        connection.endheaders()
        sock = connection.sock
        assert sock is not None
        crc = 0
        with open(path, "rb") as source:
            while batch := source.read(16 * TRAILER_CHUNK):
                crc = checksums.crc64nvme(batch, crc)
                view = memoryview(batch)
                buffers: list[bytes | memoryview] = []
                for start in range(0, len(batch), TRAILER_CHUNK):
                    piece = view[start : start + TRAILER_CHUNK]
                    buffers += [b"%x\r\n" % len(piece), piece, b"\r\n"]
                _send_all(sock, buffers)
        value = base64.b64encode(crc.to_bytes(8, "big")).decode()
        sock.sendall(f"0\r\n{trailer_name}:{value}\r\n\r\n".encode())
        response = connection.getresponse()
        response.read()
        seconds = time.monotonic() - started
    except (OSError, http.client.HTTPException) as e:
        raise TransferError(f"PUT {url} with a trailer: {e}") from e
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise TransferError(f"PUT {url} with a trailer: HTTP {response.status}")
    if response.getheader(trailer_name) != value:
        raise TransferError(f"PUT {url} with a trailer: the answer does not echo the CRC64NVME")
    return Transfer(status=response.status, seconds=seconds, bytes_moved=size)


def _send_all(sock: Any, buffers: list[bytes | memoryview]) -> None:
    """``sendall`` for a list of buffers, with ``sendmsg`` (no copy into one bytes object)."""
    pending = [memoryview(b) for b in buffers]
    while pending:
        sent = sock.sendmsg(pending)
        while sent and pending:
            if sent >= len(pending[0]):
                sent -= len(pending[0])
                pending.pop(0)
            else:
                pending[0] = pending[0][sent:]
                sent = 0


def get_to_null(url: str, expected_size: int, timeout: float) -> Transfer:
    """GET into /dev/null; a short or failed body is an error, never a fast figure."""
    argv = [
        CURL,
        "-sS",
        "--max-time",
        str(int(timeout)),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total} %{size_download}",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    fields = done.stdout.decode().split()
    if done.returncode != 0 or len(fields) < 3:
        raise TransferError(f"GET {url}: {done.stderr.decode().strip()}")
    status, seconds, size = int(fields[0]), float(fields[1]), int(float(fields[2]))
    if not 200 <= status < 300:
        raise TransferError(f"GET {url}: HTTP {status}")
    if size != expected_size:
        raise TransferError(f"GET {url}: {size} bytes, expected {expected_size}")
    return Transfer(status=status, seconds=seconds, bytes_moved=size)


def download_md5(url: str, timeout: float) -> str:
    """The MD5 of a whole GET body (untimed check that a path returns the bytes it was given)."""
    digest = hashlib.md5()
    with subprocess.Popen(
        [CURL, "-sS", "-f", "--max-time", str(int(timeout)), url], stdout=subprocess.PIPE
    ) as curl:
        assert curl.stdout is not None
        while block := curl.stdout.read(1 << 20):
            digest.update(block)
        curl.wait(timeout=timeout)
    if curl.returncode != 0:
        raise TransferError(f"GET {url} for the checksum: curl exit {curl.returncode}")
    return digest.hexdigest()


def delete(url: str, timeout: float = 30.0) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    try:
        connection.request("DELETE", parts.path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class LoadResult:
    """Many small requests over persistent connections for a fixed time."""

    requests: int
    seconds: float
    failures: int
    client: str
    #: The first failure seen (a status line or an error), for the report.
    example_failure: str = ""
    #: 99th percentile of the request latency, in seconds (wrk only; None when not measured).
    p99_seconds: float | None = None

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


WRK_SCRIPT = """\
-- Small-object load for the s3balance bench: PUT or GET of KEYS keys per thread.
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  method = args[1]
  prefix = args[2]
  keys = tonumber(args[3])
  body = string.rep("s", tonumber(args[4]))
  n = 0
  -- Signed mode: args[5] .. tid .. ".tsv" holds one request a line, signed up front:
  -- path, X-Amz-Date, X-Amz-Content-SHA256, Authorization (tab-separated).
  signed = nil
  if args[5] ~= nil and args[5] ~= "" then
    signed = {}
    for line in io.lines(args[5] .. tid .. ".tsv") do
      local path, date, sha, auth = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)")
      local headers = {["X-Amz-Date"] = date, ["X-Amz-Content-SHA256"] = sha,
                       ["Authorization"] = auth}
      if method == "PUT" then
        headers["Content-Type"] = "application/octet-stream"
      end
      signed[#signed + 1] = {path, headers}
    end
  end
end

function request()
  if signed ~= nil then
    local entry = signed[(n % #signed) + 1]
    n = n + 1
    if method == "PUT" then
      return wrk.format("PUT", entry[1], entry[2], body)
    end
    return wrk.format("GET", entry[1], entry[2])
  end
  local path = prefix .. tid .. "-" .. (n % keys)
  n = n + 1
  if method == "PUT" then
    return wrk.format("PUT", path, {["Content-Type"] = "application/octet-stream"}, body)
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH_JSON {"requests": %d, "duration_us": %d, "status": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "timeout": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(99.0)))
end
"""


def wrk_available() -> bool:
    return shutil.which(WRK) is not None


def run_wrk(
    workdir: str,
    base_url: str,
    method: str,
    prefix: str,
    keys_per_thread: int,
    object_size: int,
    connections: int,
    seconds: float,
    threads: int = 2,
    signed_prefix: str = "",
) -> LoadResult:
    """wrk for ``seconds`` over ``connections`` persistent connections.

    wrk counts any status >= 400 (a 404 on GET included) as a failure.

    :param signed_prefix: send the requests signed up front in ``<signed_prefix><thread>.tsv``
        (see ``bench/signed.py``) instead of unsigned ones.
    """
    script = os.path.join(workdir, "small.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
    argv = [
        WRK,
        "-t",
        str(min(threads, connections)),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        script,
        base_url,
        "--",
        method,
        prefix,
        str(keys_per_thread),
        str(object_size),
        signed_prefix,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 60)
    out = done.stdout.decode()
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            figures = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise TransferError(f"wrk gave no summary: {out}\n{done.stderr.decode()}")
    failures = sum(figures[k] for k in ("status", "connect", "read", "write", "timeout"))
    example = ""
    if failures:
        example = ", ".join(
            f"{k}={figures[k]}" for k in ("status", "connect", "read", "write", "timeout")
        )
    return LoadResult(
        requests=int(figures["requests"]) - int(figures["status"]),
        seconds=figures["duration_us"] / 1e6,
        failures=failures,
        client="wrk",
        example_failure=example,
        p99_seconds=figures["p99_us"] / 1e6,
    )


def run_thread_pool(
    base_url: str,
    method: str,
    prefix: str,
    keys_per_thread: int,
    object_size: int,
    connections: int,
    seconds: float,
) -> LoadResult:
    """The fallback when wrk is missing: one thread per persistent ``http.client`` connection.

    Python threads share one core's worth of GIL, so the figures are lower than wrk's for fast
    servers: compare ratios within one client only.
    """
    parts = urlsplit(base_url)
    body = b"s" * object_size
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    totals = {"ok": 0, "failed": 0}
    failures: list[str] = []

    def worker(tid: int) -> None:
        ok = failed = 0
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=10
        )
        n = 0
        try:
            while time.monotonic() < deadline:
                path = f"{prefix}{tid}-{n % keys_per_thread}"
                n += 1
                try:
                    if method == "PUT":
                        connection.request(
                            "PUT", path, body, {"Content-Type": "application/octet-stream"}
                        )
                    else:
                        connection.request("GET", path)
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as e:
                    failed += 1
                    if not failures:
                        failures.append(repr(e))
                    connection.close()
                    connection = http.client.HTTPConnection(
                        parts.hostname or "127.0.0.1", parts.port, timeout=10
                    )
                    continue
                if response.status >= 400:
                    failed += 1
                    if not failures:
                        failures.append(f"HTTP {response.status} {method} {path}")
                else:
                    ok += 1
        finally:
            connection.close()
            with lock:
                totals["ok"] += ok
                totals["failed"] += failed

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 30)
    elapsed = time.monotonic() - started
    return LoadResult(
        requests=totals["ok"],
        seconds=elapsed,
        failures=totals["failed"],
        client="python-threads",
        example_failure=failures[0] if failures else "",
    )


def fill_keys(
    base_url: str,
    prefix: str,
    threads: int,
    keys_per_thread: int,
    object_size: int,
    connections: int,
    deadline_seconds: float,
    sign: Callable[[str, str, bytes], dict[str, str]] | None = None,
) -> None:
    """Write every key the small-object GET runs will read (untimed), so none is a 404.

    The timed PUT runs last a fixed time, so on a slow path they may not reach every key.

    :param sign: ``(method, path, body) -> headers`` that authenticate the request, for a
        server that requires signatures.

    :raises TransferError: a PUT failed, or the keys were not all written in time.
    """
    parts = urlsplit(base_url)
    paths = [f"{prefix}{tid}-{n}" for tid in range(threads) for n in range(keys_per_thread)]
    body = b"s" * object_size
    deadline = time.monotonic() + deadline_seconds
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=10
        )
        try:
            while time.monotonic() < deadline and not errors:
                with lock:
                    if not paths:
                        return
                    path = paths.pop()
                headers = {"Content-Type": "application/octet-stream"}
                if sign is not None:
                    headers.update(sign("PUT", path, body))
                connection.request("PUT", path, body, headers)
                response = connection.getresponse()
                response.read()
                if response.status >= 300:
                    errors.append(f"PUT {path}: HTTP {response.status}")
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    if errors:
        raise TransferError(f"writing the small objects: {errors[0]}")
    if paths:
        raise TransferError(
            f"writing the small objects: {len(paths)} left after {deadline_seconds:.0f} s"
        )
