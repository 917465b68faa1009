"""``POST /api/rebalance`` over a real socket, against a real core, SQLite store and local
directories: a dry run answers the plan from the live numbers and moves nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from s3balance.net.bytesproducer import BytesProducer
from test.test_admin_service import TOKEN, listen_admin, service_config, start_service

pytestmark = pytest.mark.timeout(60)

BEARER = {b"Authorization": [f"Bearer {TOKEN}".encode()]}
SIZE = 1000
CAPACITY = 100 * SIZE


class RebalanceApiTests(TestCase):
    timeout = 30

    async def _start(self) -> None:
        self.config = service_config(self.mktemp(), names=("r1", "r2", "r3"))
        for bucket in self.config.real_buckets:
            bucket.max_size = CAPACITY
        self.service = await start_service(self, self.config)
        self.base = listen_admin(self, self.service)
        self.http = HTTPConnectionPool(reactor, persistent=False)
        # r3 joins empty: everything is written while it is disabled.
        self.service.pool.set_enabled("r3", False)
        for i in range(60):
            body = BytesProducer(bytes([i]) * SIZE)
            await self.service.gateway.put_object("photos", f"k{i:03}", body, SIZE, {}, {})
        self.service.pool.set_enabled("r3", True)
        await self.service.usage.refresh()

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        response = await treq.request(
            method, self.base + path, data=data, headers=BEARER, pool=self.http
        )
        return response.code, json.loads(await response.content())

    async def locations(self) -> dict[str, tuple[str, ...]]:
        found = {}
        for i in range(60):
            record = await self.service.store.get_object("photos", f"k{i:03}")
            assert record is not None
            found[record.key] = tuple(loc.backend for loc in record.locations)
        return found

    async def test_spread_dry_run_reports_the_plan_and_moves_nothing(self) -> None:
        before = await self.locations()
        self.assertEqual(sorted(set(before.values())), [("r1",), ("r2",)])
        status, document = await self.request(
            "POST", "/rebalance", {"mode": "spread", "threshold": 0.05, "dry_run": True}
        )
        self.assertEqual(status, 200, document)
        plan = document["plan"]
        self.assertTrue(document["dry_run"])
        self.assertEqual((plan["mode"], plan["threshold"]), ("spread", 0.05))
        self.assertAlmostEqual(plan["mean_fraction"], 0.2)
        self.assertFalse(plan["balanced_before"])
        self.assertTrue(plan["balanced_after"])
        self.assertEqual(plan["stopped"], "balanced")
        backends = {b["name"]: b for b in plan["backends"]}
        self.assertEqual(backends["r3"]["fraction_before"], 0.0)
        self.assertEqual(backends["r1"]["fraction_before"], 0.3)
        for backend in backends.values():
            self.assertLessEqual(abs(backend["fraction_after"] - 0.2), 0.05 + 1e-9)
        self.assertEqual(backends["r3"]["bytes_in"], plan["bytes"])
        self.assertEqual(plan["bytes"], plan["moves"] * SIZE)
        self.assertGreaterEqual(plan["moves"], 15)
        self.assertEqual(len(plan["first_moves"]), plan["moves"])
        self.assertEqual({m["target"] for m in plan["first_moves"]}, {"r3"})
        # Nothing moved.
        self.assertEqual(await self.locations(), before)
        self.assertEqual(self.service.usage.usage("r3").used_bytes, 0)

    async def test_pack_and_defaults_from_the_configuration(self) -> None:
        self.service.config.balancer.rebalance = "pack"
        self.service.config.balancer.rebalance_threshold = 0.0
        status, document = await self.request("POST", "/rebalance", {"dry_run": True})
        self.assertEqual(status, 200, document)
        plan = document["plan"]
        self.assertEqual((plan["mode"], plan["threshold"]), ("pack", 0.0))
        backends = {b["name"]: b for b in plan["backends"]}
        self.assertEqual(backends["r1"]["used_after"], 60 * SIZE)
        self.assertEqual((backends["r2"]["used_after"], backends["r3"]["used_after"]), (0, 0))
        self.assertEqual(plan["stopped"], "balanced")

    async def test_an_unhealthy_backend_takes_no_part(self) -> None:
        self.service.pool.set_enabled("r3", False)
        status, document = await self.request(
            "POST", "/rebalance", {"mode": "spread", "threshold": 0.05, "dry_run": True}
        )
        plan = document["plan"]
        self.assertEqual((status, plan["moves"], plan["stopped"]), (200, 0, "balanced"))
        r3 = next(b for b in plan["backends"] if b["name"] == "r3")
        self.assertEqual((r3["takes_part"], r3["note"]), (False, "disabled"))

    async def test_bad_requests_name_what_is_allowed(self) -> None:
        for body, words in [
            ({"dry_run": True}, "mode must be one of spread, pack"),
            ({"mode": "even", "dry_run": True}, 'got "even"'),
            ({"mode": "spread", "threshold": 2, "dry_run": True}, "from 0 to 1"),
            ({"mode": "spread", "threshold": "0.1", "dry_run": True}, "number from 0 to 1"),
            ({"mode": "spread", "dry_run": "yes"}, "dry_run must be true or false"),
            ({"mode": "spread", "max_moves": 0, "dry_run": True}, "max_moves"),
        ]:
            status, document = await self.request("POST", "/rebalance", body)
            self.assertEqual(status, 400, body)
            self.assertIn(words, document["error"])

    async def test_a_rebalance_job_is_started_once_and_shown(self) -> None:
        status, document = await self.request("GET", "/rebalance")
        self.assertEqual(status, 200)
        self.assertEqual(
            document["settings"], {"rebalance": "off", "threshold": 0.1, "interval": 3600.0}
        )
        self.assertEqual((document["job"], document["last_check"]), (None, None))
        # Nothing runs jobs in this service: the job stays queued.
        status, started = await self.request(
            "POST", "/rebalance", {"mode": "spread", "threshold": 0.05}
        )
        self.assertEqual(status, 200, started)
        job = started["job"]
        self.assertEqual((started["dry_run"], job["kind"], job["state"]),
                         (False, "rebalance", "queued"))  # fmt: skip
        self.assertEqual(job["params"]["mode"], "spread")
        status, refused = await self.request("POST", "/rebalance", {"mode": "pack"})
        self.assertEqual(status, 409)
        self.assertIn(f"rebalance job {job['id']} is queued", refused["error"])
        self.assertEqual(refused["job"]["id"], job["id"])
        status, document = await self.request("GET", "/rebalance")
        self.assertEqual(document["job"]["id"], job["id"])
        # A dry run is always allowed.
        status, _ = await self.request("POST", "/rebalance", {"mode": "pack", "dry_run": True})
        self.assertEqual(status, 200)
        status, cancelled = await self.request("POST", f"/jobs/{job['id']}/cancel")
        self.assertEqual((status, cancelled["state"]), (200, "cancelled"))
        status, _ = await self.request("POST", "/rebalance", {"mode": "pack"})
        self.assertEqual(status, 200)
