"""Two daemons (real processes) sharing one PostgreSQL or MariaDB database and the same two real
buckets on SeaweedFS, under 500 concurrent PUTs from threads split across both, including
overwrites of shared keys from both daemons at once.

Afterwards every view must agree: the listing, HEAD and the MD5 of GET for every key; the store's
rows and the bytes each real bucket holds (listed directly on SeaweedFS); the store's usage, the
admin API of both daemons and their metrics against the sums of what is held.

Every write goes to a real key of its own, so writers of one key from both daemons never touch
each other's bytes: :func:`test_same_key_from_two_daemons_at_once` puts that race under load and
checks the end state is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, ServerDatabase
from test.support import free_ports, unavailable, unique_bucket_name
from test.support.clients import VIRTUAL, ClientDaemon, take_inventory
from test.support.seaweedfs import shared_seaweedfs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WRITERS = 10  # threads, half on each daemon
UNIQUE_PER_WRITER = 20
SHARED_KEYS = 10
SHARED_ROUNDS = 3  # each writer writes every shared key this many times
#: The load and every check after it must fit in this many seconds.
TIME_BOUND = 90.0


def body_for(writer: int, key: str, round_: int) -> bytes:
    """A body whose size names its writer (shared keys) and whose content names the write."""
    if key.startswith("shared/"):
        size = 10_000 * (writer + 1) + int(key.rsplit("-", 1)[1])
    else:
        size = (hash((writer, key)) & 0xFFFF) + 1
    seed = hashlib.sha256(f"{writer}:{key}:{round_}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def writer_of(size: int) -> int:
    return size // 10_000 - 1


@dataclass
class Cluster:
    daemons: list[ClientDaemon]
    database_url: str
    real_buckets: dict[str, str]
    workdir: Path


@contextlib.contextmanager
def running_cluster(
    server: str, workdir: Path, backend_count: int = 2, strategy: str = "round-robin"
) -> Iterator[Cluster]:
    """Two daemons on one new database of ``server`` and the same ``backend_count`` real buckets;
    skips the test when the database server does not answer."""
    database = ServerDatabase(server)
    reason = database.unreachable_reason()
    if reason is not None:
        unavailable(reason)
    url = database.create()
    weed = shared_seaweedfs()
    real_buckets = {}
    for index in range(backend_count):
        real = unique_bucket_name(f"cc{index}")
        weed.create_bucket(real)
        real_buckets[f"weed{index}"] = real
    daemons: list[ClientDaemon] = []
    try:
        for index, port in enumerate(free_ports(2)):
            daemon = ClientDaemon(
                workdir / f"daemon{index}",
                weed,
                database_url=url,
                real_buckets=real_buckets,
                strategy=strategy,
                port=port,
            )
            # One after the other: the first migrates the schema, the second finds it current.
            daemon.start()
            daemons.append(daemon)
        yield Cluster(daemons, url, real_buckets, workdir)
    finally:
        for daemon in daemons:
            daemon.stop()
        database.drop()


@pytest.fixture(params=[POSTGRES_SERVER, MYSQL_SERVER], ids=["postgres", "mariadb"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(request.param, tmp_path) as running:
        yield running


def metric_usage(text: str, backend: str) -> float | None:
    match = re.search(
        rf'^s3_balance_bucket_usage_bytes{{bucket="{re.escape(backend)}"}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else None


def run_load(cluster: Cluster) -> tuple[dict[str, set[tuple[int, bytes]]], list[str]]:
    """500 PUTs from ``WRITERS`` threads, released together; what each key may now hold (as
    ``(writer, body)``), and every PUT that failed."""
    expected: dict[str, set[tuple[int, bytes]]] = {}
    plans: list[list[tuple[str, bytes]]] = []
    for writer in range(WRITERS):
        plan = [
            (f"w{writer}/k{n:02d}", body_for(writer, f"w{writer}/k{n:02d}", 0))
            for n in range(UNIQUE_PER_WRITER)
        ]
        for round_ in range(SHARED_ROUNDS):
            # Writers start the shared keys at different offsets so they collide all along.
            for j in range(SHARED_KEYS):
                key = f"shared/key-{(j + writer) % SHARED_KEYS}"
                plan.append((key, body_for(writer, key, round_)))
        # Interleave unique and shared writes.
        plan = plan[::2] + plan[1::2]
        plans.append(plan)
        for key, body in plan:
            expected.setdefault(key, set()).add((writer, body))
    assert sum(len(plan) for plan in plans) == 500

    start = threading.Barrier(WRITERS, timeout=30)
    failures: list[str] = []

    def write(writer: int) -> None:
        daemon = cluster.daemons[writer % 2]
        s3 = daemon.client()
        start.wait()
        for key, body in plans[writer]:
            try:
                answer = s3.put_object(Bucket=VIRTUAL, Key=key, Body=body)
            except Exception as error:  # every failure a client would see is reported
                failures.append(f"writer {writer} {key}: {error!r}")
                continue
            if answer["ETag"] != f'"{hashlib.md5(body).hexdigest()}"':
                failures.append(f"writer {writer} {key}: ETag {answer['ETag']}")

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(write, range(WRITERS)))
    return expected, failures


def check_client_views(
    cluster: Cluster, expected: dict[str, set[tuple[int, bytes]]]
) -> dict[str, int]:
    """Listing, HEAD and GET agree for every key, through both daemons; the shared keys' winners."""
    winners: dict[str, int] = {}
    for daemon in cluster.daemons:
        s3 = daemon.client()
        listed = {
            entry["Key"]: (entry["Size"], entry["ETag"])
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=VIRTUAL, PaginationConfig={"PageSize": 100}
            )
            for entry in page.get("Contents", [])
        }
        assert set(listed) == set(expected)
        for key, (size, etag) in listed.items():
            head = s3.head_object(Bucket=VIRTUAL, Key=key)
            assert (head["ContentLength"], head["ETag"]) == (size, etag), key
            body = s3.get_object(Bucket=VIRTUAL, Key=key)["Body"].read()
            assert (len(body), f'"{hashlib.md5(body).hexdigest()}"') == (size, etag), key
            written = {candidate for _writer, candidate in expected[key]}
            assert body in written, f"{key} holds bytes nobody wrote"
            if key.startswith("shared/"):
                winner = writer_of(size)
                assert winners.setdefault(key, winner) == winner, "daemons disagree on " + key
    return winners


def check_usage_views(cluster: Cluster, held: dict[str, tuple[int, int]]) -> None:
    """The admin API and metrics of both daemons, once refreshed, say what the buckets hold."""
    deadline = time.monotonic() + 10
    for daemon in cluster.daemons:
        while True:
            reported = daemon.admin_usage()
            metrics = daemon.metrics()
            gauges = {b: metric_usage(metrics, b) for b in cluster.real_buckets}
            wanted = {b: held.get(b, (0, 0)) for b in cluster.real_buckets}
            if reported == wanted and gauges == {b: float(wanted[b][0]) for b in wanted}:
                break
            # Each daemon's in-memory copy catches up with the other's writes at its next
            # refresh (update_stats_period: 1s).
            assert time.monotonic() < deadline, (daemon.endpoint, reported, gauges, wanted)
            time.sleep(0.5)


def test_500_concurrent_puts_through_two_daemons_on_one_database(cluster: Cluster) -> None:
    started = time.monotonic()
    expected, failures = run_load(cluster)
    loaded = time.monotonic()
    print(f"500 PUTs in {loaded - started:.1f}s")
    assert not failures, "\n".join(failures)

    winners = check_client_views(cluster, expected)
    print("shared keys won by writers:", winners)
    inventory = take_inventory(
        cluster.database_url, cluster.daemons[0].weed, cluster.real_buckets, cluster.workdir / "inv"
    )
    problems = inventory.problems(list(cluster.real_buckets))
    for problem in problems:
        print("INCONSISTENT:", problem)
    assert not problems, "\n".join(problems)
    held = inventory.held_usage()
    assert sum(count for _, count in held.values()) == len(expected)
    assert {b for b, _ in inventory.held} == set(cluster.real_buckets)  # both used
    check_usage_views(cluster, held)
    assert time.monotonic() - started < TIME_BOUND


def hammer(cluster: Cluster, keys: list[str], writes_per_thread: int, threads: int) -> list[str]:
    """``threads`` writers (alternating daemons) overwrite ``keys`` over and over, each with its
    own size; the PUTs that failed."""
    start = threading.Barrier(threads, timeout=30)
    failures: list[str] = []

    def write(writer: int) -> None:
        s3 = cluster.daemons[writer % 2].client()
        start.wait()
        for n in range(writes_per_thread):
            key = keys[n % len(keys)]
            try:
                s3.put_object(Bucket=VIRTUAL, Key=key, Body=body_for(writer, key, n))
            except Exception as error:
                failures.append(f"writer {writer} {key}: {error!r}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, range(threads)))
    return failures


@pytest.mark.parametrize("backend_count", [1, 2], ids=["same-backend", "two-backends"])
def test_same_key_from_two_daemons_at_once(tmp_path: Path, backend_count: int) -> None:
    """Two daemons overwrite the same keys at the same moment: one object per key, no orphan."""
    with running_cluster(POSTGRES_SERVER, tmp_path, backend_count=backend_count) as cluster:
        keys = [f"shared/key-{j}" for j in range(2)]
        failures = hammer(cluster, keys, writes_per_thread=40, threads=8)
        assert not failures, "\n".join(failures)
        inventory = take_inventory(
            cluster.database_url, cluster.daemons[0].weed, cluster.real_buckets, tmp_path / "inv"
        )
        problems = inventory.problems(list(cluster.real_buckets))
        for problem in problems:
            print("INCONSISTENT:", problem)
        # What a client reads must agree with itself: HEAD's size and ETag with GET's bytes.
        for daemon in cluster.daemons:
            s3 = daemon.client()
            for key in keys:
                head = s3.head_object(Bucket=VIRTUAL, Key=key)
                body = s3.get_object(Bucket=VIRTUAL, Key=key)["Body"].read()
                got = (len(body), f'"{hashlib.md5(body).hexdigest()}"')
                if got != (head["ContentLength"], head["ETag"]):
                    problems.append(f"{key} via {daemon.endpoint}: HEAD {head}, GET {got}")
        assert not problems, "\n".join(problems)
