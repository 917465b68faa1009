"""The benchmark run: start every server, measure each path, print ratios and the targets.

Paths measured, all ending at the same nginx backend on loopback:

* ``direct``: the client talks to the backend itself (the baseline);
* ``nginx-proxy``: nginx as a streaming reverse proxy in front of it (the bar to reach);
* ``s3balance``: the real daemon, its one real bucket being the backend;
* small objects only: ``twisted-proxy`` (the stock Twisted reverse proxy),
  ``s3balance-sigv4`` (the daemon verifying signed requests), ``s3balance-2workers``
  (``server.workers: 2``) and ``s3balance-postgres`` / ``s3balance-mariadb`` (the daemon on
  those databases), see ``bench/small.py``.

The machine is shared and noisy: every figure is the median of ``--repeat`` runs, the paths are
interleaved inside each repetition so noise hits them alike, and the verdicts compare ratios
measured in the same run, never absolute speeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench import clients, signed
from bench.daemon import VIRTUAL_BUCKET, S3BalanceDaemon
from bench.dbserver import BenchDatabase, short_reason
from bench.nginx import BACKEND_BUCKET, Nginx, nginx_available
from bench.paired import Pairs, base_first
from bench.procs import cpu_seconds, memory_kib, pinned_to, process_tree
from bench.small import (
    DATABASE_SERVERS,
    PAIRED_PATHS,
    S3BALANCE_2WORKERS,
    S3BALANCE_SIGV4,
    SMALL_ONLY_PATHS,
    TWISTED_PROXY,
    paired_lines,
    scaling_line,
    small_table,
    small_verdicts,
    timed_load,
    timed_loads_together,
)
from bench.twistedproxy import TwistedProxy

MiB = 1 << 20
GiB = 1 << 30

DIRECT, PROXY, S3BALANCE = "direct", "nginx-proxy", "s3balance"
#: s3balance in front of the backend's port that answers PUT without an ETag (a plain WebDAV
#: store): the daemon then measures the MD5 of every body it uploads.
S3BALANCE_MD5 = "s3balance-md5"
ALL_PATHS = (DIRECT, PROXY, S3BALANCE, S3BALANCE_MD5, *SMALL_ONLY_PATHS)
#: Paths with a process between client and backend whose CPU time is measured.
MIDDLE_PATHS = (PROXY, S3BALANCE, S3BALANCE_MD5, *SMALL_ONLY_PATHS)

# Targets of the issue "The S3 data path".
TARGET_GET_VS_PROXY = 1.0
TARGET_PUT_VS_PROXY = 0.8
TARGET_PEAK_RSS_MIB = 80.0
TARGET_RSS_GROWTH_MIB = 8.0
#: Below this, curl straight to the backend may itself be the bottleneck.
CLIENT_FLOOR_MB_S = 1000.0


def parse_size(text: str) -> int:
    """``64M``, ``256MiB``, ``1G``, ``4k`` or bytes; binary multiples."""
    units = {"k": 1 << 10, "m": MiB, "g": GiB}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    if cleaned and cleaned[-1] in units:
        return int(float(cleaned[:-1]) * units[cleaned[-1]])
    return int(cleaned)


def human_size(size: int) -> str:
    if size >= GiB and size % GiB == 0:
        return f"{size // GiB} GiB"
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


@dataclass
class Path:
    """Where a client sends requests for one path, and the bucket prefix it uses there."""

    name: str
    base_url: str
    bucket: str

    def url(self, key: str) -> str:
        return f"{self.base_url}/{self.bucket}/{key}"


@dataclass
class Measurement:
    """The repeated figures of one path x operation; ``error`` set when it could not be measured."""

    operation: str
    path: str
    unit: str
    samples: list[float] = field(default_factory=list)
    #: CPU seconds the process in the middle (proxy or daemon) spent per GiB moved.
    cpu_per_gib: list[float] = field(default_factory=list)
    #: Small objects: CPU microseconds of the process in the middle per request.
    cpu_us_per_request: list[float] = field(default_factory=list)
    #: Small objects: 99th percentile latency in milliseconds (wrk only).
    p99_ms: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float | None:
        if self.error or not self.samples:
            return None
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float | None:
        if self.error or not self.cpu_per_gib:
            return None
        return statistics.median(self.cpu_per_gib)


@dataclass
class Results:
    measurements: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    #: Label ("after 64 MiB") -> (VmHWM, VmRSS) of the daemon in KiB.
    daemon_memory: list[tuple[str, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: A path that could not be set up at all (the run still measures the others).
    setup_errors: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    #: An operation measured on s3balance only -> the operation its ratios are taken against.
    baselines: dict[str, str] = field(default_factory=dict)
    #: A path not measured because its database server did not answer -> why (not a failure).
    unavailable: dict[str, str] = field(default_factory=dict)
    #: A path -> its rounds paired with s3balance's (``bench/paired.py``).
    paired: dict[str, Pairs] = field(default_factory=dict)

    def get(self, operation: str, path: str, unit: str) -> Measurement:
        key = (operation, path)
        if key not in self.measurements:
            self.measurements[key] = Measurement(operation, path, unit)
            if operation not in self.operations:
                self.operations.append(operation)
        return self.measurements[key]

    def median(self, operation: str, path: str) -> float | None:
        found = self.measurements.get((operation, path))
        return found.median if found else None

    def memory_after(self, label: str) -> tuple[int, int] | None:
        for found, hwm, rss in self.daemon_memory:
            if found == label:
                return hwm, rss
        return None


def choose_workdir_parent(largest: int, requested: str | None) -> str:
    """tmpfs when it has room for the source file, two stored copies and nginx's body temp file.

    On disk, the backend's writes would measure the disk, not the data path.
    """
    if requested:
        return requested
    needed = 4 * largest + 512 * MiB
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free >= needed:
        return "/dev/shm"
    return tempfile.gettempdir()


def measure(
    results: Results,
    operation: str,
    path: Path,
    unit: str,
    action: Callable[[], float],
    cpu_pids: list[int] | None = None,
    size: int = 0,
) -> None:
    """Run one sample; a failure marks the whole measurement failed and is kept for the report.

    :param cpu_pids: processes whose CPU time during the sample is charged to ``size`` bytes.
    """
    entry = results.get(operation, path.name, unit)
    if entry.error:
        return
    try:
        before = sum(cpu_seconds(pid) for pid in cpu_pids or ())
        entry.samples.append(action())
        if cpu_pids and size:
            used = sum(cpu_seconds(pid) for pid in cpu_pids) - before
            entry.cpu_per_gib.append(used * GiB / size)
    except (clients.TransferError, OSError, ValueError) as e:
        entry.error = str(e)[:300]


def verify(
    results: Results, operation: str, path: Path, unit: str, check: Callable[[], None]
) -> None:
    """An untimed check (the object reads back intact); a failure fails the measurement."""
    entry = results.get(operation, path.name, unit)
    if entry.error:
        return
    try:
        check()
    except (clients.TransferError, OSError) as e:
        entry.error = str(e)[:300]


class Bench:
    def __init__(self, options: argparse.Namespace, out: Any = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.results = Results()
        self.paths: list[Path] = []
        #: Paths measured with small objects only (``bench.small.SMALL_ONLY_PATHS``).
        self.small_paths: list[Path] = []
        self.daemon: S3BalanceDaemon | None = None
        self.servers: list[Any] = []
        #: Path name -> the process(es) between client and backend (for CPU per GiB).
        self.middle: dict[str, int] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- servers -----------------------------------------------------------------------------

    def start_servers(self, workdir: str) -> None:
        data_root = os.path.join(workdir, "backend-data")
        backend = Nginx.backend(workdir, data_root)
        backend.start()
        self.servers.append(backend)
        wanted = self.options.paths
        if DIRECT in wanted:
            self.paths.append(Path(DIRECT, backend.url, BACKEND_BUCKET))
        if PROXY in wanted:
            proxy = Nginx.proxy(workdir, backend.port, self.options.proxy_buffer)
            proxy.start()
            self.servers.append(proxy)
            self.paths.append(Path(PROXY, proxy.url, BACKEND_BUCKET))
            self.middle[PROXY] = proxy.server.pid
        if S3BALANCE in wanted:
            local_root = None
            if self.options.s3balance_backend == "local":
                local_root = os.path.join(workdir, "s3balance-local")
                self.results.notes.append(
                    "s3balance stored into a local directory (--s3balance-backend local), not "
                    "into nginx: its ratios compare different backends"
                )
            self.daemon = self.start_daemon(S3BALANCE, workdir, backend.url, local_root)
        if S3BALANCE_MD5 in wanted:
            second = os.path.join(workdir, "md5-daemon")
            os.makedirs(second)
            self.start_daemon(S3BALANCE_MD5, second, backend.plain_url)
        if self.options.small_count > 0:
            self.start_small_only(workdir, backend)

    def start_small_only(self, workdir: str, backend: Nginx) -> None:
        """The paths measured with small objects only: the stock Twisted proxy, and a daemon
        that requires SigV4 (its load is signed up front, which needs wrk)."""
        wanted = self.options.paths
        if TWISTED_PROXY in wanted:
            twisted = TwistedProxy(workdir, backend.port)
            self.servers.append(twisted)
            try:
                twisted.start()
            except RuntimeError as e:
                self.results.setup_errors.append(f"{TWISTED_PROXY} did not start: {e}")
            else:
                self.small_paths.append(Path(TWISTED_PROXY, twisted.url, BACKEND_BUCKET))
                self.middle[TWISTED_PROXY] = twisted.pid
        if S3BALANCE_SIGV4 in wanted:
            if not self.uses_wrk():
                self.results.notes.append(f"{S3BALANCE_SIGV4} needs wrk: not measured")
                return
            third = os.path.join(workdir, "sigv4-daemon")
            os.makedirs(third)
            key_pair = (signed.ACCESS_KEY, signed.SECRET_KEY)
            self.start_daemon(S3BALANCE_SIGV4, third, backend.url, key_pair=key_pair)
        self.start_scaling_and_databases(workdir, backend)

    def start_scaling_and_databases(self, workdir: str, backend: Nginx) -> None:
        """The daemons of issue 15's other small-object rows: two workers on SQLite, and one
        worker on a fresh PostgreSQL or MariaDB database each. A database server that does not
        answer leaves its row "not reachable" without failing the run."""
        wanted = self.options.paths
        if S3BALANCE_2WORKERS in wanted:
            directory = os.path.join(workdir, "two-workers")
            os.makedirs(directory)
            self.start_daemon(S3BALANCE_2WORKERS, directory, backend.url, workers=2)
        for name, server in DATABASE_SERVERS.items():
            if name not in wanted:
                continue
            database = BenchDatabase(server)
            try:
                url = database.create()
            except Exception as e:  # any driver error means: this server cannot be used
                self.results.unavailable[name] = f"database server {server}: {short_reason(e)}"
                self.say(f"! {name}: {self.results.unavailable[name]}")
                continue
            self.servers.append(database)  # listed before its daemon: dropped after it stops
            directory = os.path.join(workdir, name)
            os.makedirs(directory)
            self.start_daemon(name, directory, backend.url, database_url=url)

    def start_daemon(
        self,
        name: str,
        workdir: str,
        backend_url: str,
        local_root: str | None = None,
        key_pair: tuple[str, str] | None = None,
        workers: int = 1,
        database_url: str | None = None,
    ) -> S3BalanceDaemon | None:
        """Start a daemon for path ``name``; a daemon that does not start is a setup error of
        that path only (the others are still measured)."""
        daemon = S3BalanceDaemon(workdir, backend_url, local_root, key_pair, workers, database_url)
        self.servers.append(daemon)
        try:
            daemon.start(deadline_seconds=60.0 if workers > 1 else 30.0)
        except RuntimeError as e:
            self.results.setup_errors.append(f"{name} did not start: {e}")
            self.say(f"! {name} did not start:\n{e}")
            return None
        path = Path(name, daemon.url, VIRTUAL_BUCKET)
        (self.small_paths if name in SMALL_ONLY_PATHS else self.paths).append(path)
        self.middle[name] = daemon.pid
        return daemon

    def stop_servers(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def record_daemon_memory(self, label: str) -> None:
        if self.daemon is None:
            return
        try:
            figures = memory_kib(self.daemon.pid)
        except OSError as e:
            self.results.notes.append(f"daemon memory {label}: {e}")
            return
        self.results.daemon_memory.append((label, figures["VmHWM"], figures["VmRSS"]))
        self.say(
            f"  s3balance memory {label}: peak {figures['VmHWM'] / 1024:.1f} MiB, "
            f"now {figures['VmRSS'] / 1024:.1f} MiB"
        )

    def warm_up(self, workdir: str) -> None:
        """One untimed 1 MiB PUT, GET and DELETE per path: connections to the backend are open
        and the daemon has seen whether the backend answers PUT with an ETag (until it has, it
        hashes what it sends) before anything is timed, as on a daemon that has been serving.
        s3balance also gets one PUT with a CRC64NVME trailer: the first such request loads the
        CRC library (about 0.3 s, once per daemon), which is no part of an upload's cost."""
        source = os.path.join(workdir, "warm-up")
        clients.make_source_file(source, MiB)
        try:
            for path in self.paths:
                url = path.url("warm-up")
                try:
                    clients.put_file(url, source, self.options.timeout)
                    clients.get_to_null(url, MiB, self.options.timeout)
                    clients.delete(url)
                    if path.name == S3BALANCE:
                        clients.put_file_with_crc64nvme_trailer(url, source, self.options.timeout)
                        clients.delete(url)
                except (clients.TransferError, OSError) as e:
                    self.results.notes.append(f"warm-up of {path.name}: {e}")
        finally:
            os.unlink(source)

    # -- large objects -----------------------------------------------------------------------

    def large(self, workdir: str, size: int) -> None:
        label = human_size(size)
        source = os.path.join(workdir, f"source-{size}")
        self.say(f"large objects, {label}: writing the source file")
        md5 = clients.make_source_file(source, size)
        key = f"large/object-{size}"
        put_op, get_op = f"PUT {label}", f"GET {label}"
        self.results.baselines[trailer_operation(size)] = put_op
        try:
            for rep in range(self.options.repeat):
                for path in self.paths:
                    measure(
                        self.results,
                        put_op,
                        path,
                        "MB/s",
                        partial(self.put, path, key, source),
                        self.middle_pids(path),
                        size,
                    )
                    if path.name == S3BALANCE:
                        self.trailer_put(path, size, source)
                self.say(f"  PUT {label} round {rep + 1}/{self.options.repeat} done")
            for path in self.paths:
                verify(self.results, get_op, path, "MB/s", partial(self.check, path, key, md5))
            for rep in range(self.options.repeat):
                for path in self.paths:
                    measure(
                        self.results,
                        get_op,
                        path,
                        "MB/s",
                        partial(self.get, path, key, size),
                        self.middle_pids(path),
                        size,
                    )
                self.say(f"  GET {label} round {rep + 1}/{self.options.repeat} done")
            self.record_daemon_memory(f"after {label}")
        finally:
            os.unlink(source)
            for path in self.paths:
                if path.name == PROXY:  # the proxy path shares the direct path's object
                    continue
                keys = [key, trailer_key(size)] if path.name == S3BALANCE else [key]
                for written in keys:
                    try:
                        clients.delete(path.url(written))
                    except OSError as e:
                        self.results.notes.append(f"cleanup of {path.name} {written}: {e}")

    def trailer_put(self, path: Path, size: int, source: str) -> None:
        """One PUT as current AWS SDKs send it (aws-chunked, CRC64NVME trailer) through s3balance,
        in the same round as the plain PUTs it is compared with: a burst of noise from the other
        tenants of the machine then hits both rows alike, as it does the paths.  Like a plain
        PUT's, its key is overwritten from the second round on."""
        measure(
            self.results,
            trailer_operation(size),
            path,
            "MB/s",
            partial(self.put_with_trailer, path, trailer_key(size), source),
            self.middle_pids(path),
            size,
        )

    def put_with_trailer(self, path: Path, key: str, source: str) -> float:
        return clients.put_file_with_crc64nvme_trailer(
            path.url(key), source, self.options.timeout
        ).megabytes_per_second

    def middle_pids(self, path: Path) -> list[int]:
        """The processes between client and backend on ``path`` (nginx: master and workers;
        s3balance with two workers: the supervisor and its workers)."""
        pid = self.middle.get(path.name)
        if pid is None:
            return []
        return process_tree(pid) if path.name in (PROXY, S3BALANCE_2WORKERS) else [pid]

    def put(self, path: Path, key: str, source: str) -> float:
        return clients.put_file(path.url(key), source, self.options.timeout).megabytes_per_second

    def get(self, path: Path, key: str, size: int) -> float:
        return clients.get_to_null(path.url(key), size, self.options.timeout).megabytes_per_second

    def check(self, path: Path, key: str, md5: str) -> None:
        """The stored object reads back byte for byte through this path."""
        got = clients.download_md5(path.url(key), self.options.timeout)
        if got != md5:
            raise clients.TransferError(f"GET {path.url(key)} returned other bytes (md5 {got})")

    # -- small objects -----------------------------------------------------------------------

    def uses_wrk(self) -> bool:
        return self.options.small_client == "wrk" or (
            self.options.small_client == "auto" and clients.wrk_available()
        )

    def small(self, workdir: str) -> None:
        options = self.options
        use_wrk = self.uses_wrk()
        label = human_size(options.small_size)
        connections = options.concurrency
        threads = min(2, connections) if use_wrk else connections
        keys_per_thread = max(1, options.small_count // threads)
        client = "wrk" if use_wrk else "python threads"
        self.say(
            f"small objects, {label}: {client}, {connections} connections, "
            f"{keys_per_thread * threads} keys, {options.small_seconds:g} s per run"
        )
        paths = self.paths + self.small_paths
        for path in paths:
            self.results.get(f"PUT {label} x{connections}", path.name, "req/s")  # table order
            sign = signed.request_signer(path.base_url) if path.name == S3BALANCE_SIGV4 else None
            verify(
                self.results,
                f"GET {label} x{connections}",
                path,
                "req/s",
                partial(
                    clients.fill_keys,
                    path.base_url,
                    f"/{path.bucket}/small/",
                    threads,
                    keys_per_thread,
                    options.small_size,
                    min(connections, 16),
                    120.0,
                    sign,
                ),
            )
        paired = self.paired_paths() if options.pair_rounds else []
        for method in ("PUT", "GET"):
            operation = f"{method} {label} x{connections}"
            for rep in range(options.repeat):
                for path in paths:
                    if method == "GET" and PAIRED_PATHS.get(path.name) == "rate" and path in paired:
                        continue  # measured in the paired rounds below
                    signed_prefix = ""
                    if path.name == S3BALANCE_SIGV4:  # signed afresh: they expire
                        signed_prefix = self.signed_requests(workdir, path, method)
                    entry = self.results.get(operation, path.name, "req/s")
                    load = partial(self.small_load, workdir, path, method, signed_prefix)
                    run = partial(self.small_sample, path, entry, load)
                    measure(self.results, operation, path, "req/s", run)
                self.say(f"  {operation} round {rep + 1}/{options.repeat} done")
        for other in paired:
            self.paired_rounds(workdir, label, other)
        self.record_daemon_memory("after small objects")

    def paired_paths(self) -> list[Path]:
        """The paths whose small GETs are measured in rounds paired with ``s3balance``'s
        (:data:`bench.small.PAIRED_PATHS`), when both are running."""
        if not any(p.name == S3BALANCE for p in self.paths):
            return []
        return [p for p in self.small_paths if p.name in PAIRED_PATHS]

    def paired_rounds(self, workdir: str, label: str, other: Path) -> None:
        """``--pair-rounds`` rounds of small GETs, ``--pair-seconds`` each, on ``s3balance`` and
        ``other`` (``bench/paired.py``), as :data:`bench.small.PAIRED_PATHS` says:

        * ``cpu``: both daemons pinned to one core and loaded at the same time, each over
          ``--pair-connections`` of its own. CPU per request is only steady when the two see
          the same core at the same moment: this machine's cores run the same code up to twice
          as slow from one second to the next (the other tenants), and two identical daemons
          measured one after the other differed by ±500 µs a round, against ±50 µs pinned
          together. Neither run goes to the table.
        * ``rate``: runs back to back at ``--concurrency``, the order alternating; ``other``'s
          runs are its row of the table (it is not in the repetitions).
        """
        options = self.options
        base = next(p for p in self.paths if p.name == S3BALANCE)
        figure = PAIRED_PATHS[other.name]
        together = figure == "cpu"
        connections = options.concurrency
        if together and options.pair_connections:
            connections = min(options.pair_connections, options.concurrency)
        operation = f"GET {label} x{connections}"
        seconds = min(options.pair_seconds, options.small_seconds)
        rounds = self.results.paired.setdefault(other.name, Pairs(operation))
        row = self.results.get(f"GET {label} x{options.concurrency}", other.name, "req/s")
        if row.error:  # its keys could not be written
            rounds.error = row.error
            return
        entries = {
            base.name: Measurement(operation, base.name, "req/s"),
            other.name: Measurement(operation, other.name, "req/s") if together else row,
        }
        signed_prefix = {base.name: "", other.name: ""}
        if other.name == S3BALANCE_SIGV4:  # all rounds take well under the 15 minutes allowed
            signed_prefix[other.name] = self.signed_requests(workdir, other, "GET")
        loads = {
            path.name: partial(
                self.small_load,
                workdir,
                path,
                "GET",
                signed_prefix[path.name],
                seconds,
                connections,
            )
            for path in (base, other)
        }
        pids = {path.name: self.middle_pids(path) for path in (base, other)}
        core = max(os.sched_getaffinity(0))
        pin = pinned_to([*pids[base.name], *pids[other.name]], core)
        try:
            with pin if together else contextlib.nullcontext():
                for number in range(options.pair_rounds):
                    order = (base, other) if base_first(number) else (other, base)
                    if together:
                        timed = timed_loads_together([(loads[p.name], pids[p.name]) for p in order])
                    else:
                        timed = [timed_load(loads[p.name], pids[p.name]) for p in order]
                    found: dict[str, float] = {}
                    for path, (load, cpu_us) in zip(order, timed, strict=True):
                        entry = entries[path.name]
                        entry.samples.append(record_small(entry, load, cpu_us))
                        if together and not cpu_us:
                            raise ValueError(f"no CPU time measured for {path.name}")
                        found[path.name] = cpu_us if together else entry.samples[-1]
                    rounds.add(found[base.name], found[other.name])
        except (clients.TransferError, OSError, ValueError) as e:  # OSError: pinning, too
            rounds.error = str(e)[:300]
            if not together:
                row.error = rounds.error
            self.say(f"  {operation} paired rounds of {other.name} stopped: {e}")
            return
        self.say(f"  {operation} {options.pair_rounds} rounds paired with {other.name} done")

    def signed_requests(self, workdir: str, path: Path, method: str) -> str:
        """Sign the requests of one or more runs on ``path`` up front (``bench/signed.py``).

        :returns: the prefix of their files, for ``clients.run_wrk``.
        """
        threads = min(2, self.options.concurrency)
        return signed.write_signed_requests(
            os.path.join(workdir, f"signed-{method}-"),
            path.base_url,
            method,
            f"/{path.bucket}/small/",
            threads,
            max(1, self.options.small_count // threads),
            self.options.small_size,
        )

    def small_load(
        self,
        workdir: str,
        path: Path,
        method: str,
        signed_prefix: str,
        seconds: float | None = None,
        connections: int | None = None,
    ) -> clients.LoadResult:
        """One timed small-object run against ``path`` with wrk (signed when
        ``signed_prefix`` names the signed requests) or the thread pool, for ``seconds``
        over ``connections`` (``--small-seconds`` and ``--concurrency`` when None)."""
        options = self.options
        seconds = options.small_seconds if seconds is None else seconds
        prefix = f"/{path.bucket}/small/"
        connections = options.concurrency if connections is None else connections
        if self.uses_wrk():
            threads = min(2, connections)
            return clients.run_wrk(
                workdir,
                path.base_url,
                method,
                prefix,
                max(1, options.small_count // threads),
                options.small_size,
                connections,
                seconds,
                threads=threads,
                signed_prefix=signed_prefix,
            )
        return clients.run_thread_pool(
            path.base_url,
            method,
            prefix,
            max(1, options.small_count // connections),
            options.small_size,
            connections,
            seconds,
        )

    def small_sample(
        self, path: Path, entry: Measurement, load: Callable[[], clients.LoadResult]
    ) -> float:
        """req/s of one run; its CPU per request and p99 go to ``entry`` beside it."""
        found, cpu_us = timed_load(load, self.middle_pids(path))
        return record_small(entry, found, cpu_us)

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> Results:
        options = self.options
        parent = choose_workdir_parent(max(options.sizes, default=0), options.workdir)
        workdir = tempfile.mkdtemp(prefix="s3balance-bench-", dir=parent)
        self.say(f"work dir {workdir}")
        started = time.monotonic()
        try:
            self.start_servers(workdir)
            self.record_daemon_memory("at start")
            self.warm_up(workdir)
            for size in sorted(options.sizes):
                self.large(workdir, size)
            if options.small_count > 0:
                self.small(workdir)
        finally:
            self.stop_servers()
            if options.keep:
                self.say(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        self.results.notes.append(f"whole run: {time.monotonic() - started:.0f} s")
        return self.results


def record_small(entry: Measurement, found: clients.LoadResult, cpu_us: float) -> float:
    """req/s of one small-object run; its CPU per request and p99 go to ``entry`` beside it.

    :raises clients.TransferError: a request of the run failed.
    """
    if found.failures:
        raise clients.TransferError(
            f"{found.failures} of {found.requests + found.failures} requests failed "
            f"({found.example_failure})"
        )
    if cpu_us:
        entry.cpu_us_per_request.append(cpu_us)
    if found.p99_seconds is not None:
        entry.p99_ms.append(found.p99_seconds * 1e3)
    return found.requests_per_second


# -- the report --------------------------------------------------------------------------------


def trailer_key(size: int) -> str:
    """The key the trailer PUTs of ``size`` write (beside the plain PUTs' object)."""
    return f"large/trailer-{size}"


def trailer_operation(size: int) -> str:
    """The row of a PUT with an aws-chunked CRC64NVME trailer (what current AWS SDKs send)."""
    return f"PUT {human_size(size)} CRC64NVME trailer"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def _figure(entry: Measurement) -> str:
    if entry.error:
        return "FAILED"
    median = entry.median
    if median is None:
        return "-"
    spread = ""
    if len(entry.samples) > 1:
        spread = f" ({min(entry.samples):.0f}-{max(entry.samples):.0f})"
    return f"{median:.0f} {entry.unit}{spread}"


def table(results: Results, paths: list[str]) -> list[str]:
    """Operation x path: median (min-max), ratio to direct, ratio to nginx-proxy."""
    rows = [("operation", "path", "median (min-max)", "vs direct", "vs nginx-proxy")]
    errors = []
    for operation in results.operations:
        baseline = results.baselines.get(operation, operation)
        direct = results.median(baseline, DIRECT)
        proxy = results.median(baseline, PROXY)
        for path in paths:
            entry = results.measurements.get((operation, path))
            if entry is None:
                continue
            value = entry.median
            rows.append(
                (operation, path, _figure(entry), _ratio(value, direct), _ratio(value, proxy))
            )
            if entry.error:
                errors.append(f"{operation} via {path}: {entry.error}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines + [f"! {error}" for error in errors]


def cpu_table(results: Results, paths: list[str]) -> list[str]:
    """Large objects: CPU seconds per GiB of the process between client and backend.

    Less noisy than MB/s on a shared machine (it does not count time spent waiting for a core),
    and what a proxy costs whatever the machine: lower is better.
    """
    middle = [  # the small-object-only paths have no column
        p
        for p in paths
        if p in MIDDLE_PATHS
        and any(m.cpu_per_gib for (_, path), m in results.measurements.items() if path == p)
    ]
    rows = [("operation", *middle, *(f"{p} / nginx-proxy" for p in middle if p != PROXY))]
    for operation in results.operations:
        if " x" in operation:
            continue  # small objects: requests, not bytes
        values = []
        for path in middle:
            entry = results.measurements.get((operation, path))
            values.append(entry.cpu_median if entry else None)
        if all(v is None for v in values):
            continue
        by_path = dict(zip(middle, values, strict=True))
        cells = [f"{v:.2f} s/GiB" if v is not None else "-" for v in values]
        ratios = [_ratio(by_path[p], by_path.get(PROXY)) for p in middle if p != PROXY]
        rows.append((operation, *cells, *ratios))
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


@dataclass
class Verdict:
    target: str
    measured: str
    passed: bool | None  # None: could not be judged in this run


def verdicts(results: Results, sizes: list[int], small_label: str | None) -> list[Verdict]:
    """The issue's targets, judged on this run's figures."""
    found: list[Verdict] = []
    large = [s for s in sizes if s >= 256 * MiB] or sorted(sizes)[-1:]
    for size in large:
        label = human_size(size)
        for method, target in (("GET", TARGET_GET_VS_PROXY), ("PUT", TARGET_PUT_VS_PROXY)):
            operation = f"{method} {label}"
            ours = results.median(operation, S3BALANCE)
            proxy = results.median(operation, PROXY)
            text = f"{operation}: s3balance >= {target:.1f}x nginx-proxy"
            if ours is None or not proxy:
                found.append(Verdict(text, "not measured", None))
            else:
                ratio = ours / proxy
                found.append(Verdict(text, f"{ratio:.2f}x", ratio >= target))
        trailer = results.median(trailer_operation(size), S3BALANCE)
        proxy_put = results.median(f"PUT {label}", PROXY)
        text = (
            f"{trailer_operation(size)}: s3balance >= {TARGET_PUT_VS_PROXY:.1f}x "
            "nginx-proxy's plain PUT"
        )
        if trailer is None or not proxy_put:
            found.append(Verdict(text, "not measured", None))
        else:
            ratio = trailer / proxy_put
            found.append(Verdict(text, f"{ratio:.2f}x", ratio >= TARGET_PUT_VS_PROXY))
        hashed = results.median(f"PUT {label}", S3BALANCE_MD5)
        proxy = results.median(f"PUT {label}", PROXY)
        if hashed is not None and proxy:
            found.append(
                Verdict(
                    f"PUT {label}: s3balance-md5 (backend without ETag) vs nginx-proxy (no target)",
                    f"{hashed / proxy:.2f}x",
                    None,
                )
            )
    peaks = [hwm for _, hwm, _ in results.daemon_memory]
    if peaks:
        peak = max(peaks) / 1024
        found.append(
            Verdict(
                f"s3balance peak RSS <= {TARGET_PEAK_RSS_MIB:.0f} MiB",
                f"{peak:.1f} MiB",
                peak <= TARGET_PEAK_RSS_MIB,
            )
        )
    else:
        found.append(Verdict(f"s3balance peak RSS <= {TARGET_PEAK_RSS_MIB:.0f} MiB", "-", None))
    small_after = results.memory_after(f"after {human_size(64 * MiB)}")
    large_after = results.memory_after(f"after {human_size(GiB)}")
    growth_target = f"peak RSS growth 64 MiB -> 1 GiB <= {TARGET_RSS_GROWTH_MIB:.0f} MiB"
    if small_after and large_after:
        growth = (large_after[0] - small_after[0]) / 1024
        found.append(Verdict(growth_target, f"{growth:.1f} MiB", growth <= TARGET_RSS_GROWTH_MIB))
    else:
        found.append(Verdict(growth_target, "needs --sizes with 64M and 1G", None))
    if small_label:
        for method in ("PUT", "GET"):
            operation = f"{method} {small_label}"
            ours = results.median(operation, S3BALANCE)
            proxy = results.median(operation, PROXY)
            if ours is not None and proxy:
                found.append(
                    Verdict(
                        f"{operation}: s3balance vs nginx-proxy (no target)",
                        f"{ours / proxy:.2f}x",
                        None,
                    )
                )
        connections = int(small_label.rsplit("x", 1)[1])
        for target, measured, passed in small_verdicts(
            results.measurements, small_label, connections, S3BALANCE, results.paired
        ):
            found.append(Verdict(target, measured, passed))
    return found


def client_warnings(results: Results) -> list[str]:
    """Say when the direct figures are too low for the client to be ruled out as the limit."""
    warnings = []
    for operation in results.operations:
        if not operation.startswith(("PUT ", "GET ")) or " x" in operation:
            continue
        direct = results.median(operation, DIRECT)
        if direct is not None and direct < CLIENT_FLOOR_MB_S:
            warnings.append(
                f"{operation} direct reached only {direct:.0f} MB/s (< {CLIENT_FLOOR_MB_S:.0f}): "
                "the client or the backend may limit every path"
            )
    return warnings


def report(results: Results, options: argparse.Namespace, paths: list[str]) -> list[str]:
    lines = [
        "",
        "== s3balance bench (loopback; medians of "
        f"{options.repeat} run(s); ratios are what to compare on a shared machine) ==",
    ]
    lines += table(results, paths)
    cpu = cpu_table(results, paths)
    if cpu:
        lines.append("")
        lines.append(
            "CPU time of the process in the middle per GiB moved (medians; lower is better):"
        )
        lines += cpu
    small = small_table(results.measurements, results.operations, paths, results.unavailable)
    if small:
        lines.append("")
        lines.append(
            "small objects: CPU time of the process in the middle per request, p99 latency "
            "(medians):"
        )
        lines += small
        lines += small_notes(results, options, paths)
    lines.append("")
    lines.append("s3balance daemon memory (VmHWM = peak resident, VmRSS = resident now):")
    if results.daemon_memory:
        for label, hwm, rss in results.daemon_memory:
            lines.append(f"  {label:<22} peak {hwm / 1024:7.1f} MiB   now {rss / 1024:7.1f} MiB")
        at_start = results.memory_after("at start")
        peak = max(hwm for _, hwm, _ in results.daemon_memory)
        if at_start:
            lines.append(
                f"  the idle daemon (imports, database, reactor): {at_start[0] / 1024:.1f} MiB; "
                f"transfers added {(peak - at_start[0]) / 1024:.1f} MiB at most"
            )
    else:
        lines.append("  not measured")
    lines.append("")
    lines.append("targets:")
    small_label = None
    if options.small_count > 0:
        small_label = f"{human_size(options.small_size)} x{options.concurrency}"
    for verdict in verdicts(results, options.sizes, small_label):
        state = {True: "PASS", False: "FAIL", None: "----"}[verdict.passed]
        lines.append(f"  [{state}] {verdict.target}: {verdict.measured}")
    for warning in client_warnings(results):
        lines.append(f"warning: {warning}")
    for error in results.setup_errors:
        lines.append(f"error: {error}")
    for note in results.notes:
        lines.append(f"note: {note}")
    return lines


def small_notes(results: Results, options: argparse.Namespace, paths: list[str]) -> list[str]:
    """Below the small-object table: the database of each daemon row, and the scaling from one
    worker to two."""
    lines = []
    sqlite = [p for p in paths if p.startswith(S3BALANCE) and p not in DATABASE_SERVERS]
    others = [f"{p}: {p.rsplit('-', 1)[1]}" for p in paths if p in DATABASE_SERVERS]
    if others:
        lines.append(f"databases: {', '.join(sqlite)}: sqlite; {'; '.join(others)}")
    if S3BALANCE_2WORKERS in paths and options.small_count > 0:
        label = f"{human_size(options.small_size)} x{options.concurrency}"
        lines.append(scaling_line(results.measurements, label, S3BALANCE, results.paired))
    if results.paired:
        seconds = min(options.pair_seconds, options.small_seconds)
        lines.append(
            f"paired rounds of {seconds:g} s, {S3BALANCE} and another daemon (median of the "
            "per-round figures, IQR, range):"
        )
        lines += paired_lines(results.paired, S3BALANCE)
    return lines


def to_json(results: Results, options: argparse.Namespace) -> dict[str, Any]:
    return {
        "options": {k: v for k, v in vars(options).items()},
        "measurements": [
            {
                "operation": m.operation,
                "path": m.path,
                "unit": m.unit,
                "samples": m.samples,
                "median": m.median,
                "cpu_us_per_request": m.cpu_us_per_request,
                "p99_ms": m.p99_ms,
                "error": m.error,
            }
            for m in results.measurements.values()
        ],
        "daemon_memory_kib": [
            {"label": label, "VmHWM": hwm, "VmRSS": rss}
            for label, hwm, rss in results.daemon_memory
        ],
        "notes": results.notes,
        "unavailable": results.unavailable,
        "paired_rounds": [
            {"path": path, "base_path": S3BALANCE, **vars(rounds)}
            for path, rounds in results.paired.items()
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Loopback benchmark: direct backend vs nginx-proxy vs s3balance.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 64 MiB objects, 1 repetition, a short small-object run",
    )
    parser.add_argument(
        "--sizes", help="large object sizes, e.g. 64M,256M,1G (default); none: small objects only"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per figure (default 3)")
    parser.add_argument(
        "--small-count",
        type=int,
        help="distinct small objects written then read (default 1000; 0 skips small objects)",
    )
    parser.add_argument("--small-size", type=parse_size, default=4096, help="default 4K")
    parser.add_argument("--small-seconds", type=float, help="length of one small-object run (5)")
    parser.add_argument(
        "--pair-rounds",
        type=int,
        help="rounds of small GETs paired with s3balance's for the SigV4 and two-worker rows "
        "(10; 0: measure them in the repetitions like the other rows)",
    )
    parser.add_argument(
        "--pair-connections",
        type=int,
        default=8,
        help="connections of each daemon in the rounds that judge SigV4's CPU (8, at most "
        "--concurrency; 0: --concurrency)",
    )
    parser.add_argument(
        "--pair-seconds",
        type=float,
        default=2.0,
        help="length of each run of a paired round (2, at most --small-seconds)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="connections for small objects (32; issue 15 judges p99 at 64)",
    )
    parser.add_argument(
        "--small-client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk when installed (auto), else a pool of python threads",
    )
    parser.add_argument(
        "--paths", default=",".join(ALL_PATHS), help=f"subset of {','.join(ALL_PATHS)}"
    )
    parser.add_argument(
        "--proxy-buffer",
        type=parse_size,
        default=64 << 10,
        help="nginx-proxy's client_body_buffer_size and proxy_buffer_size (default 64K)",
    )
    parser.add_argument(
        "--s3balance-backend",
        choices=("nginx", "local"),
        default="nginx",
        help="s3balance's real bucket: the nginx backend through its S3 adapter (default), or a "
        "local directory beside it (diagnostic: no S3 adapter on the way)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per transfer, seconds")
    parser.add_argument("--workdir", help="parent of the temp dir (default /dev/shm when roomy)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args(argv)
    quick = options.quick
    sizes = options.sizes or ("64M" if quick else "64M,256M,1G")
    options.sizes = [] if sizes == "none" else [parse_size(s) for s in sizes.split(",")]
    if options.repeat is None:
        options.repeat = 1 if quick else 3
    if options.small_count is None:
        options.small_count = 100 if quick else 1000
    if options.small_seconds is None:
        options.small_seconds = 2.0 if quick else 5.0
    if options.pair_rounds is None:
        options.pair_rounds = 4 if quick else 10
    if options.concurrency is None:
        options.concurrency = 8 if quick else 32
    options.paths = [p.strip() for p in options.paths.split(",") if p.strip()]
    unknown = set(options.paths) - set(ALL_PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    if options.repeat < 1 or options.concurrency < 1 or options.small_seconds <= 0:
        parser.error("--repeat, --concurrency and --small-seconds must be positive")
    if options.pair_rounds < 0 or options.pair_seconds <= 0 or options.pair_connections in (1,):
        parser.error("--pair-rounds >= 0, --pair-seconds > 0 and --pair-connections 0 or >= 2")
    if options.pair_connections < 0:
        parser.error("--pair-rounds >= 0, --pair-seconds > 0 and --pair-connections 0 or >= 2")
    if options.small_client == "wrk" and not clients.wrk_available():
        parser.error("wrk is not installed (apt-get install wrk), use --small-client python")
    return options


def main(argv: list[str] | None = None) -> int:
    """Run and print the table; exit 0 when no judged target failed, 1 if one did, 2 on setup."""
    options = parse_args(argv)
    if not nginx_available():
        print("nginx is required: apt-get install nginx", file=sys.stderr)
        return 2
    if shutil.which(clients.CURL) is None:
        print("curl is required: apt-get install curl", file=sys.stderr)
        return 2
    bench = Bench(options)
    try:
        results = bench.run()
    except RuntimeError as e:
        print(f"bench setup failed: {e}", file=sys.stderr)
        return 2
    path_names = [p for p in ALL_PATHS if p in options.paths]
    for line in report(results, options, path_names):
        print(line)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(to_json(results, options), f, indent=2)
    small_label = f"{human_size(options.small_size)} x{options.concurrency}"
    judged = verdicts(results, options.sizes, small_label if options.small_count else None)
    failed = (
        bool(results.setup_errors)
        or any(v.passed is False for v in judged)
        or any(m.error for m in results.measurements.values())
        or any(rounds.error for rounds in results.paired.values())
    )
    return 1 if failed else 0
