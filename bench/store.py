"""``python -m bench.store``: CPU per call of the metadata store's hot calls, over SQLite.

The lookup a GET does (``get_object``) and the commit a PUT does (``commit_object``) run
synchronously (:class:`~s3balance.db.pool.InlineDBPool`, no thread hop) on a migrated SQLite file
in a temporary directory; the figure is process CPU time per call (``time.process_time``), the
best of a few rounds, so it counts SQLAlchemy and the store's own Python rather than waiting on
the disk.  Objects have one location and a few headers, as a small PUT makes them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from s3balance.db import migrate
from s3balance.db.engine import create_engine
from s3balance.db.pool import InlineDBPool
from s3balance.db.records import Location, ObjectRecord
from s3balance.db.store import MetadataStore

BUCKET = "bench"
BACKEND = "disk"


def small_object(key: str, generation: int) -> ObjectRecord:
    """What a 4 KiB PUT commits: one location, a content type, an MD5 ETag."""
    return ObjectRecord(
        bucket=BUCKET,
        key=key,
        size=4096,
        etag=f'"{generation:032x}"',
        last_modified=1_700_000_000.0 + generation,
        headers={"content-type": "application/octet-stream"},
        locations=(Location(BACKEND, f"{key}.{generation}"),),
    )


def cpu_per_call(call: Callable[[int], object], calls: int, rounds: int) -> float:
    """Microseconds of process CPU per ``call(i)``, the best of ``rounds`` rounds."""
    best = float("inf")
    for round_number in range(rounds):
        started = time.process_time()
        for i in range(calls):
            call(round_number * calls + i)
        best = min(best, time.process_time() - started)
    return best / calls * 1e6


def measure(directory: Path, calls: int, rounds: int) -> dict[str, float]:
    engine = create_engine(f"sqlite:///{directory / 'bench.db'}")
    migrate.upgrade(engine)
    store = MetadataStore(InlineDBPool(engine))
    try:
        store.create_bucket(BUCKET, 0.0)
        keys = [f"small/{i:05d}" for i in range(calls)]
        for i, key in enumerate(keys):
            store.commit_object(small_object(key, i))
        results = {
            "get_object (GET lookup)": cpu_per_call(
                lambda i: store.get_object(BUCKET, keys[i % calls]), calls, rounds
            ),
            "commit_object, new key (PUT)": cpu_per_call(
                lambda i: store.commit_object(small_object(f"new/{i:07d}", i)), calls, rounds
            ),
            "commit_object, replacing (PUT)": cpu_per_call(
                lambda i: store.commit_object(small_object(keys[i % calls], calls + i)),
                calls,
                rounds,
            ),
        }
    finally:
        engine.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3balance-bench-store-") as directory:
        results = measure(Path(directory), args.calls, args.rounds)
    for name, micros in results.items():
        print(f"{name:<34} {micros:8.1f} µs CPU per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
