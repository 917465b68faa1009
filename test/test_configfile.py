"""Loading, validating, showing and updating the YAML configuration."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3balance.config import BucketConfig, Config, Credential
from s3balance.configfile import (
    ConfigError,
    config_to_dict,
    default_config,
    load_config,
    merge_config,
    parse_config,
)
from s3balance.dsn import database_url

ETC = Path(__file__).resolve().parent.parent / "etc"
GiB = 1024**3

pytestmark = pytest.mark.timeout(30)


def minimal(**top: Any) -> dict[str, Any]:
    """The smallest valid file: one real bucket; keyword arguments replace top-level keys."""
    data: dict[str, Any] = {"buckets": [{"name": "store-1", "path": "/srv/store-1"}]}
    data.update(top)
    return data


def problems(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(data: Any, environ: dict[str, str] | None = None) -> str:
    found = problems(data, environ)
    assert len(found) == 1, found
    return found[0]


def with_bucket(**bucket: Any) -> dict[str, Any]:
    """A valid file plus one more bucket entry (buckets[1])."""
    data = minimal()
    data["buckets"].append(bucket)
    return data


# --- the Go project's file ---------------------------------------------------------------------


def test_go_file_loads_unchanged() -> None:
    config = load_config(str(ETC / "go-s3-balance.example.yaml"), environ={})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    assert config.server.read_timeout == 30.0
    assert config.server.idle_timeout == 60.0
    assert config.server.zero_copy is True
    assert config.database.type == "sqlite"
    assert config.database.dsn == "data/s3-balance.db"
    assert config.database.conn_max_lifetime == 300.0
    assert config.database.log_level == "warn"
    assert [b.name for b in config.real_buckets] == ["my-bucket-1", "my-bucket-2"]
    assert [b.name for b in config.virtual_buckets] == ["user-bucket-1"]
    first, second, virtual = config.buckets
    assert first.max_size == 100 * GiB
    assert first.endpoint == ""  # AWS
    assert first.weight == 10
    assert second.max_size == 50 * GiB
    assert second.endpoint == "http://localhost:9000"
    assert second.use_ssl is False
    assert second.path_style is True
    assert virtual.virtual is True and virtual.access_key_id == ""
    assert config.balancer.strategy == "least-space"
    assert config.balancer.update_stats_period == 60.0
    assert config.balancer.retry_delay == 1.0
    assert config.metrics.enabled is True and config.metrics.port == 0
    assert config.s3api.access_key == "AKIAIOSFODNN7EXAMPLE"
    assert config.s3api.auth_required is True and config.s3api.proxy_mode is True
    assert config.api.enabled is True
    assert config.api.token == "your-secure-api-token-change-this"


def test_example_file_loads_and_documents_every_key() -> None:
    path = ETC / "s3balance.example.yaml"
    config = load_config(str(path), environ={})
    assert config.s3api.credentials == [
        Credential("reader", "reader-secret-change-me", ["photos"], read_only=True)
    ]
    assert config.buckets[0].secret_access_key == "minioadmin"  # ${...:-default}
    raw = yaml.safe_load(path.read_text())
    full = config_to_dict(config, mask_secrets=False)
    for section, keys in full.items():
        assert section in raw, section
        if isinstance(keys, dict):
            missing = set(keys) - set(raw[section])
            assert not missing, f"{section}: {missing}"
    documented_bucket_keys = set().union(*(set(b) for b in raw["buckets"]))
    assert set(full["buckets"][0]) - documented_bucket_keys == set()
    assert set(full["s3api"]["credentials"][0]) == set(raw["s3api"]["credentials"][0])


def test_example_file_takes_secrets_from_the_environment() -> None:
    config = load_config(
        str(ETC / "s3balance.example.yaml"), environ={"S3BALANCE_SECRET_KEY": "from-env"}
    )
    assert config.s3api.secret_key == "from-env"


# --- rejections --------------------------------------------------------------------------------


def test_max_size_in_parsecs_is_refused_naming_the_bucket() -> None:
    data = minimal()
    data["buckets"] += [
        {"name": "store-2", "path": "/srv/2"},
        {"name": "store-3", "path": "/srv/3", "max_size": "12 parsecs"},
    ]
    assert only_problem(data) == (
        "buckets[2].max_size: '12 parsecs' is not a size "
        "(use a number with a unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(srever={}), "srever: unknown key (did you mean 'server'?)"),
        (minimal(server={"prot": 80}), "server.prot: unknown key (did you mean 'port'?)"),
        (minimal(zzz=1), "zzz: unknown key (known keys: server, database"),
        (
            with_bucket(name="b", path="/p", max_sise="1GB"),
            "buckets[1].max_sise: unknown key (did you mean 'max_size'?)",
        ),
        (
            with_bucket(name="b", path="/p", operation_limits={"type_c": 1}),
            "buckets[1].operation_limits.type_c: unknown key",
        ),
        (
            minimal(s3api={"credentials": [{"access_key": "a", "secret_key": "s", "bucket": []}]}),
            "s3api.credentials[0].bucket: unknown key (did you mean 'buckets'?)",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(data: Any, expected: str) -> None:
    assert only_problem(data).startswith(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(server={"port": "8080"}), "server.port: '8080' is not a whole number"),
        (minimal(server={"port": 8080.5}), "server.port: 8080.5 is not a whole number"),
        (minimal(server={"port": True}), "server.port: true is not a whole number"),
        (
            minimal(metrics={"enabled": "yes please"}),
            "metrics.enabled: 'yes please' is not a boolean (use true or false)",
        ),
        (minimal(metrics={"enabled": "true"}), "metrics.enabled: 'true' is not a boolean"),
        (minimal(metrics={"enabled": 1}), "metrics.enabled: 1 is not a boolean"),
        (minimal(server={"zero_copy": "off"}), "server.zero_copy: 'off' is not a boolean"),
        (minimal(server={"host": ["a"]}), "server.host: a list is not text"),
        (minimal(s3api={"region": True}), "s3api.region: true is not text (put it in quotes"),
        (minimal(server=[1, 2]), "server: a list is not a mapping (expected keys: host, port"),
        (minimal(buckets={"name": "x"}), "buckets: a mapping is not a list of buckets"),
        (with_bucket(name="b", path="/p", weight="10"), "buckets[1].weight: '10' is not a whole"),
        (
            minimal(balancer={"retry_delay": "soon"}),
            "balancer.retry_delay: 'soon' is not a duration",
        ),
        (minimal(server={"read_timeout": "-1s"}), "server.read_timeout: '-1s' is negative"),
        (
            minimal(balancer={"health_check_period": 0}),
            "balancer.health_check_period: 0 must be more than 0",
        ),
    ],
)
def test_wrong_types_are_refused(data: Any, expected: str) -> None:
    assert only_problem(data).startswith(expected)


def test_a_yaml_file_that_is_not_a_mapping_is_refused() -> None:
    assert only_problem(["buckets"]).startswith("the file: a list is not a mapping")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("server", "port", 0, "server.port: 0 is out of range (allowed: 1..65535)"),
        ("server", "port", 65536, "server.port: 65536 is out of range (allowed: 1..65535)"),
        ("metrics", "port", 70000, "metrics.port: 70000 is out of range (allowed: 0..65535"),
        ("metrics", "port", 8080, "metrics.port: 8080 is also server.port"),
        ("balancer", "retry_attempts", -1, "balancer.retry_attempts: -1 is out of range"),
        ("balancer", "unhealthy_threshold", 0, "balancer.unhealthy_threshold: 0 is out of range"),
        ("database", "max_open_conns", -3, "database.max_open_conns: -3 is out of range"),
        ("balancer", "strategy", "random", "balancer.strategy: 'random' is not one of round-robin"),
        (
            "balancer",
            "strategy",
            "least_space",
            "balancer.strategy: 'least_space' is not one of round-robin, least-space, weighted, "
            "consistent-hash; did you mean 'least-space'?",
        ),
        ("database", "type", "oracle", "database.type: 'oracle' is not one of sqlite, mysql"),
        ("database", "log_level", "debug", "database.log_level: 'debug' is not one of silent"),
        ("database", "dsn", "", "database.dsn: an empty dsn is not usable"),
        ("s3api", "presign_expiry", "200h", "s3api.presign_expiry: 200h is longer than S3 allows"),
        ("multipart", "expiry", "0s", "multipart.expiry: '0s' must be more than 0"),
        ("s3api", "region", "", "s3api.region: must not be empty"),
    ],
)
def test_out_of_range_values_are_refused(section: str, key: str, value: Any, expected: str) -> None:
    assert only_problem(minimal(**{section: {key: value}})).startswith(expected)


def test_metrics_port_zero_means_off_and_is_accepted() -> None:
    assert parse_config(minimal(metrics={"port": 0}), {}).metrics.port == 0
    assert parse_config(minimal(metrics={"port": 9100}), {}).metrics.port == 9100


def test_database_dsn_is_checked_for_its_type() -> None:
    message = only_problem(minimal(database={"type": "postgres", "dsn": "mysql://u:pw@h/db"}))
    assert message.startswith("database.dsn: 'mysql://u:***@h/db' is a 'mysql' URL")
    assert only_problem(minimal(database={"type": "mysql"})) == (
        "database.dsn: is required when database.type is 'mysql'"
    )


def test_duplicate_bucket_names_are_refused() -> None:
    data = with_bucket(name="store-1", endpoint="http://127.0.0.1:9000")
    assert only_problem(data) == "buckets[1].name: 'store-1' is already used by buckets[0]"


def test_a_bucket_without_a_name_is_refused() -> None:
    assert only_problem(with_bucket(path="/p")) == "buckets[1].name: every bucket needs a name"
    assert only_problem(with_bucket(name="", path="/p")).startswith("buckets[1].name: every")


@pytest.mark.parametrize(
    "name", ["ab", "Photos", "my_bucket", "-photos", "photos-", "192.168.1.1", "a..b", "x" * 64]
)
def test_invalid_virtual_bucket_names_are_refused(name: str) -> None:
    message = only_problem(with_bucket(name=name, virtual=True))
    assert message.startswith(f"buckets[1].name: {name!r} is not a valid S3 bucket name (3-63")


def test_real_buckets_may_have_names_s3_would_not_accept() -> None:
    """A real bucket's name is only a label; the service-side name is ``bucket``."""
    config = parse_config(with_bucket(name="Old_Store", path="/p"), {})
    assert config.buckets[1].name == "Old_Store"


def test_weight_zero_is_allowed_and_negative_weight_is_refused() -> None:
    assert parse_config(with_bucket(name="b", path="/p", weight=0), {}).buckets[1].weight == 0
    message = only_problem(with_bucket(name="b", path="/p", weight=-1))
    assert message == (
        "buckets[1].weight: -1 is out of range (allowed: 0 or more; 0: never chosen by weighted)"
    )


def test_negative_operation_limits_are_refused() -> None:
    data = with_bucket(name="b", path="/p", operation_limits={"type_a": -5, "type_b": -1})
    found = problems(data)
    assert found[0].startswith("buckets[1].operation_limits.type_a: -5 is out of range")
    assert found[1].startswith("buckets[1].operation_limits.type_b: -1 is out of range")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("endpoint", "http://127.0.0.1:9000"),
        ("path", "/srv/x"),
        ("access_key_id", "AKIA"),
        ("bucket", "real-name"),
        ("ca_bundle", "/etc/ca.pem"),
    ],
)
def test_virtual_buckets_cannot_carry_storage_settings(key: str, value: str) -> None:
    message = only_problem(with_bucket(name="photos", virtual=True, **{key: value}))
    assert message.startswith(f"buckets[1].{key}: {value!r} is not allowed on a virtual bucket")


def test_a_virtual_bucket_secret_is_refused_without_being_echoed() -> None:
    message = only_problem(with_bucket(name="photos", virtual=True, secret_access_key="hunter2"))
    assert message.startswith("buckets[1].secret_access_key: a secret is not allowed")
    assert "hunter2" not in message


def test_a_real_bucket_cannot_be_both_endpoint_and_directory() -> None:
    message = only_problem(with_bucket(name="b", endpoint="http://h:9000", path="/srv/b"))
    assert message.startswith("buckets[1].path: '/srv/b' and endpoint 'http://h:9000' are both")


def test_at_least_one_real_bucket_is_required() -> None:
    for data in ({}, None, {"buckets": [{"name": "photos", "virtual": True}]}):
        assert only_problem(data).startswith("buckets: no real bucket is configured")


@pytest.mark.parametrize(
    ("endpoint", "use_ssl", "stored"),
    [
        ("http://127.0.0.1:9000", True, "http://127.0.0.1:9000"),
        ("https://s3.example.com/", False, "https://s3.example.com"),
        ("HTTP://minio:9000", True, "http://minio:9000"),
        ("minio.local:9000", False, "http://minio.local:9000"),
        ("minio.local:9000", True, "https://minio.local:9000"),
        ("s3.example.com", True, "https://s3.example.com"),
        ("[::1]:9000", False, "http://[::1]:9000"),
    ],
)
def test_endpoints_are_normalised(endpoint: str, use_ssl: bool, stored: str) -> None:
    config = parse_config(with_bucket(name="b", endpoint=endpoint, use_ssl=use_ssl), {})
    assert config.buckets[1].endpoint == stored


@pytest.mark.parametrize(
    "endpoint", ["ftp://h:21", "http://", "http://h:99999", "http://h:port", "http://u:p@h", "h?x"]
)
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    message = only_problem(with_bucket(name="b", endpoint=endpoint))
    assert message.startswith(f"buckets[1].endpoint: {endpoint!r}")


def test_auth_required_needs_a_key_pair() -> None:
    message = only_problem(minimal(s3api={"auth_required": True}))
    assert message.startswith("s3api.auth_required: true needs a key pair")
    with_credentials = {
        "auth_required": True,
        "credentials": [{"access_key": "a", "secret_key": "s"}],
    }
    assert parse_config(minimal(s3api=with_credentials), {}).s3api.auth_required is True


def test_half_a_key_pair_is_refused() -> None:
    message = only_problem(minimal(s3api={"access_key": "AKIA"}))
    assert message.startswith("s3api.secret_key: is empty but s3api.access_key is set")


def test_credentials_allow_buckets_created_later_but_not_empty_names() -> None:
    entry = {"access_key": "a", "secret_key": "s", "buckets": ["not-declared-yet"]}
    config = parse_config(minimal(s3api={"credentials": [entry]}), {})
    assert config.s3api.credentials[0].buckets == ["not-declared-yet"]
    entry["buckets"] = ["ok-name", ""]
    assert only_problem(minimal(s3api={"credentials": [entry]})) == (
        "s3api.credentials[0].buckets[1]: '' is not a bucket name"
    )
    entry["buckets"] = ["Bad_Name"]
    assert only_problem(minimal(s3api={"credentials": [entry]})).startswith(
        "s3api.credentials[0].buckets[0]: 'Bad_Name' is not a valid S3 bucket name"
    )


def test_credentials_need_both_keys_and_unique_access_keys() -> None:
    s3api = {
        "access_key": "main",
        "secret_key": "s",
        "credentials": [{"access_key": "main", "secret_key": "t"}, {"access_key": "b"}],
    }
    assert problems(minimal(s3api=s3api)) == [
        "s3api.credentials[0].access_key: 'main' is already used by s3api.access_key",
        "s3api.credentials[1].secret_key: is required in every credentials entry",
    ]


def test_enabled_api_needs_a_token() -> None:
    message = only_problem(minimal(api={"enabled": True, "token": ""}))
    assert message.startswith("api.token: must be set when api.enabled is true")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metrics", "metrics.path: 'metrics' must start with /"),
        ("/", "metrics.path: '/' must start with / and name a path below it"),
        ("/photos", "metrics.path: '/photos' would hide virtual bucket 'photos'"),
        ("/photos/metrics", "metrics.path: '/photos/metrics' would hide virtual bucket 'photos'"),
        ("/api/metrics", "metrics.path: '/api/metrics' is inside the admin API"),
        ("/met rics", "metrics.path: '/met rics' is not a plain URL path"),
    ],
)
def test_metrics_path_must_not_collide_with_s3(path: str, expected: str) -> None:
    data = with_bucket(name="photos", virtual=True)
    data["metrics"] = {"path": path}
    assert only_problem(data).startswith(expected)


def test_virtual_host_needs_our_domain_key() -> None:
    message = only_problem(minimal(s3api={"virtual_host": True}))
    assert message.startswith("s3api.virtual_host: true needs s3api.domain (ours)")
    config = parse_config(minimal(s3api={"virtual_host": True, "domain": "S3.Example.com."}), {})
    assert config.s3api.domain == "s3.example.com"


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "server": {"port": 0, "colour": "blue"},
        "buckets": [
            {"name": "a", "path": "/a", "max_size": "12 parsecs"},
            {"name": "a", "path": "/b"},
        ],
        "balancer": {"strategy": "random"},
        "api": {"enabled": True},
    }
    found = problems(data)
    assert [p.split(":")[0] for p in found] == [
        "server.colour",
        "server.port",
        "buckets[0].max_size",
        "buckets[1].name",
        "balancer.strategy",
        "api.token",
    ]


# --- environment variables ---------------------------------------------------------------------


def test_environment_variables_are_expanded_everywhere() -> None:
    data = minimal(
        s3api={"access_key": "${KEY}", "secret_key": "${SECRET:-fallback}"},
        data_dir="${HOME_DIR}/data",
    )
    data["buckets"][0]["path"] = "${ROOT}/store-1"
    config = parse_config(data, {"KEY": "AKIA", "HOME_DIR": "/home/s3", "ROOT": "/srv"})
    assert config.s3api.access_key == "AKIA"
    assert config.s3api.secret_key == "fallback"
    assert config.data_dir == "/home/s3/data"
    assert config.buckets[0].path == "/srv/store-1"
    assert type(config.s3api.access_key) is str


def test_a_set_variable_wins_over_its_default() -> None:
    config = parse_config(minimal(s3api={"region": "${REGION:-us-east-1}"}), {"REGION": "eu-1"})
    assert config.s3api.region == "eu-1"


def test_a_missing_variable_names_the_key_and_the_variable() -> None:
    data = minimal(api={"enabled": True, "token": "${API_TOKEN}"})
    found = problems(data)
    assert found[0] == (
        "api.token: environment variable API_TOKEN is not set "
        "(set it, or write ${API_TOKEN:-default})"
    )
    data = minimal()
    data["buckets"][0]["path"] = "${MISSING_ROOT}/x"
    assert only_problem(data).startswith("buckets[0].path: environment variable MISSING_ROOT")


def test_variables_may_stand_for_numbers_and_booleans() -> None:
    data = minimal(
        server={"port": "${PORT}", "read_timeout": "${TIMEOUT:-5s}"},
        metrics={"enabled": "${METRICS:-false}"},
    )
    data["buckets"][0]["max_size"] = "${SIZE}"
    config = parse_config(data, {"PORT": "9000", "SIZE": "2048"})
    assert config.server.port == 9000
    assert config.server.read_timeout == 5.0
    assert config.metrics.enabled is False
    assert config.buckets[0].max_size == 2048
    assert only_problem(minimal(server={"port": "${PORT}"}), {"PORT": "eighty"}).startswith(
        "server.port: 'eighty' is not a whole number"
    )


def test_a_doubled_dollar_keeps_the_text_literal() -> None:
    config = parse_config(minimal(s3api={"host": "$${NOT_A_VAR}"}), {})
    assert config.s3api.host == "${NOT_A_VAR}"


# --- files -------------------------------------------------------------------------------------


def test_load_config_reports_yaml_syntax_errors_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: [8080\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.problems[0].startswith(f"{path}: not valid YAML")
    assert "line" in str(caught.value)


def test_load_config_refuses_a_key_given_twice(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(
        "server:\n  port: 8080\nbuckets:\n  - {name: a, path: /a}\nserver:\n  port: 9090\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert "found key 'server' again (first on line 1)" in str(caught.value)


def test_load_config_raises_oserror_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_config(str(tmp_path / "absent.yaml"), {})


def test_load_config_expands_from_the_given_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("buckets:\n  - {name: a, path: '${STORE}'}\nserver:\n  port: ${PORT}\n")
    config = load_config(str(path), {"STORE": "/srv/a", "PORT": "8181"})
    assert config.buckets[0].path == "/srv/a"
    assert config.server.port == 8181


# --- defaults ----------------------------------------------------------------------------------


def test_default_config_runs_on_local_directories(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "d")
    config = default_config(data_dir)
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    assert database_url(config.database.type, config.database.dsn, config.data_dir) == (
        f"sqlite:///{os.path.join(data_dir, 's3balance.db')}"
    )
    assert [(b.name, b.path) for b in config.buckets] == [
        ("local-1", os.path.join("backends", "local-1")),
        ("local-2", os.path.join("backends", "local-2")),
    ]  # relative to data_dir, resolved by s3balance.backends.factory
    assert config.virtual_buckets == []
    assert config.s3api.auth_required is False
    assert config.s3api.proxy_mode is True
    assert config.s3api.allow_create_bucket is True
    assert parse_config(config_to_dict(config, mask_secrets=False), {}) == config


# --- showing -----------------------------------------------------------------------------------


def rich_config() -> Config:
    config = load_config(str(ETC / "go-s3-balance.example.yaml"), environ={})
    config.database.type = "postgres"
    config.database.dsn = "host=127.0.0.1 user=s3 password='p w${x}' dbname=s3"
    config.buckets.append(
        BucketConfig(
            name="local",
            path="/srv/${literal}",
            max_size=1536,
            bucket="svc-name",
            ca_bundle="/etc/ca.pem",
            weight=0,
        )
    )
    config.s3api.credentials.append(Credential("reader", "r-secret", ["user-bucket-1"], True))
    config.s3api.domain = "s3.example.com"
    config.s3api.presign_expiry = 0.25
    config.metrics.token = "m-token"
    config.server.read_timeout = 90.5
    return config


@pytest.mark.parametrize(
    "make",
    [
        rich_config,
        default_config,
        lambda: load_config(str(ETC / "s3balance.example.yaml"), environ={}),
    ],
)
def test_config_to_dict_round_trips(make: Any) -> None:
    config = make()
    data = config_to_dict(config, mask_secrets=False)
    assert parse_config(data, {}) == config
    # And through YAML text, as GET /api/config and --check-config show it.
    assert parse_config(yaml.safe_load(yaml.safe_dump(data)), {}) == config


def test_config_to_dict_writes_units_people_read() -> None:
    data = config_to_dict(rich_config(), mask_secrets=False)
    assert data["buckets"][0]["max_size"] == "100GiB"
    assert data["buckets"][3]["max_size"] == "1.5KiB"
    assert data["server"]["read_timeout"] == "1m30.5s"
    assert data["database"]["conn_max_lifetime"] == "5m"
    assert "max_size" not in config_to_dict(default_config())["buckets"][0]


def test_config_to_dict_masks_only_secrets() -> None:
    data = config_to_dict(rich_config(), mask_secrets=True)
    text = yaml.safe_dump(data)
    for secret in ("YOUR_AWS_SECRET_ACCESS_KEY", "minioadmin", "wJalrXUtnFEMI", "r-secret",
                   "your-secure-api-token", "m-token", "p w"):  # fmt: skip
        assert secret not in text.replace("access_key_id: minioadmin", ""), secret
    assert data["buckets"][0]["secret_access_key"] == "***"
    assert data["buckets"][0]["access_key_id"] == "YOUR_AWS_ACCESS_KEY_ID"
    assert data["buckets"][2]["secret_access_key"] == ""  # nothing to hide
    assert data["s3api"]["secret_key"] == "***"
    assert data["s3api"]["access_key"] == "AKIAIOSFODNN7EXAMPLE"
    assert data["s3api"]["credentials"][0]["secret_key"] == "***"
    assert data["api"]["token"] == "***"
    assert data["metrics"]["token"] == "***"
    assert data["database"]["dsn"] == "host=127.0.0.1 user=s3 password=*** dbname=s3"


# --- updating ----------------------------------------------------------------------------------


def base_dict() -> dict[str, Any]:
    return config_to_dict(rich_config(), mask_secrets=False)


def test_merge_updates_nested_keys_and_leaves_inputs_alone() -> None:
    base = base_dict()
    partial = {"balancer": {"strategy": "weighted"}, "server": {"port": 9000}}
    before = (copy.deepcopy(base), copy.deepcopy(partial))
    merged = merge_config(base, partial)
    assert (base, partial) == before
    config = parse_config(merged, {})
    assert config.balancer.strategy == "weighted"
    assert config.balancer.retry_attempts == 3
    assert config.server.port == 9000
    assert config.server.host == "0.0.0.0"


def test_merge_matches_buckets_by_name() -> None:
    merged = merge_config(
        base_dict(),
        {
            "buckets": [
                {"name": "my-bucket-2", "weight": 7, "enabled": False},
                {"name": "new-store", "path": "/srv/new"},
                {"name": "my-bucket-1", "remove": True},
            ]
        },
    )
    config = parse_config(merged, {})
    names = [b.name for b in config.buckets]
    assert names == ["my-bucket-2", "user-bucket-1", "local", "new-store"]
    updated = config.buckets[0]
    assert (updated.weight, updated.enabled) == (7, False)
    assert updated.endpoint == "http://localhost:9000"
    assert updated.max_size == 50 * GiB


def test_merge_keeps_secrets_sent_back_masked() -> None:
    current = rich_config()
    shown = config_to_dict(current, mask_secrets=True)
    shown["balancer"]["strategy"] = "round-robin"
    config = parse_config(merge_config(config_to_dict(current, mask_secrets=False), shown), {})
    assert config.balancer.strategy == "round-robin"
    config.balancer.strategy = current.balancer.strategy
    assert config == current


def test_merge_replaces_a_secret_given_in_clear() -> None:
    merged = merge_config(
        base_dict(),
        {"buckets": [{"name": "my-bucket-2", "secret_access_key": "new"}], "api": {"token": "t"}},
    )
    config = parse_config(merged, {})
    assert config.buckets[1].secret_access_key == "new"
    assert config.api.token == "t"


def test_merge_matches_credentials_by_access_key() -> None:
    merged = merge_config(
        base_dict(),
        {"s3api": {"credentials": [{"access_key": "reader", "read_only": False,
                                    "secret_key": "***"}]}},
    )  # fmt: skip
    credential = parse_config(merged, {}).s3api.credentials[0]
    assert credential == Credential("reader", "r-secret", ["user-bucket-1"], False)


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        (
            {"buckets": [{"name": "ghost", "remove": True}]},
            "buckets[0]: cannot remove 'ghost': there is no such entry",
        ),
        (
            {"buckets": [{"weight": 3}]},
            "buckets[0]: every entry needs a name to say which it updates",
        ),
        (
            {"buckets": [{"name": "fresh", "path": "/p", "secret_access_key": "***"}]},
            "buckets[0].secret_access_key: '***' keeps the current secret, but there is none",
        ),
        ({"buckets": {"name": "x"}}, "buckets: a mapping is not a list"),
    ],
)
def test_merge_refuses_updates_that_refer_to_nothing(partial: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        merge_config(base_dict(), partial)
    assert caught.value.problems == [expected]


def test_merged_result_is_still_validated() -> None:
    merged = merge_config(base_dict(), {"buckets": [{"name": "my-bucket-1", "weight": -2}]})
    assert only_problem(merged).startswith("buckets[0].weight: -2 is out of range")


def test_yaml_anchors_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "buckets:\n"
        "  - &store {name: a, path: /a, weight: 1, region: eu-1}\n"
        "  - <<: *store\n"
        "    name: b\n"
        "    path: /b\n"
    )
    config = load_config(str(path), {})
    assert [(b.name, b.path, b.region) for b in config.buckets] == [
        ("a", "/a", "eu-1"),
        ("b", "/b", "eu-1"),
    ]


# --- typed data (the admin API's JSON) ---------------------------------------------------------


def test_yaml_keeps_bare_numbers_as_text_but_typed_data_refuses_them() -> None:
    """Go reads ``secret_key: 12345`` as text; in JSON a number for a secret is a mistake."""
    data = minimal(s3api={"access_key": "AK", "secret_key": 12345}, api={"token": 42})
    loaded = parse_config(copy.deepcopy(data), {})
    assert (loaded.s3api.secret_key, loaded.api.token) == ("12345", "42")
    with pytest.raises(ConfigError) as caught:
        parse_config(copy.deepcopy(data), {}, typed=True)
    found = caught.value.problems
    assert "s3api.secret_key: this value is not text (give it as a JSON string)" in found
    assert "api.token: this value is not text (give it as a JSON string)" in found
    assert not any("12345" in p or "42" in p for p in found)  # secrets are not shown


def test_typed_data_checks_text_in_every_section() -> None:
    data = minimal(
        data_dir=1,
        server={"host": 127},
        s3api={"access_key": 5, "secret_key": "s", "credentials": [
            {"access_key": "K2", "secret_key": 6.5}]},
    )  # fmt: skip
    data["buckets"][0]["secret_access_key"] = 9
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {}, typed=True)
    found = caught.value.problems
    for key in ("data_dir: 1", "server.host: 127", "s3api.access_key: 5",
                "s3api.credentials[0].secret_key: this value",
                "buckets[0].secret_access_key: this value"):  # fmt: skip
        assert any(p.startswith(key) and "is not text" in p for p in found), (key, found)
    # Well-typed data passes, and round-trips through config_to_dict as the API merges it.
    config = parse_config(minimal(), {})
    assert parse_config(config_to_dict(config, mask_secrets=False), {}, typed=True) == config
