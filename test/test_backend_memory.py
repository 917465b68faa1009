"""The in-memory backend: the shared contract, plus what only memory can promise (a GET keeps the
bytes it started with; nothing is shared between two instances)."""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyClass

from s3balance.backends.factory import MEMORY_PATH, make_backend
from s3balance.backends.interface import BackendCannotEncrypt, IBackend
from s3balance.backends.local import LocalDirectoryBackend
from s3balance.backends.memory import MemoryBackend
from s3balance.backends.s3 import S3Backend
from s3balance.config import BucketConfig
from s3balance.configfile import ConfigError, parse_config
from s3balance.net.httpclient import make_http_pool
from test.backend_contract import BackendContractMixin
from test.support.bodies import BytesBody, collect


class MemoryBackendTests(BackendContractMixin, TestCase):
    """The contract, against a fresh backend per test."""

    def make_backend(self) -> IBackend:
        backend = MemoryBackend("memory-test", reactor)
        self.addCleanup(backend.close)
        return backend


class MemoryOnlyTests(TestCase):
    timeout = 30

    async def test_get_streams_the_version_it_started_with(self) -> None:
        backend = MemoryBackend("memory-only", reactor)
        await backend.put_object("k", BytesBody(b"first"), 5, {}, {})
        stream = await backend.get_object("k")
        await backend.put_object("k", BytesBody(b"second"), 6, {}, {})
        await backend.delete_object("k")
        self.assertEqual(await collect(stream), b"first")

    async def test_two_backends_share_nothing(self) -> None:
        one, two = MemoryBackend("one", reactor), MemoryBackend("two", reactor)
        await one.put_object("k", BytesBody(b"x"), 1, {}, {})
        self.assertEqual(await two.list_objects(""), [])

    async def test_encrypted_writes_are_refused_before_the_body(self) -> None:
        backend = MemoryBackend("memory-only", reactor)
        self.assertFalse(backend.can_encrypt)
        body = BytesBody(b"secret")
        await self.assertFailure(
            backend.put_object("k", body, 6, {"x-amz-server-side-encryption": "AES256"}, {}),
            BackendCannotEncrypt,
        )
        self.assertEqual(await backend.list_objects(""), [])

    def test_the_configuration_names_it_by_path(self) -> None:
        pool = make_http_pool(reactor)
        backend = make_backend(
            BucketConfig(name="dry-run", path=MEMORY_PATH), reactor, "/nonexistent", pool
        )
        self.assertIsInstance(backend, MemoryBackend)
        self.assertEqual(backend.name, "dry-run")


def test_the_configuration_may_name_it_with_one_worker_only() -> None:
    data = {
        "server": {"workers": 1},
        "buckets": [{"name": "dry-run", "path": MEMORY_PATH}, {"name": "visible", "virtual": True}],
    }
    assert parse_config(data, {}).buckets[0].path == MEMORY_PATH
    data["server"] = {"workers": 2}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, {})
    assert raised.value.problems == [
        "buckets[0].path: ':memory:' keeps objects in one process: needs server.workers: 1"
    ]


@pytest.mark.parametrize("adapter", [MemoryBackend, LocalDirectoryBackend, S3Backend])
def test_every_adapter_provides_the_interface(adapter: type) -> None:
    """Every :class:`IBackend` method is there, coroutines behind ``returns_deferred`` too."""
    assert verifyClass(IBackend, adapter)
