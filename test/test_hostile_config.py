"""The configuration keys that bound what clients can hold (issue 13, 2): defaults, values, and
refusals naming the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from s3balance.configfile import config_to_dict, parse_config
from test.test_configfile import minimal, only_problem

pytestmark = pytest.mark.timeout(30)


def test_defaults() -> None:
    server = parse_config(minimal(), {}).server
    assert (server.header_timeout, server.body_timeout) == (10.0, 30.0)
    assert (server.max_connections, server.body_memory) == (1000, 32 << 20)


def test_values_are_read_and_written_back() -> None:
    settings = {"header_timeout": "2s", "body_timeout": "1m", "max_connections": 50,
                "body_memory": "8MB"}  # fmt: skip
    config = parse_config(minimal(server=settings), {})
    assert config.server.header_timeout == 2.0
    assert config.server.body_timeout == 60.0
    assert config.server.max_connections == 50
    assert config.server.body_memory == 8 << 20
    again = parse_config(config_to_dict(config, mask_secrets=False), {})
    assert again.server == config.server


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("header_timeout", 0, "server.header_timeout: 0 must be more than 0"),
        ("header_timeout", "soon", "server.header_timeout: 'soon' is not a duration"),
        ("body_timeout", "0s", "server.body_timeout: '0s' must be more than 0"),
        ("max_connections", 0, "server.max_connections: 0 is out of range (allowed: 1..1000000)"),
        ("max_connections", "many", "server.max_connections: 'many' is not a whole number"),
        ("body_memory", "1MB", "server.body_memory: '1MB' is too small (allowed: 4MiB or more"),
        ("body_memory", "lots", "server.body_memory: 'lots' is not a size"),
    ],
)
def test_bad_values_are_refused(key: str, value: Any, expected: str) -> None:
    assert only_problem(minimal(server={key: value})).startswith(expected)
