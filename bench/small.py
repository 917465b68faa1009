"""Small objects as issue 15 judges them: req/s against the stock Twisted proxy, the CPU each
request costs the process in the middle, p99 latency, and what SigV4 verification adds.

CPU per request is the middle process's user + system time over the run (``/proc/<pid>/stat``)
divided by the requests answered: unlike req/s it does not count waiting for a core, so it is
the figure to compare on a machine shared with other work.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from bench.clients import LoadResult
from bench.dbserver import MARIADB_SERVER, POSTGRES_SERVER
from bench.paired import Pairs, Spread, describe_difference, describe_ratio, spread
from bench.procs import cpu_seconds

#: The stock ``twisted.web.proxy.ReverseProxyResource`` (small objects only: it buffers whole
#: bodies, 2.1 GiB for a 1 GiB PUT).
TWISTED_PROXY = "twisted-proxy"
#: The daemon requiring SigV4, sent requests signed up front (small objects only; needs wrk).
S3BALANCE_SIGV4 = "s3balance-sigv4"
#: The daemon with ``server.workers: 2`` (a supervisor and two worker processes), SQLite: its
#: req/s against the one-worker ``s3balance`` of the same run is the scaling.
S3BALANCE_2WORKERS = "s3balance-2workers"
#: The one-worker daemon on a fresh database of the local PostgreSQL / MariaDB server.
S3BALANCE_POSTGRES = "s3balance-postgres"
S3BALANCE_MARIADB = "s3balance-mariadb"
#: Path -> the database server its daemon uses (the other daemons use SQLite).
DATABASE_SERVERS = {S3BALANCE_POSTGRES: POSTGRES_SERVER, S3BALANCE_MARIADB: MARIADB_SERVER}
SMALL_ONLY_PATHS = (
    TWISTED_PROXY,
    S3BALANCE_SIGV4,
    S3BALANCE_2WORKERS,
    S3BALANCE_POSTGRES,
    S3BALANCE_MARIADB,
)

#: Paths judged against the one-worker ``s3balance`` in paired rounds of small GETs
#: (``bench/paired.py``), and how: ``cpu``, the difference of the CPU per request of the two
#: daemons loaded at the same time in each round; ``rate``, the ratio of their req/s in runs
#: back to back (two workers need both cores: they cannot share the machine with the base).
PAIRED_PATHS = {S3BALANCE_SIGV4: "cpu", S3BALANCE_2WORKERS: "rate"}
#: ``other path -> its paired rounds`` in one run.
PairedRounds = Mapping[str, Pairs]

# Targets of issue 15 ("a lean request path"), one worker.
TARGET_GET_CPU_US = 450.0
TARGET_PUT_CPU_US = 900.0
TARGET_VS_TWISTED = 1.0
TARGET_PUT_P99_MS = 100.0
TARGET_P99_CONNECTIONS = 64
TARGET_SIGV4_EXTRA_US = 100.0
# Target of issue 15 ("workers"): small GET req/s with two workers against one, same run.
TARGET_WORKERS_SCALING = 1.4


class SmallFigures(Protocol):
    """What a measurement of one operation on one path holds (``bench.run.Measurement``)."""

    samples: list[float]
    cpu_us_per_request: list[float]
    p99_ms: list[float]
    error: str


def timed_load(run: Callable[[], LoadResult], pids: Sequence[int]) -> tuple[LoadResult, float]:
    """Run a load and charge the CPU time of ``pids`` during it to the requests it sent.

    :returns: the load's figures and the CPU microseconds per request (0 when no pid).
    """
    before = sum(cpu_seconds(pid) for pid in pids)
    load = run()
    used = sum(cpu_seconds(pid) for pid in pids) - before
    sent = load.requests + load.failures
    return load, (used * 1e6 / sent if pids and sent else 0.0)


def timed_loads_together(
    loads: Sequence[tuple[Callable[[], LoadResult], Sequence[int]]],
) -> list[tuple[LoadResult, float]]:
    """Run loads at the same time, each charged the CPU time of its own ``pids`` over the
    window they share (see :func:`timed_load`): whatever else the machine runs meanwhile
    weighs on all of them alike.

    :returns: per load, in order: its figures and the CPU microseconds per request.
    """
    before = [sum(cpu_seconds(pid) for pid in pids) for _, pids in loads]
    with ThreadPoolExecutor(max_workers=len(loads)) as pool:
        futures = [pool.submit(run) for run, _ in loads]
        found = [future.result() for future in futures]
    timed = []
    for (_, pids), start, load in zip(loads, before, found, strict=True):
        used = sum(cpu_seconds(pid) for pid in pids) - start
        sent = load.requests + load.failures
        timed.append((load, used * 1e6 / sent if pids and sent else 0.0))
    return timed


def _median(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None


def _cell(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def small_table(
    measurements: dict[tuple[str, str], Any],
    operations: Sequence[str],
    paths: Sequence[str],
    unavailable: Mapping[str, str] | None = None,
) -> list[str]:
    """Small objects: req/s, ratio to the stock Twisted proxy, CPU µs per request, p99 (medians).

    :param unavailable: path -> why it was not measured (its database server did not answer):
        such a path gets a row saying so, and the reason below the table.
    """
    unavailable = unavailable or {}
    rows = [("operation", "path", "req/s", "vs twisted-proxy", "CPU/request", "p99")]
    for operation in operations:
        if " x" not in operation:
            continue
        twisted = measurements.get((operation, TWISTED_PROXY))
        base = _median(twisted.samples) if twisted is not None and not twisted.error else None
        for path in paths:
            if path in unavailable:
                rows.append((operation, path, "not reachable", "-", "-", "-"))
                continue
            entry: SmallFigures | None = measurements.get((operation, path))
            if entry is None or entry.error or not entry.samples:
                continue
            rate = statistics.median(entry.samples)
            ratio = f"{rate / base:.2f}x" if base else "-"
            rows.append(
                (
                    operation,
                    path,
                    f"{rate:.0f}",
                    ratio,
                    _cell(_median(entry.cpu_us_per_request), "µs"),
                    _cell(_median(entry.p99_ms), "ms", 1),
                )
            )
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines + [f"! {path} not measured: {why}" for path, why in unavailable.items()]


def worker_scaling(
    measurements: dict[tuple[str, str], Any],
    label: str,
    daemon: str,
    paired: PairedRounds | None = None,
) -> dict[str, float | None]:
    """Method -> req/s of :data:`S3BALANCE_2WORKERS` over req/s of the one-worker ``daemon``
    (same run), None where either was not measured: the median of the per-round ratios where
    the two were paired, else the ratio of their medians."""
    found: dict[str, float | None] = {}
    for method in ("GET", "PUT"):
        rounds = paired_spread(paired, method, S3BALANCE_2WORKERS)
        if rounds is not None:
            found[method] = rounds.median
            continue
        rates = []
        for path in (S3BALANCE_2WORKERS, daemon):
            entry = measurements.get((f"{method} {label}", path))
            ok = entry is not None and not entry.error and entry.samples
            rates.append(statistics.median(entry.samples) if ok else None)
        two, one = rates
        found[method] = two / one if two is not None and one else None
    return found


def paired_spread(paired: PairedRounds | None, method: str, path: str) -> Spread | None:
    """The spread of ``path``'s paired rounds against the base: differences of CPU per request
    or ratios of req/s, as :data:`PAIRED_PATHS` says; None when its ``method`` requests were
    not paired."""
    rounds = (paired or {}).get(path)
    if rounds is None or not rounds.operation.startswith(f"{method} "):
        return None
    if PAIRED_PATHS.get(path) == "rate":
        return spread(rounds.ratios())
    return spread(rounds.differences())


def scaling_line(
    measurements: dict[tuple[str, str], Any],
    label: str,
    daemon: str,
    paired: PairedRounds | None = None,
) -> str:
    """The scaling from one worker to two, as the report prints it."""
    cells = []
    for method, ratio in worker_scaling(measurements, label, daemon, paired).items():
        rounds = paired_spread(paired, method, S3BALANCE_2WORKERS)
        if rounds is not None:
            cells.append(f"{method} {describe_ratio(rounds)}")
        else:
            cells.append(f"{method} {'-' if ratio is None else f'{ratio:.2f}x'}")
    return (
        f"scaling with server.workers: 2 ({S3BALANCE_2WORKERS} req/s / {daemon} req/s, "
        f"{label}): {', '.join(cells)}"
    )


def small_verdicts(
    measurements: dict[tuple[str, str], Any],
    label: str,
    connections: int,
    daemon: str,
    paired: PairedRounds | None = None,
) -> list[tuple[str, str, bool | None]]:
    """Issue 15's targets for one worker, as ``(target, measured, passed)``; passed is None
    when this run cannot judge it.

    :param label: the small operations' suffix, ``4 KiB x64``.
    :param daemon: the path of the daemon judged (``s3balance``).
    :param paired: the paired rounds of the run: SigV4's cost and the scaling are judged on
        the median of their per-round figures where present, else on the medians' difference
        or ratio (noisy: the two were measured further apart).
    """

    def figure(operation: str, path: str, attribute: str) -> float | None:
        entry = measurements.get((operation, path))
        if entry is None or entry.error:
            return None
        return _median(getattr(entry, attribute))

    found: list[tuple[str, str, bool | None]] = []
    for method, limit in (("GET", TARGET_GET_CPU_US), ("PUT", TARGET_PUT_CPU_US)):
        operation = f"{method} {label}"
        cpu = figure(operation, daemon, "cpu_us_per_request")
        target = f"{operation}: {daemon} CPU per request <= {limit:.0f} µs"
        found.append((target, _cell(cpu, "µs"), None if cpu is None else cpu <= limit))
    for method in ("GET", "PUT"):
        operation = f"{method} {label}"
        ours = figure(operation, daemon, "samples")
        twisted = figure(operation, TWISTED_PROXY, "samples")
        target = f"{operation}: {daemon} >= {TARGET_VS_TWISTED:.1f}x {TWISTED_PROXY} req/s"
        if ours is None or not twisted:
            found.append((target, "not measured", None))
        else:
            ratio = ours / twisted
            found.append((target, f"{ratio:.2f}x", ratio >= TARGET_VS_TWISTED))
    operation = f"PUT {label}"
    p99 = figure(operation, daemon, "p99_ms")
    target = (
        f"{operation}: {daemon} p99 <= {TARGET_PUT_P99_MS:.0f} ms "
        f"(judged at {TARGET_P99_CONNECTIONS} connections)"
    )
    passed = None
    if p99 is not None and connections == TARGET_P99_CONNECTIONS:
        passed = p99 <= TARGET_PUT_P99_MS
    found.append((target, _cell(p99, "ms", 1), passed))
    operation = f"GET {label}"
    plain = figure(operation, daemon, "cpu_us_per_request")
    signed = figure(operation, S3BALANCE_SIGV4, "cpu_us_per_request")
    target = f"{operation}: SigV4 adds <= {TARGET_SIGV4_EXTRA_US:.0f} µs CPU per request"
    rounds = paired_spread(paired, "GET", S3BALANCE_SIGV4)
    if rounds is not None:
        passed = rounds.median <= TARGET_SIGV4_EXTRA_US
        found.append((target, describe_difference(rounds), passed))
    elif plain is None or signed is None:
        found.append((target, "not measured", None))
    else:
        extra = signed - plain
        found.append((target, f"{extra:+.0f} µs", extra <= TARGET_SIGV4_EXTRA_US))
    scaling = worker_scaling(measurements, label, daemon, paired)
    for method, limit in (("GET", TARGET_WORKERS_SCALING), ("PUT", None)):
        ratio = scaling[method]
        judged = f">= {limit:.1f}x one worker" if limit else "vs one worker (no target)"
        target = f"{method} {label}: req/s with 2 workers {judged}"
        measured = "not measured" if ratio is None else f"{ratio:.2f}x"
        rounds = paired_spread(paired, method, S3BALANCE_2WORKERS)
        if rounds is not None:
            measured = describe_ratio(rounds)
        passed = None if ratio is None or limit is None else ratio >= limit
        found.append((target, measured, passed))
    return found


def paired_lines(paired: PairedRounds, base: str) -> list[str]:
    """The paired rounds as the report prints them, one line per comparison: the median of the
    per-round figures, the quartiles and the range."""
    lines = []
    for path, rounds in paired.items():
        operation = rounds.operation
        found = paired_spread(paired, operation.split(" ", 1)[0], path)
        if PAIRED_PATHS.get(path) == "rate":
            what = f"{path} req/s / {base} req/s"
            measured = "-" if found is None else describe_ratio(found)
        else:
            what = f"{path} CPU/request - {base} CPU/request"
            measured = "-" if found is None else describe_difference(found)
        how = "pinned to one core, loaded together" if PAIRED_PATHS.get(path) == "cpu" else (
            "back to back, the order alternating"
        )
        lines.append(f"  {operation}, {how}: {what}: {measured}")
        if rounds.error:
            lines.append(f"  ! {operation} via {path}, rounds stopped: {rounds.error}")
    return lines
