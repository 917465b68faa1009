"""Live reconfiguration: ``Reconfigurator.apply`` on a running core, SIGHUP, and a reload
mid-upload."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
from typing import Any

import pytest
import treq
import yaml
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from s3balance import metrics
from s3balance.components import Components
from s3balance.config import BucketConfig, Config
from s3balance.configfile import ConfigError, config_to_dict
from test.support.bodies import GeneratedBody, generated_md5
from test.test_admin_service import service_config, start_service

pytestmark = pytest.mark.timeout(90)


def with_buckets(config: Config, buckets: list[BucketConfig]) -> Config:
    return dataclasses.replace(config, buckets=buckets)


def edited(config: Config, name: str, **changes: Any) -> Config:
    return with_buckets(
        config,
        [dataclasses.replace(b, **changes) if b.name == name else b for b in config.buckets],
    )


async def wait_for(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


class ApplyConfigTests(TestCase):
    timeout = 30

    async def _start(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        self.service: Components = await start_service(self, service_config(self.workdir))

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    def apply(self, config: Config, grace: float = 3600.0) -> defer.Deferred[list[str]]:
        return self.service.reconfigurator.apply(config, close_grace=grace)

    async def test_nothing_to_do(self) -> None:
        self.assertEqual(await self.apply(self.service.config), [])

    async def test_add_and_remove_backends(self) -> None:
        service = self.service
        old_r2 = service.backends["r2"]
        metrics.BUCKET_HEALTHY.labels("r2").set(1)
        config = with_buckets(
            service.config,
            [b for b in service.config.buckets if b.name != "r2"]
            + [BucketConfig(name="r3", path=os.path.join(self.workdir, "r3"), weight=3)],
        )
        changes = await self.apply(config, grace=3600.0)
        self.assertEqual(sorted(changes), ["backend r2 removed", "backend r3 added"])
        self.assertEqual(service.pool.names(), ["r1", "r3"])
        self.assertEqual(sorted(service.backends), ["r1", "r3"])
        self.assertEqual(service.pool.config("r3").weight, 3)
        # The monitors follow the daemon's backend set.
        await service.health.probe_now()
        self.assertEqual(sorted(service.health.states()), ["r1", "r3"])
        self.assertIsNotNone(service.health.state("r3").last_probe)
        # A removed backend stops being reported, and waits out its grace period open.
        samples = metrics.REGISTRY.get_sample_value("s3_balance_bucket_healthy", {"bucket": "r2"})
        self.assertIsNone(samples)
        self.assertEqual(service.reconfigurator.retired_backends(), [old_r2])
        await service.reconfigurator.close_retired()
        self.assertEqual(service.reconfigurator.retired_backends(), [])
        self.assertEqual(sorted(service.pool.choose("photos", "k", 1)), ["r1", "r3"])

    async def test_retired_backend_closed_after_grace(self) -> None:
        service = self.service
        old = service.backends["r1"]
        closed: list[object] = []
        real_close = old.close

        def close() -> Any:
            closed.append(old)
            return real_close()

        old.close = close  # type: ignore[method-assign]
        changes = await self.apply(edited(service.config, "r1", region="eu-west-3"), grace=0.2)
        self.assertEqual(changes, ["backend r1 reconnected (region changed)"])
        self.assertIsNot(service.pool.get("r1"), old)
        self.assertEqual(closed, [])
        await wait_for(lambda: closed)
        self.assertEqual(service.reconfigurator.retired_backends(), [])

    async def test_pool_settings_and_strategy_change_live(self) -> None:
        service = self.service
        same_backend = service.backends["r1"]
        config = edited(service.config, "r1", weight=5, enabled=False, max_size=1000)
        config.balancer = dataclasses.replace(
            config.balancer, strategy="least-space", retry_attempts=7, probe_timeout=1.5
        )
        changes = await self.apply(config)
        self.assertIn("strategy round-robin -> least-space", changes)
        self.assertIn("backend r1: weight 1 -> 5", changes)
        self.assertIn("backend r1: max_size unlimited -> 1000", changes)
        self.assertIs(service.pool.get("r1"), same_backend)
        self.assertEqual(service.pool.strategy.name, "least-space")
        self.assertEqual(service.gateway.settings.retry_attempts, 7)
        self.assertEqual(service.health.probe_timeout, 1.5)
        self.assertEqual(service.pool.choose("photos", "k", 1), ["r2"])
        self.assertEqual(service.config.balancer.strategy, "least-space")

    async def test_restart_only_settings_reported_and_kept(self) -> None:
        service = self.service
        config = dataclasses.replace(service.config)
        config.server = dataclasses.replace(config.server, port=9999)
        config.database = dataclasses.replace(config.database, dsn="other.db")
        config.balancer = dataclasses.replace(config.balancer, health_check_period=1.0)
        config.s3api = dataclasses.replace(config.s3api, region="eu-west-1")
        changes = await self.apply(config)
        self.assertEqual(
            sorted(changes),
            [
                "balancer.health_check_period changed: needs a restart",
                "database changed: needs a restart",
                "s3api.region changed: needs a restart",
                "server changed: needs a restart",
            ],
        )
        self.assertEqual(service.config.server.port, 8080)
        self.assertEqual(service.config.database.dsn, "s3balance.db")
        self.assertEqual(service.config.s3api.region, "us-east-1")

    async def test_virtual_buckets_from_config_created(self) -> None:
        config = with_buckets(
            self.service.config,
            [b for b in self.service.config.buckets if b.name != "photos"]
            + [BucketConfig(name="videos", virtual=True)],
        )
        changes = await self.apply(config)
        self.assertIn("virtual bucket videos created", changes)
        self.assertTrue(any("photos no longer in the configuration" in c for c in changes))
        names = [b.name for b in await self.service.store.list_buckets()]
        self.assertEqual(sorted(names), ["photos", "videos"])

    async def test_replicas_and_zones_change_live(self) -> None:
        config = edited(self.service.config, "photos", replicas=2)
        config = edited(config, "r1", zone="rack-9")
        changes = await self.apply(config)
        self.assertIn(
            "virtual bucket photos: replicas 1 -> 2 (new writes at once; repair brings existing "
            "objects to it)",
            changes,
        )
        self.assertIn("backend r1: zone path:r1 -> rack-9", changes)
        self.assertEqual(self.service.gateway.settings.replicas, {"photos": 2})
        self.assertEqual(self.service.pool.zone_of("r1"), "rack-9")

    async def test_a_backend_that_cannot_be_built_changes_nothing(self) -> None:
        service = self.service
        before_config, before_backends = service.config, dict(service.backends)
        broken = BucketConfig(
            name="r9",
            endpoint="https://127.0.0.1:9",
            access_key_id="k",
            secret_access_key="s",
            ca_bundle=os.path.join(self.workdir, "missing-ca.pem"),
        )
        config = edited(service.config, "r1", weight=9)
        config = with_buckets(config, config.buckets + [broken])
        config.balancer = dataclasses.replace(config.balancer, strategy="weighted")
        failure = await self.assertFailure(self.apply(config), ConfigError)
        self.assertTrue(any("r9" in p for p in failure.problems), failure.problems)
        self.assertIs(service.config, before_config)
        self.assertEqual(service.backends, before_backends)
        self.assertEqual(service.pool.names(), ["r1", "r2"])
        self.assertEqual(service.pool.config("r1").weight, 1)
        self.assertEqual(service.pool.strategy.name, "round-robin")

    async def test_unknown_strategy_changes_nothing(self) -> None:
        config = edited(self.service.config, "r1", weight=4)
        config.balancer = dataclasses.replace(config.balancer, strategy="fastest")
        await self.assertFailure(self.apply(config), ConfigError)
        self.assertEqual(self.service.pool.config("r1").weight, 1)


class SighupTests(TestCase):
    timeout = 30

    async def _start(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.workdir, "s3balance.yaml")
        config = service_config(self.workdir)
        self.service = await start_service(self, config, config_path=self.path)
        self.write(config)

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    def write(self, config: Config | dict[str, Any]) -> None:
        data = config if isinstance(config, dict) else config_to_dict(config, mask_secrets=False)
        with open(self.path, "w") as f:
            yaml.safe_dump(data, f)

    async def test_sighup_reloads_the_file(self) -> None:
        uninstall = self.service.reconfigurator.install_sighup(reactor)  # type: ignore[arg-type]
        self.addCleanup(uninstall)
        self.write(edited(self.service.config, "r2", enabled=False))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: not self.service.pool.config("r2").enabled)
        self.assertFalse(self.service.config.buckets[1].enabled)
        uninstall()
        self.assertIsNot(signal.getsignal(signal.SIGHUP), None)

    async def test_invalid_file_changes_nothing(self) -> None:
        data = config_to_dict(self.service.config, mask_secrets=False)
        data["balancer"]["strategy"] = "fastest"
        data["buckets"][0]["enabled"] = False
        self.write(data)
        before = self.service.config
        self.assertEqual(await self.service.reconfigurator.reload_from_file(), [])
        self.assertIs(self.service.config, before)
        self.assertTrue(self.service.pool.config("r1").enabled)
        os.remove(self.path)
        self.assertEqual(await self.service.reconfigurator.reload_from_file(), [])
        self.assertIs(self.service.config, before)


def listen_front_end(testcase: TestCase, service: Components) -> str:
    """The daemon's S3 front end (the admin API at ``/api``, as it mounts it); base URL."""
    port = reactor.listenTCP(0, service.site, interface="127.0.0.1")  # type: ignore[attr-defined]
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class ReloadDuringUploadTests(TestCase):
    """A reload that replaces the backend an upload is streaming to must not break it."""

    timeout = 60
    SIZE = 48 * 1024 * 1024

    async def _start(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        config = service_config(self.workdir, names=("r1",))
        self.service = await start_service(self, config)
        self.base = listen_front_end(self, self.service)
        self.http = HTTPConnectionPool(reactor, persistent=False)

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    async def test_upload_completes_across_a_reload(self) -> None:
        service = self.service
        streaming_to = service.backends["r1"]
        body = GeneratedBody(self.SIZE, seed=3)
        upload = treq.put(f"{self.base}/photos/big.bin", data=body, pool=self.http)
        await wait_for(lambda: body.produced >= self.SIZE // 4, seconds=30)
        self.assertLess(body.produced, self.SIZE)

        # Rotate r1 (a new backend object under the same name), add r2, switch strategy.
        config = edited(service.config, "r1", region="eu-central-1")
        config = with_buckets(
            config,
            config.buckets + [BucketConfig(name="r2", path=os.path.join(self.workdir, "r2"))],
        )
        config.balancer = dataclasses.replace(config.balancer, strategy="least-space")
        changes = await service.reconfigurator.apply(config, close_grace=3600.0)
        self.assertIn("backend r1 reconnected (region changed)", changes)
        self.assertIsNot(service.pool.get("r1"), streaming_to)
        self.assertLess(body.produced, self.SIZE, "the reload must happen mid-upload")

        response = await upload
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(body.produced, self.SIZE)

        # Read back through the new backend object: every byte arrived.
        got = await treq.get(f"{self.base}/photos/big.bin", pool=self.http)
        digest = hashlib.md5()
        await treq.collect(got, digest.update)
        self.assertEqual(got.code, 200)
        self.assertEqual(digest.hexdigest(), generated_md5(self.SIZE, seed=3))
        record = await service.store.get_object("photos", "big.bin")
        self.assertEqual([loc.backend for loc in record.locations], ["r1"])


class StrategySwitchTests(TestCase):
    """``POST /api/strategy`` through the daemon's own front end changes where objects go."""

    timeout = 30

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        config = service_config(self.workdir, names=("r1", "r2"))
        config.buckets[0].max_size = 64 * 1024  # r1 nearly full from the start
        config.buckets[1].max_size = 64 * 1024 * 1024
        self.service = await start_service(self, config)
        self.base = listen_front_end(self, self.service)
        self.http = HTTPConnectionPool(reactor, persistent=False)

    async def put_and_locate(self, key: str) -> str:
        response = await treq.put(f"{self.base}/photos/{key}", data=b"x" * 1024, pool=self.http)
        await response.content()
        self.assertEqual(response.code, 200)
        record = await self.service.store.get_object("photos", key)
        return str(record.locations[0].backend)

    async def test_switch_to_least_space_moves_new_objects_off_the_full_backend(self) -> None:
        placed = [await self.put_and_locate(f"rr-{i}") for i in range(4)]
        self.assertEqual(sorted(set(placed)), ["r1", "r2"])  # round-robin uses both
        response = await treq.post(
            f"{self.base}/api/strategy",
            json={"strategy": "least-space"},
            headers={"Authorization": "Bearer admin-token-1234"},
            pool=self.http,
        )
        self.assertEqual(response.code, 200, await response.text())
        placed = [await self.put_and_locate(f"ls-{i}") for i in range(4)]
        self.assertEqual(placed, ["r2"] * 4)
