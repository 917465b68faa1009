"""Where a small request's CPU goes in the daemon: ``python -m bench.profile``.

Starts the nginx backend and one daemon (as ``python -m bench`` does), writes the keys, then runs
wrk with small GETs or PUTs for a while, and prints the daemon's CPU per request split between
the reactor thread and the others (the database threads), and, when ``py-spy`` is installed
(``pip install py-spy``), the functions that took the most samples in each: ``self`` is time in
the function itself, ``total`` includes what it called.  Idle threads (waiting for work) are
left out.  Run it before and after a change, on the same machine and load.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable

from bench import clients, signed
from bench.daemon import VIRTUAL_BUCKET, S3BalanceDaemon
from bench.nginx import Nginx, nginx_available
from bench.procs import thread_cpu_seconds

#: Frames where a thread waits for work: samples ending there are idle time.
IDLE_FRAMES = ("Condition.wait", "EPollReactor.doPoll")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return found if os.access(found, os.X_OK) else None


def _frame_name(frame: str) -> str:
    """``name (path:line)`` as py-spy writes it, shortened to ``name (module path)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/s3balance/" in path:  # the repository's own modules, wherever it is checked out
        path = "s3balance/" + path.rsplit("/s3balance/", 1)[1]
    return f"{name} ({path})" if where else name


def top_functions(raw_lines: Iterable[str], reactor: bool, count: int) -> list[str]:
    """The ``count`` functions with the most busy samples, self and total, in the reactor
    thread (stacks starting in twistd's ``<module>``) or in the others."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw_lines:
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("<module>") != reactor or frames[-1].startswith(IDLE_FRAMES):
            continue
        weight = int(number)
        samples += weight
        own[_frame_name(frames[-1])] += weight
        for name in {_frame_name(frame) for frame in frames}:
            total[name] += weight
    if not samples:
        return ["  (no busy samples)"]
    lines = [f"  {samples} busy samples; self:"]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(count)]
    lines.append("  total (s3balance functions):")
    ours = [(name, n) for name, n in total.most_common() if "s3balance/" in name][:count]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in ours]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--method", choices=("GET", "PUT"), default="GET")
    parser.add_argument("--seconds", type=int, default=10, help="length of the profiled run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keys", type=int, default=300, help="distinct 4 KiB objects")
    parser.add_argument("--sigv4", action="store_true", help="require and send SigV4")
    parser.add_argument("--top", type=int, default=20, help="functions listed per thread kind")
    parser.add_argument("--raw", help="also keep py-spy's raw samples in this file")
    options = parser.parse_args(argv)
    if not nginx_available() or not clients.wrk_available():
        print("needs nginx and wrk", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="s3balance-profile-", dir="/dev/shm")
    backend = Nginx.backend(workdir, os.path.join(workdir, "data"))
    key_pair = (signed.ACCESS_KEY, signed.SECRET_KEY) if options.sigv4 else None
    daemon = S3BalanceDaemon(workdir, backend.url, key_pair=key_pair)
    threads, keys = 2, max(1, options.keys // 2)
    prefix = f"/{VIRTUAL_BUCKET}/small/"
    try:
        backend.start()
        daemon.start()
        sign = signed.request_signer(daemon.url) if options.sigv4 else None
        clients.fill_keys(daemon.url, prefix, threads, keys, 4096, 16, 120.0, sign)
        files = ""
        if options.sigv4:
            files = signed.write_signed_requests(
                os.path.join(workdir, "signed-"), daemon.url, options.method, prefix, threads,
                keys, 4096,
            )  # fmt: skip

        def load(seconds: float) -> clients.LoadResult:
            return clients.run_wrk(
                workdir, daemon.url, options.method, prefix, keys, 4096, options.connections,
                seconds, signed_prefix=files,
            )  # fmt: skip

        load(1)  # warm: backend connections open, caches filled
        spy = py_spy()
        raw = os.path.join(workdir, "profile.txt")
        recorder = None
        if spy is not None:
            recorder = subprocess.Popen(
                [spy, "record", "-p", str(daemon.pid), "-f", "raw", "-o", raw, "-r", "200",
                 "-d", str(options.seconds + 2)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
        before = thread_cpu_seconds(daemon.pid)
        result = load(options.seconds)
        after = thread_cpu_seconds(daemon.pid)
        sent = max(1, result.requests + result.failures)
        reactor = (after.get(daemon.pid, 0.0) - before.get(daemon.pid, 0.0)) * 1e6 / sent
        used = sum(after[t] - before.get(t, 0.0) for t in after) * 1e6 / sent
        print(
            f"{options.method} 4 KiB x{options.connections}"
            f"{' SigV4' if options.sigv4 else ''}: {result.requests_per_second:.0f} req/s, "
            f"{result.failures} failed, CPU {used:.0f} µs/request (reactor thread "
            f"{reactor:.0f}, other threads {used - reactor:.0f}), p99 "
            f"{(result.p99_seconds or 0) * 1e3:.0f} ms; load average {os.getloadavg()[0]:.1f}"
        )
        if recorder is None:
            print("py-spy is not installed (pip install py-spy): no profile")
            return 0
        recorder.wait(timeout=options.seconds + 60)
        with open(raw) as found:
            lines = found.readlines()
        if options.raw:
            shutil.copyfile(raw, options.raw)
        print("reactor thread:")
        print("\n".join(top_functions(lines, True, options.top)))
        print("other threads:")
        print("\n".join(top_functions(lines, False, options.top)))
        return 0
    finally:
        daemon.stop()
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
