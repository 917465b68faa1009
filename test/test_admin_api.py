"""The admin API over a real socket, driven with treq, against a real core and SQLite store."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

import pytest
import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from s3balance.pool import month_of
from test.test_admin_service import TOKEN, listen_admin, service_config, start_service

pytestmark = pytest.mark.timeout(60)

BEARER = {b"Authorization": [f"Bearer {TOKEN}".encode()]}


class AdminApiTests(TestCase):
    timeout = 30

    async def _start(self, **changes: Any) -> None:
        workdir = self.mktemp()
        self.config = service_config(workdir)
        self.config.buckets[0].secret_access_key = "very-secret-key"
        self.config.buckets[0].operation_limits.type_a = 1000
        self.service = await start_service(self, self.config)
        self.base = listen_admin(self, self.service)
        self.http = HTTPConnectionPool(reactor, persistent=False)

    def setUp(self) -> Any:
        from twisted.internet import defer

        return defer.ensureDeferred(self._start())

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Any, Any]:
        """``(status, JSON document or None, response)``."""
        data = None if body is None else json.dumps(body).encode()
        response = await treq.request(
            method,
            self.base + path,
            data=data,
            headers=BEARER if headers is None else headers,
            pool=self.http,
        )
        content = await response.content()
        document = json.loads(content) if content else None
        return response.code, document, response

    # -- authentication and CORS --------------------------------------------------------------

    async def test_token_required_as_bearer_or_bare(self) -> None:
        status, document, response = await self.request("GET", "/buckets", headers={})
        self.assertEqual(status, 401)
        self.assertIn("error", document)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        status, document, _ = await self.request(
            "GET", "/buckets", headers={b"Authorization": [b"Bearer not-the-token"]}
        )
        self.assertEqual((status, document["error"]), (401, "invalid token"))
        # A prefix of the token is not the token.
        status, _, _ = await self.request(
            "GET", "/buckets", headers={b"Authorization": [TOKEN[:-1].encode()]}
        )
        self.assertEqual(status, 401)
        status, _, _ = await self.request("GET", "/buckets")
        self.assertEqual(status, 200)
        status, _, _ = await self.request(
            "GET", "/buckets", headers={b"Authorization": [TOKEN.encode()]}
        )
        self.assertEqual(status, 200)

    async def test_cors_preflight_needs_no_token(self) -> None:
        status, _, response = await self.request(
            "OPTIONS",
            "/config",
            headers={
                b"Origin": [b"http://ui.example"],
                b"Access-Control-Request-Method": [b"POST"],
                b"Access-Control-Request-Headers": [b"authorization, content-type"],
            },
        )
        self.assertEqual(status, 204)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertIn(b"POST", headers.getRawHeaders(b"access-control-allow-methods")[0])
        allowed = headers.getRawHeaders(b"access-control-allow-headers")[0].lower()
        self.assertIn(b"authorization", allowed)
        self.assertIn(b"content-type", allowed)
        # Answers to real requests carry the origin header too, so a browser can read them.
        _, _, response = await self.request("GET", "/health")
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])

    async def test_repair_reports_its_last_pass_and_backlog(self) -> None:
        status, document, _ = await self.request("GET", "/repair")
        self.assertEqual((status, document["last_pass"], document["backlog"]), (200, None, None))
        self.assertEqual(document["settings"]["max_concurrency"], 2)
        await self.service.repair.run_once()
        status, document, _ = await self.request("GET", "/repair")
        self.assertEqual((status, document["backlog"], document["running"]), (200, 0, False))
        self.assertEqual(document["last_pass"]["copies"], 0)
        self.assertIsNotNone(document["last_pass"]["finished"])
        self.assertEqual(document["settings"]["verify_batch"], 1000)
        # The first pass looked at every bucket's objects once; the next has nothing to scan.
        self.assertTrue(document["last_pass"]["full_buckets"])
        await self.service.repair.run_once()
        status, document, _ = await self.request("GET", "/repair")
        last = document["last_pass"]
        self.assertEqual((last["full_buckets"], document["verification"]), ([], {}))
        status, _, _ = await self.request("GET", "/repair", headers={})
        self.assertEqual(status, 401)

    async def test_unknown_path_and_wrong_method(self) -> None:
        status, document, _ = await self.request("GET", "/nothing/here")
        self.assertEqual(status, 404)
        self.assertIn("error", document)
        status, _, response = await self.request("DELETE", "/config")
        self.assertEqual(status, 405)
        self.assertIn(b"GET", response.headers.getRawHeaders(b"allow")[0])

    # -- buckets and health -------------------------------------------------------------------

    async def test_buckets_lists_real_and_virtual(self) -> None:
        # The health probes' HeadBuckets count too (class B).
        before = self.service.pool.operation_counts("r1")
        self.service.pool.record_operation("r1", "PutObject", bytes_in=10)
        self.service.pool.record_operation("r1", "GetObject", bytes_out=5)
        status, document, _ = await self.request("GET", "/buckets")
        self.assertEqual(status, 200)
        by_name = {b["name"]: b for b in document["buckets"]}
        self.assertEqual(set(by_name), {"r1", "r2", "photos"})
        r1 = by_name["r1"]
        self.assertFalse(r1["virtual"])
        self.assertTrue(r1["healthy"] and r1["enabled"])
        self.assertIsNotNone(r1["last_probe"])
        self.assertIsNone(r1["last_error"])
        self.assertEqual(
            (r1["class_a_operations"], r1["class_b_operations"]),
            (before.class_a + 1, before.class_b + 1),
        )
        self.assertEqual((r1["class_a_limit"], r1["class_b_limit"]), (1000, 0))
        self.assertEqual(r1["month"], month_of(time.time()))
        self.assertEqual((r1["used_bytes"], r1["object_count"]), (0, 0))
        self.assertNotIn("very-secret-key", json.dumps(document))
        vb = by_name["photos"]
        self.assertEqual(vb["virtual"], True)
        self.assertTrue(vb["from_config"])
        self.assertLess(abs(vb["created"] - time.time()), 60)

        status, one, _ = await self.request("GET", "/buckets/r2")
        self.assertEqual((status, one["name"], one["weight"]), (200, "r2", 1))
        status, one, _ = await self.request("GET", "/buckets/photos")
        self.assertEqual((status, one["virtual"]), (200, True))
        status, _, _ = await self.request("GET", "/buckets/missing")
        self.assertEqual(status, 404)

    async def test_disable_and_enable_take_a_backend_out_of_placement(self) -> None:
        status, document, _ = await self.request("POST", "/buckets/r1/disable")
        self.assertEqual(status, 200)
        self.assertFalse(document["bucket"]["enabled"])
        self.assertEqual(self.service.pool.choose("photos", "k", 1), ["r2"])
        status, health, _ = await self.request("GET", "/health")
        self.assertFalse(health["backends"]["r1"]["enabled"])
        _, config, _ = await self.request("GET", "/config")
        self.assertFalse(next(b for b in config["buckets"] if b["name"] == "r1")["enabled"])
        status, document, _ = await self.request("POST", "/buckets/r1/enable")
        self.assertTrue(document["bucket"]["enabled"])
        self.assertEqual(sorted(self.service.pool.choose("photos", "k", 1)), ["r1", "r2"])
        status, _, _ = await self.request("POST", "/buckets/photos/disable")
        self.assertEqual(status, 404)

    async def test_health_reports_a_broken_backend_with_its_reason(self) -> None:
        status, document, _ = await self.request("GET", "/health")
        self.assertEqual((status, document["status"]), (200, "healthy"))
        # A file where the directory should be: the local backend's probe fails.
        root = self.service.backends["r2"].root  # type: ignore[attr-defined]
        import shutil

        await self.service.backends["r2"].capacity()  # its disk threads are done preparing root
        shutil.rmtree(root)
        with open(root, "w") as blocker:
            blocker.write("not a directory")
        # It was seen healthy, so it takes unhealthy_threshold (3) failed rounds to go down.
        for _ in range(self.service.health.unhealthy_threshold):
            status, document, _ = await self.request("POST", "/health/probe")
        self.assertEqual(document["status"], "degraded")
        self.assertFalse(document["backends"]["r2"]["healthy"])
        self.assertIn("r2", document["reason"])
        _, bucket, _ = await self.request("GET", "/buckets/r2")
        self.assertFalse(bucket["healthy"])
        self.assertTrue(bucket["last_error"])

    # -- configuration ------------------------------------------------------------------------

    async def test_get_config_masks_secrets(self) -> None:
        status, document, _ = await self.request("GET", "/config")
        self.assertEqual(status, 200)
        text = json.dumps(document)
        self.assertNotIn("very-secret-key", text)
        self.assertNotIn(TOKEN, text)
        r1 = next(b for b in document["buckets"] if b["name"] == "r1")
        self.assertEqual(r1["secret_access_key"], "***")
        self.assertEqual(document["api"]["token"], "***")

    async def test_partial_update_applied_live(self) -> None:
        update = {
            "balancer": {"strategy": "weighted"},
            "buckets": [{"name": "r2", "enabled": False, "weight": 7}],
        }
        status, document, _ = await self.request("POST", "/config", update)
        self.assertEqual(status, 200, document)
        self.assertIn("strategy round-robin -> weighted", document["changes"])
        self.assertIn("backend r2: enabled True -> False", document["changes"])
        self.assertEqual(self.service.pool.strategy.name, "weighted")
        _, buckets, _ = await self.request("GET", "/buckets")
        r2 = next(b for b in buckets["buckets"] if b["name"] == "r2")
        self.assertEqual((r2["enabled"], r2["weight"]), (False, 7))
        self.assertEqual(self.service.pool.choose("photos", "k", 1), ["r1"])
        # The masked secret came back as "***" in GET and was kept, not replaced by "***".
        self.assertEqual(self.service.config.buckets[0].secret_access_key, "very-secret-key")
        _, config, _ = await self.request("GET", "/config")
        self.assertEqual(config["balancer"]["strategy"], "weighted")

    async def test_update_of_restart_only_settings_is_reported_and_not_applied(self) -> None:
        status, document, _ = await self.request("POST", "/config", {"server": {"port": 9999}})
        self.assertEqual(status, 200)
        self.assertEqual(document["changes"], ["server changed: needs a restart"])
        self.assertEqual(self.service.config.server.port, 8080)
        self.assertEqual(document["config"]["server"]["port"], 8080)

    async def test_invalid_update_refused_with_problems_and_nothing_changed(self) -> None:
        before = self.service.config
        update = {
            "balancer": {"strategy": "fastest"},
            "buckets": [{"name": "r1", "weight": -3, "enabled": False}],
        }
        status, document, _ = await self.request("POST", "/config", update)
        self.assertEqual(status, 400)
        problems = document["errors"]
        self.assertTrue(any("strategy" in p and "fastest" in p for p in problems), problems)
        self.assertTrue(any("weight" in p for p in problems), problems)
        self.assertIs(self.service.config, before)
        self.assertEqual(self.service.pool.strategy.name, "round-robin")
        self.assertTrue(self.service.pool.config("r1").enabled)
        status, document, _ = await self.request("POST", "/config", body=["not", "a", "mapping"])
        self.assertEqual(status, 400)
        status, document, _ = await self.request(
            "POST", "/config", {"buckets": [{"name": "ghost", "remove": True}]}
        )
        self.assertEqual(status, 400)
        self.assertTrue(document["errors"])

    async def test_every_error_is_json_with_its_status(self) -> None:
        """A token that is not UTF-8 got Twisted's HTML 500 page (issue 13, 3)."""
        for token in (b"Bearer caf\xe9", b"\xff\xfe", b"Bearer " + TOKEN.encode() + b"\xe9"):
            status, document, response = await self.request(
                "GET", "/buckets", headers={b"Authorization": [token]}
            )
            self.assertEqual((status, document), (401, {"error": "invalid token", "status": 401}))
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
        status, document, _ = await self.request("GET", "/buckets", headers={})
        self.assertEqual((status, document["status"]), (401, 401))
        status, document, _ = await self.request("GET", "/nothing")
        self.assertEqual((status, document["status"]), (404, 404))
        status, document, _ = await self.request("DELETE", "/config")
        self.assertEqual((status, document["status"]), (405, 405))
        status, document, _ = await self.request("POST", "/config", {"server": {"port": "x"}})
        self.assertEqual((status, document["status"]), (400, 400))
        self.assertTrue(document["errors"])

    async def test_unexpected_failures_are_json_500_too(self) -> None:
        """A handler that fails, or an answer JSON cannot hold, still gets a JSON answer."""
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from s3balance.admin.api import AdminResource

        admin = AdminResource(self.service, self.service.changes)

        async def broken(request: Any) -> Any:
            raise RuntimeError("the store went away")

        async def unserialisable(request: Any) -> Any:
            return {"when": {1, 2}}

        admin._routes += [(b"GET", ("broken",), broken), (b"GET", ("odd",), unserialisable)]
        root = Resource()
        root.putChild(b"api", admin)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/api"
        for path in ("/broken", "/odd"):
            response = await treq.get(base + path, headers=BEARER, pool=self.http)
            document = json.loads(await response.content())
            self.assertEqual(response.code, 500)
            self.assertEqual(document["status"], 500)
            self.assertTrue(document["error"].startswith("internal error"))
        self.flushLoggedErrors(RuntimeError, TypeError)

    async def test_a_failure_after_the_answer_began_breaks_the_connection(self) -> None:
        """The admin API left such a request unfinished: the client waited for the rest of
        a response that would never come.  It shares the front's lifecycle now, which aborts
        the connection, the only honest signal once the status line went out."""
        from twisted.web.client import ResponseFailed, ResponseNeverReceived
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from s3balance.admin.api import AdminResource

        admin = AdminResource(self.service, self.service.changes)

        async def half(request: Any) -> Any:
            request.write(b'{"partial": ')
            raise RuntimeError("the store went away mid-answer")

        admin._routes.append((b"GET", ("half",), half))
        root = Resource()
        root.putChild(b"api", admin)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/api/half"
        whole = treq.get(url, headers=BEARER, pool=self.http).addCallback(treq.content)
        # Before: no answer within the timeout (TimeoutError); now a broken connection.
        with self.assertRaises((ResponseFailed, ResponseNeverReceived)):
            await whole.addTimeout(5, reactor)
        self.flushLoggedErrors(RuntimeError)

    async def test_a_number_where_text_belongs_is_refused(self) -> None:
        """``POST /api/config`` took an integer as a secret (issue 13, 3): JSON has types."""
        before = self.service.config
        for update, key in (
            ({"s3api": {"secret_key": 12345}}, "s3api.secret_key"),
            ({"api": {"token": 42}}, "api.token"),
            ({"metrics": {"token": 1.5}}, "metrics.token"),
            ({"buckets": [{"name": "r1", "secret_access_key": 7}]}, "secret_access_key"),
            ({"s3api": {"region": 1}}, "s3api.region"),
            ({"data_dir": 3}, "data_dir"),
        ):
            status, document, _ = await self.request("POST", "/config", update)
            self.assertEqual(status, 400, update)
            problems = document["errors"]
            self.assertTrue(any(key in p and "is not text" in p for p in problems), problems)
            if "secret" in key or "token" in key:
                self.assertFalse(any("12345" in p or "42" in p for p in problems), problems)
            self.assertIs(self.service.config, before)
        # The same value as a string is taken (this one takes effect at the next start).
        status, document, _ = await self.request("POST", "/config", {"api": {"token": "42"}})
        self.assertEqual(status, 200, document)
        self.assertEqual(document["changes"], ["api changed: needs a restart"])

    async def test_strategy_endpoint(self) -> None:
        status, document, _ = await self.request("POST", "/strategy", {"strategy": "least-space"})
        self.assertEqual((status, document["strategy"]), (200, "least-space"))
        self.assertEqual(self.service.pool.strategy.name, "least-space")
        status, document, _ = await self.request("POST", "/strategy", {"strategy": "random"})
        self.assertEqual(status, 400)
        self.assertIn("random", document["errors"][0])
        self.assertEqual(self.service.pool.strategy.name, "least-space")
        _, document, _ = await self.request("GET", "/strategy")
        self.assertEqual(document["strategy"], "least-space")

    # -- statistics ---------------------------------------------------------------------------

    async def test_stats_from_the_store(self) -> None:
        store = self.service.store
        await store.count_operations("r1", "2024-11", class_a=3, class_b=4, bytes_in=100)
        await store.count_operations("r2", "2024-11", class_a=1)
        await store.count_operations("r1", "2025-01", class_b=9, bytes_out=50)
        await store.count_operations("gone", "2025-01", class_a=2)
        # Counted in memory only: the endpoint must flush before reading.
        self.service.pool.record_operation("r2", "PutObject", bytes_in=42)

        status, document, _ = await self.request("GET", "/stats/monthly")
        self.assertEqual(status, 200)
        self.assertEqual(document["month"], month_of(time.time()))
        self.assertEqual(document["backends"]["r2"]["class_a"], 1)
        self.assertEqual(document["backends"]["r2"]["bytes_in"], 42)
        self.assertEqual(document["backends"]["r1"]["class_a"], 0)

        status, document, _ = await self.request("GET", "/stats/monthly/2024/11")
        self.assertEqual(status, 200)
        self.assertEqual(document["backends"]["r1"], {
            "class_a": 3, "class_b": 4, "bytes_in": 100, "bytes_out": 0,
        })  # fmt: skip
        self.assertEqual(document["total"]["class_a"], 4)

        status, document, _ = await self.request(
            "GET", "/stats/monthly/range?start=2024-11&end=2025-01"
        )
        self.assertEqual(status, 200)
        self.assertEqual(
            [m["month"] for m in document["months"]], ["2024-11", "2024-12", "2025-01"]
        )
        self.assertEqual(document["months"][1]["backends"], {})
        self.assertEqual(document["months"][2]["backends"]["gone"]["class_a"], 2)

        status, document, _ = await self.request("GET", "/stats/bucket/r1/history")
        self.assertEqual(status, 200)
        months = [(m["month"], m["class_a"], m["class_b"]) for m in document["months"]]
        # This month has the health probes' HeadBuckets (class B) besides.
        this_month = month_of(time.time())
        self.assertEqual(
            [month for month in months if month[0] != this_month],
            [("2024-11", 3, 4), ("2025-01", 0, 9)],
        )
        status, document, _ = await self.request(
            "GET", "/stats/bucket/r1/history?start=2025-01&end=2025-01"
        )
        self.assertEqual([m["month"] for m in document["months"]], ["2025-01"])

    async def test_stats_refuse_bad_months(self) -> None:
        for path in (
            "/stats/monthly/2024/13",
            "/stats/monthly/range?start=2025-02&end=2025-01",
            "/stats/monthly/range?start=2025-01",
            "/stats/monthly/range?start=2000-01&end=2025-01",
            "/stats/bucket/r1/history?start=yesterday",
        ):
            status, document, _ = await self.request("GET", path)
            self.assertEqual(status, 400, path)
            self.assertIn("error", document)
        status, _, _ = await self.request("GET", "/stats/bucket/never-existed/history")
        self.assertEqual(status, 404)


def test_month_helper_is_utc() -> None:
    """The stats endpoints key months by UTC, like the pool's counters."""
    assert month_of(calendar.timegm((2025, 1, 31, 23, 30, 0))) == "2025-01"
