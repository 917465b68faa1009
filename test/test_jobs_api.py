"""The admin API's jobs and drain endpoints over a real socket (treq), against a real core and
SQLite store whose job runner is not started: jobs stay where the API puts them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from test.test_admin_service import TOKEN, listen_admin, service_config, start_service

pytestmark = pytest.mark.timeout(60)

BEARER = {b"Authorization": [f"Bearer {TOKEN}".encode()]}


class JobsApiTests(TestCase):
    timeout = 30

    async def _start(self) -> None:
        self.service = await start_service(self, service_config(self.mktemp()))
        self.base = listen_admin(self, self.service)
        self.http = HTTPConnectionPool(reactor, persistent=False)

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    async def request(self, method: str, path: str) -> tuple[int, Any]:
        response = await treq.request(
            method, self.base + path, headers=BEARER, pool=self.http,
            data=b"{}" if method == "POST" else None,
        )  # fmt: skip
        return response.code, json.loads(await response.content())

    async def test_drain_then_pause_resume_cancel_through_the_api(self) -> None:
        status, answer = await self.request("POST", "/buckets/r1/drain")
        self.assertEqual(status, 200, answer)
        job = answer["job"]
        self.assertEqual((job["kind"], job["target"], job["state"]), ("drain", "r1", "queued"))
        self.assertEqual((answer["bucket"]["name"], answer["bucket"]["draining"]), ("r1", True))
        # At once in this process: placement skips r1.
        self.assertTrue(self.service.pool.is_drained("r1"))
        self.assertEqual([c.name for c in self.service.pool.candidates(1)], ["r2"])
        status, again = await self.request("POST", "/buckets/r1/drain")
        self.assertEqual((status, again["job"]["id"]), (200, job["id"]))

        status, listed = await self.request("GET", "/jobs")
        self.assertEqual((status, [j["id"] for j in listed["jobs"]]), (200, [job["id"]]))
        status, listed = await self.request("GET", "/jobs?state=done")
        self.assertEqual((status, listed["jobs"]), (200, []))
        self.assertEqual((await self.request("GET", "/jobs?state=sleeping"))[0], 400)
        status, shown = await self.request("GET", f"/jobs/{job['id']}")
        self.assertEqual((status, shown["id"], shown["eta_seconds"]), (200, job["id"], None))
        for path in ("/jobs/12345", "/jobs/abc", "/jobs/12345/pause"):
            status, error = await self.request("POST" if "pause" in path else "GET", path)
            self.assertEqual((status, error["status"]), (404, 404), path)

        status, paused = await self.request("POST", f"/jobs/{job['id']}/pause")
        self.assertEqual((status, paused["state"]), (200, "paused"))
        status, refused = await self.request("POST", f"/jobs/{job['id']}/pause")
        self.assertEqual(status, 409)
        self.assertIn("paused", refused["error"])
        status, resumed = await self.request("POST", f"/jobs/{job['id']}/resume")
        self.assertEqual((status, resumed["state"]), (200, "queued"))
        status, cancelled = await self.request("POST", f"/jobs/{job['id']}/cancel")
        self.assertEqual((status, cancelled["state"]), (200, "cancelled"))
        self.assertFalse(self.service.pool.is_drained("r1"))
        status, bucket = await self.request("GET", "/buckets/r1")
        self.assertEqual(
            (bucket["draining"], bucket["drain_job"], bucket["removable"]), (False, None, False)
        )
        self.assertEqual((await self.request("POST", f"/jobs/{job['id']}/cancel"))[0], 409)

    async def test_drain_refuses_virtual_and_unknown_buckets_and_undrain_gives_back(self) -> None:
        self.assertEqual((await self.request("POST", "/buckets/photos/drain"))[0], 409)
        self.assertEqual((await self.request("POST", "/buckets/nope/drain"))[0], 404)
        self.assertEqual((await self.request("POST", "/buckets/nope/undrain"))[0], 404)
        status, answer = await self.request("POST", "/buckets/r2/drain")
        self.assertEqual(status, 200)
        # r2 holds nothing, but its drain has not run: not removable yet.
        status, bucket = await self.request("GET", "/buckets/r2")
        self.assertEqual(
            (bucket["held_objects"], bucket["drain_state"], bucket["removable"]),
            (0, "queued", False),
        )
        status, undone = await self.request("POST", "/buckets/r2/undrain")
        self.assertEqual((status, undone["job"]["state"]), (200, "cancelled"))
        self.assertEqual(undone["bucket"]["draining"], False)
        self.assertFalse(self.service.pool.is_drained("r2"))
        status, undone = await self.request("POST", "/buckets/r2/undrain")
        self.assertEqual((status, undone["job"]), (200, None))

    async def test_the_bucket_list_says_which_buckets_drain(self) -> None:
        # The console's dashboard draws the drain state of every bucket from this one list.
        status, listed = await self.request("GET", "/buckets")
        real = {b["name"]: b for b in listed["buckets"] if not b["virtual"]}
        self.assertEqual(
            {n: (b["draining"], b["drain_job"], b["removable"]) for n, b in real.items()},
            {"r1": (False, None, False), "r2": (False, None, False)},
        )
        self.assertNotIn("held_objects", real["r1"])
        status, answer = await self.request("POST", "/buckets/r1/drain")
        self.assertEqual(status, 200)
        status, listed = await self.request("GET", "/buckets")
        r1 = next(b for b in listed["buckets"] if b["name"] == "r1")
        self.assertEqual(
            (r1["draining"], r1["drain_job"], r1["drain_state"], r1["held_objects"]),
            (True, answer["job"]["id"], "queued", 0),
        )
        self.assertFalse(r1["removable"])
        r2 = next(b for b in listed["buckets"] if b["name"] == "r2")
        self.assertEqual((r2["draining"], r2["drain_state"]), (False, None))
