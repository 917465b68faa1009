"""The metrics endpoint as a scraper sees it: over a real loopback socket, names dashboards use,
and the bearer token."""

from __future__ import annotations

import treq
from prometheus_client import CollectorRegistry, Gauge
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from s3balance import metrics
from s3balance.metrics import REGISTRY, MetricsResource, forget_backend

EXPECTED_NAMES = [
    "s3_balance_bucket_healthy",
    "s3_balance_bucket_usage_bytes",
    "s3_balance_bucket_capacity_bytes",
    "s3_balance_s3_operations_total",
    "s3_balance_s3_operation_duration_seconds_bucket",
    "s3_balance_balancer_decisions_total",
    "s3_balance_bucket_probe_latency_seconds",
    "s3_balance_bucket_objects",
    "s3_balance_backend_bytes_in_total",
    "s3_balance_backend_bytes_out_total",
    "s3_balance_inflight_transfers",
    "s3_balance_db_query_duration_seconds_bucket",
    "s3_balance_bucket_operations_month",
    "s3_balance_bucket_operation_limit",
    "process_cpu_seconds_total",
    "python_info",
]


class MetricsEndpointTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.http_pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.http_pool.closeCachedConnections)

    def get(self, url: str, **kwargs):
        return treq.get(url, pool=self.http_pool, **kwargs)

    def serve(self, resource: MetricsResource) -> str:
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/metrics"

    async def test_scrape_lists_the_dashboard_names(self) -> None:
        metrics.BUCKET_HEALTHY.labels("scrape-a").set(1)
        metrics.BUCKET_USAGE_BYTES.labels("scrape-a").set(123)
        metrics.BUCKET_CAPACITY_BYTES.labels("scrape-a").set(1000)
        metrics.S3_OPERATIONS.labels("PutObject", "photos", "200").inc()
        metrics.S3_OPERATION_DURATION.labels("PutObject").observe(0.002)
        metrics.BALANCER_DECISIONS.labels("least-space", "scrape-a").inc()
        metrics.BUCKET_PROBE_LATENCY.labels("scrape-a").set(0.01)
        metrics.BUCKET_OBJECTS.labels("scrape-a").set(2)
        metrics.BACKEND_BYTES_IN.labels("scrape-a").inc(10)
        metrics.BACKEND_BYTES_OUT.labels("scrape-a").inc(10)
        metrics.INFLIGHT_TRANSFERS.labels("in").set(0)
        metrics.DB_QUERY_DURATION.labels("get_object").observe(0.0004)
        metrics.BUCKET_OPERATIONS_MONTH.labels("scrape-a", "A").set(5)
        metrics.BUCKET_OPERATION_LIMIT.labels("scrape-a", "A").set(100)

        response = await self.get(self.serve(MetricsResource(REGISTRY)))
        body = (await response.text()).splitlines()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        present = {line.split("{")[0].split(" ")[0] for line in body if not line.startswith("#")}
        for name in EXPECTED_NAMES:
            self.assertIn(name, present)
        self.assertIn('s3_balance_bucket_usage_bytes{bucket="scrape-a"} 123.0', body)
        # The duration histogram reaches from 1 ms to 10 minutes (the registry is the daemon's
        # global one: other tests may have counted PutObjects too, so compare the buckets).
        counts = {
            line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in body
            if line.startswith("s3_balance_s3_operation_duration_seconds_bucket{")
            and 'operation="PutObject"' in line
        }
        self.assertIn("0.001", counts)
        self.assertIn("600.0", counts)
        # The 2 ms observation above is counted at 600 s but not at 1 ms.
        self.assertGreater(counts["600.0"], counts["0.001"])

    async def test_token_is_required_when_set(self) -> None:
        registry = CollectorRegistry()
        Gauge("guarded_value", "a value behind the token", registry=registry).set(7)
        url = self.serve(MetricsResource(registry, token="s3cr3t"))

        missing = await self.get(url)
        self.assertEqual(missing.code, 401)
        self.assertNotIn(b"guarded_value", await missing.content())
        wrong = await self.get(url, headers={"Authorization": "Bearer nope"})
        self.assertEqual(wrong.code, 401)
        basic = await self.get(url, headers={"Authorization": "Basic czNjcjN0"})
        self.assertEqual(basic.code, 401)

        right = await self.get(url, headers={"Authorization": "Bearer s3cr3t"})
        self.assertEqual(right.code, 200)
        self.assertIn(b"guarded_value 7.0", await right.content())

    async def test_no_token_means_open(self) -> None:
        registry = CollectorRegistry()
        Gauge("open_value", "a value anyone may read", registry=registry).set(1)
        response = await self.get(self.serve(MetricsResource(registry)))
        self.assertEqual(response.code, 200)
        self.assertIn(b"open_value 1.0", await response.content())


def test_forget_backend_removes_only_that_backends_series() -> None:
    metrics.BUCKET_HEALTHY.labels("forget-me").set(1)
    metrics.BUCKET_HEALTHY.labels("keep-me").set(1)
    metrics.BUCKET_OPERATIONS_MONTH.labels("forget-me", "A").set(3)
    metrics.BUCKET_OPERATIONS_MONTH.labels("forget-me", "B").set(4)
    metrics.BALANCER_DECISIONS.labels("weighted", "forget-me").inc()
    forget_backend("forget-me")
    sample = REGISTRY.get_sample_value
    assert sample("s3_balance_bucket_healthy", {"bucket": "forget-me"}) is None
    assert (
        sample("s3_balance_bucket_operations_month", {"bucket": "forget-me", "class": "B"}) is None
    )
    assert (
        sample(
            "s3_balance_balancer_decisions_total", {"strategy": "weighted", "bucket": "forget-me"}
        )
        is None
    )
    assert sample("s3_balance_bucket_healthy", {"bucket": "keep-me"}) == 1.0
