"""Rebalance end to end: the daemon as a process over three buckets of SeaweedFS, two of them
filled while the third was disabled, then enabled by a reload (SIGHUP); ``s3balance rebalance
--dry-run`` prints the plan; ``POST /api/rebalance`` spread, while a client keeps reading, ends
with every backend within the threshold of the mean, every object byte-exact with its metadata,
and the store and the buckets in exact agreement."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from test.dbfixture import POSTGRES_SERVER, ServerDatabase
from test.support import unavailable, unique_bucket_name, wait_until
from test.support.clients import (
    ADMIN_TOKEN,
    VIRTUAL,
    ClientDaemon,
    assert_nothing_left_behind,
)
from test.support.scrubbing import run_module
from test.support.seaweedfs import seaweed_or_skip

pytestmark = pytest.mark.timeout(180)

#: max_size of each real bucket.
CAPACITY = 4 * 1024 * 1024
THRESHOLD = 0.05


def body_of(index: int) -> bytes:
    size = 20_000 + (index * 7919) % 40_000
    digest = hashlib.sha256(str(index).encode()).digest()
    return (digest * (size // len(digest) + 1))[:size]


def admin_post(daemon: ClientDaemon, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{daemon.endpoint}/api/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_spread_after_an_empty_backend_joins(tmp_path: Path) -> None:
    weed = seaweed_or_skip()
    daemon = ClientDaemon(tmp_path, weed, backend_count=3)
    for bucket in daemon.config["buckets"]:
        if not bucket.get("virtual"):
            bucket["max_size"] = CAPACITY
    newcomer = daemon.config["buckets"][2]
    newcomer["enabled"] = False  # it joins empty: nothing is written there first
    # Slow enough (seconds) that the job is paused before it ends.
    daemon.config["jobs"] = {"poll_interval": "200ms", "max_bytes_per_second": "400KiB"}
    keys = [f"obj/{index:03}" for index in range(70)]
    with daemon:
        s3 = daemon.client()
        for index, key in enumerate(keys):
            s3.put_object(
                Bucket=VIRTUAL, Key=key, Body=body_of(index), ContentType="application/x-test",
                Metadata={"index": str(index)},
            )  # fmt: skip
        newcomer["enabled"] = True
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not daemon.admin(f"buckets/{newcomer['name']}")["enabled"]:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        time.sleep(1.5)  # the usage monitor's next refresh (update_stats_period: 1s)

        status, dry = admin_post(
            daemon, "rebalance", {"mode": "spread", "threshold": THRESHOLD, "dry_run": True}
        )
        assert status == 200, dry
        plan = dry["plan"]
        assert plan["out_of_balance_before"] and plan["balanced_after"], plan
        assert plan["moves"] > 0
        # The command line plans the same from the configuration file and the database.
        printed = run_module(
            "s3balance", daemon.config_path, "rebalance", "--mode", "spread", "--threshold",
            str(THRESHOLD), "--dry-run", "--json", timeout=120,
        )  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        from_cli = json.loads(printed.stdout)
        assert (from_cli["moves"], from_cli["bytes"]) == (plan["moves"], plan["bytes"])
        text = run_module(
            "s3balance", daemon.config_path, "rebalance", "--mode", "spread", "--dry-run",
            timeout=120,
        )  # fmt: skip
        assert text.returncode == 0 and "moves" in text.stdout, text
        assert newcomer["name"] in text.stdout

        # A reader checks objects for as long as the job runs.
        stop = threading.Event()
        read_problems: list[str] = []
        reads = [0]

        def read_while_moving() -> None:
            reader = daemon.client()
            for _ in range(100_000):
                for index, key in enumerate(keys):
                    if stop.is_set():
                        return
                    got = reader.get_object(Bucket=VIRTUAL, Key=key)
                    if got["Body"].read() != body_of(index):
                        read_problems.append(key)
                    reads[0] += 1

        reader_thread = threading.Thread(target=read_while_moving, daemon=True)
        reader_thread.start()
        try:
            status, started = admin_post(
                daemon, "rebalance", {"mode": "spread", "threshold": THRESHOLD}
            )
            assert status == 200, started
            job_id = started["job"]["id"]
            # Paused, it is still under way: the command line refuses a second one.
            status, paused = admin_post(daemon, f"jobs/{job_id}/pause", {})
            assert (status, paused["state"]) == (200, "paused"), paused
            refused = run_module("s3balance", daemon.config_path, "rebalance", "--mode", "pack")
            assert refused.returncode == 1, (refused, daemon.admin("jobs"))
            assert f"rebalance job {job_id} is paused" in refused.stderr
            status, resumed = admin_post(daemon, f"jobs/{job_id}/resume", {})
            assert status == 200, resumed
            deadline = time.monotonic() + 120
            job = resumed
            while time.monotonic() < deadline and job["state"] in ("queued", "running"):
                time.sleep(0.2)
                job = daemon.admin(f"jobs/{job_id}")
        finally:
            stop.set()
            reader_thread.join(30)
        assert job["state"] == "done", (job, daemon.log_tail())
        assert job["errors"] == 0, job
        assert job["objects_done"] >= plan["moves"] * 0.8, (job, plan)
        assert read_problems == [] and reads[0] > 0

        for index, key in enumerate(keys):
            got = s3.get_object(Bucket=VIRTUAL, Key=key)
            assert got["Body"].read() == body_of(index), key
            assert got["Metadata"] == {"index": str(index)}
            assert got["ContentType"] == "application/x-test"
        status, after = admin_post(
            daemon, "rebalance", {"mode": "spread", "threshold": THRESHOLD, "dry_run": True}
        )
        assert after["plan"]["balanced_before"], after
        assert 'kind="rebalance"' in daemon.metrics()
    inventory = assert_nothing_left_behind(daemon)
    used = {name: inventory.usage.get(name, (0, 0))[0] for name in daemon.real_buckets}
    mean = sum(used.values()) / (CAPACITY * len(used))
    for name, size in used.items():
        assert abs(size / CAPACITY - mean) <= THRESHOLD + 1e-9, (name, used)
    assert used[newcomer["name"]] > 0


@pytest.mark.postgres
def test_two_daemons_on_postgres_rebalance_once_by_themselves(tmp_path: Path) -> None:
    """``balancer.rebalance: spread``, turned on by a reload, in two daemons sharing
    PostgreSQL: both check the balance, one rebalance does the moving, and once balanced no
    other starts."""
    weed = seaweed_or_skip()
    database = ServerDatabase(POSTGRES_SERVER)
    reason = database.unreachable_reason()
    if reason:
        unavailable(reason)
    url = database.create()
    real = {f"weed{index}": unique_bucket_name(f"rb{index}") for index in range(3)}
    for name in real.values():
        weed.create_bucket(name)
    daemons = [
        ClientDaemon(tmp_path / name, weed, database_url=url, real_buckets=real,
                     strategy="weighted")
        for name in ("one", "two")
    ]  # fmt: skip
    for daemon in daemons:
        for bucket in daemon.config["buckets"]:
            if not bucket.get("virtual"):
                bucket["max_size"] = CAPACITY
        daemon.config["buckets"][2]["weight"] = 0  # weighted placement never writes there
        # Off while the objects are written; a reload turns it on (a live key).
        daemon.config["balancer"].update(
            rebalance="off", rebalance_threshold=THRESHOLD, rebalance_interval="1s"
        )
        daemon.config["jobs"] = {"poll_interval": "200ms"}
    keys = [f"obj/{index:03}" for index in range(60)]
    try:
        for daemon in daemons:
            daemon.start()
        s3 = daemons[0].client()
        for index, key in enumerate(keys):
            s3.put_object(Bucket=VIRTUAL, Key=key, Body=body_of(index))
        time.sleep(1.5)  # nothing starts while off
        assert daemons[1].admin("jobs")["jobs"] == []
        for daemon in daemons:
            daemon.config["balancer"]["rebalance"] = "spread"
            daemon.write_config()
            daemon.signal(signal.SIGHUP)

        def rebalance_jobs() -> list[dict[str, Any]]:
            return [j for j in daemons[1].admin("jobs")["jobs"] if j["kind"] == "rebalance"]

        def all_done() -> bool:
            found = rebalance_jobs()
            return bool(found) and all(j["state"] == "done" for j in found)

        assert wait_until(all_done, 90), (rebalance_jobs(), daemons[0].log_tail())
        time.sleep(3)  # both daemons check again (every second): balanced, nothing starts
        found = rebalance_jobs()
        assert all(j["state"] == "done" for j in found), found
        movers = [j for j in found if j["objects_done"]]
        assert len(movers) == 1, found
        for other in found:
            if other is not movers[0]:
                assert other["objects_done"] == 0, found
        starts = [
            daemon.log_path.read_text().count(f"job {movers[0]['id']}: rebalance")
            for daemon in daemons
        ]
        assert sorted(starts)[0] == 0 and sorted(starts)[1] >= 1, starts
        for index, key in enumerate(keys):
            assert s3.get_object(Bucket=VIRTUAL, Key=key)["Body"].read() == body_of(index)
    finally:
        for daemon in daemons:
            daemon.stop()
    try:
        inventory = assert_nothing_left_behind(daemons[0])
        used = {name: inventory.usage.get(name, (0, 0))[0] for name in real}
        mean = sum(used.values()) / (CAPACITY * len(used))
        for name, size in used.items():
            assert abs(size / CAPACITY - mean) <= THRESHOLD + 1e-9, (name, used)
    finally:
        database.drop()
