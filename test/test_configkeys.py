"""The table of configuration keys is the one definition: the dataclasses, the parser, masking,
the reload check and the README all agree with it."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3balance.admin.configcheck import restart_keys
from s3balance.admin.reload import _keep_restart_only
from s3balance.config import Config
from s3balance.configdoc import BEGIN, END, main, markdown_table, replace_table
from s3balance.configfile import _CLASSES, ConfigError, config_to_dict, parse_config
from s3balance.configkeys import (
    KEYS,
    Boolean,
    BucketNames,
    Choice,
    Duration,
    Entries,
    Integer,
    Key,
    Size,
    children,
    describe,
    find_key,
    live_fields,
    restart_sections,
)
from s3balance.dsn import MASK
from test.test_configfile import minimal

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.timeout(30)


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    assert text[start:end] == markdown_table(), (
        "README.md's configuration table is stale: run "
        "`python -m s3balance.configdoc --write README.md`"
    )


def test_configdoc_rewrites_a_stale_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\n| old | table |\n{END}\n\nafter\n")
    assert main(["--write", str(readme)]) == 0
    assert readme.read_text() == f"# title\n\n{markdown_table()}\nafter\n"
    with pytest.raises(ValueError, match="markers are missing"):
        replace_table("no table here")


@pytest.mark.parametrize("section", sorted(_CLASSES))
def test_every_field_has_one_key_and_every_key_a_field(section: str) -> None:
    names = tuple(f.name for f in dataclasses.fields(_CLASSES[section]))
    assert children(section) == names


def test_dataclass_defaults_are_the_table_defaults() -> None:
    parsed = parse_config(minimal(), {})
    assert dataclasses.replace(parsed, buckets=[]) == Config()
    bucket = parse_config(minimal(), {}).buckets[0]
    for k in KEYS:
        if k.section == "buckets[]" and k.name not in ("name", "path"):
            assert getattr(bucket, k.name) == k.fresh_default(), k.path


def _valid_file() -> dict[str, Any]:
    return minimal(s3api={"credentials": [{"access_key": "a", "secret_key": "s"}]})


def _put(data: dict[str, Any], k: Key, value: Any) -> str:
    """Set ``k`` to ``value`` in its first mapping of ``data``; returns the path problems name."""
    if k.section.startswith("buckets[]"):
        target, where = data["buckets"][0], "buckets[0]"
        for part in k.section.split(".")[1:]:
            target, where = target.setdefault(part, {}), f"{where}.{part}"
    elif k.section == "s3api.credentials[]":
        target, where = data["s3api"]["credentials"][0], "s3api.credentials[0]"
    elif k.section:
        target, where = data.setdefault(k.section, {}), k.section
    else:
        target, where = data, ""
    target[k.name] = value
    return f"{where}.{k.name}" if where else k.name


def _bad_value(k: Key) -> Any:
    kind = k.kind
    if isinstance(kind, Integer) and kind.minimum is not None:
        return kind.minimum - 1
    return {
        Boolean: "maybe",
        Choice: "nonsense",
        Duration: "soon",
        Size: "lots",
        BucketNames: "photos",
    }.get(type(kind), [1])


@pytest.mark.parametrize(
    "k", [k for k in KEYS if not isinstance(k.kind, Entries)], ids=lambda k: k.path
)
def test_a_bad_value_is_refused_naming_the_key_and_the_value(k: Key) -> None:
    """Every key refuses a value of the wrong kind or range with ``<path>: <value> ...``."""
    data = _valid_file()
    bad = _bad_value(k)
    path = _put(data, k, bad)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    first = caught.value.problems[0]
    assert first.startswith(f"{path}: "), caught.value.problems
    shown = "this value" if k.secret else describe(bad)
    assert shown in first or str(bad) in first, first


def test_every_secret_key_is_masked_and_nothing_else() -> None:
    data = _valid_file()
    data["s3api"]["access_key"] = "main"
    for k in KEYS:
        if k.secret and k.path != "database.dsn":
            _put(data, k, "hunter2-secret")
    data["database"] = {"type": "postgres", "dsn": "postgresql://u:hunter2-secret@127.0.0.1/db"}
    config = parse_config(data, {})
    shown = config_to_dict(config, mask_secrets=True)
    assert "hunter2-secret" not in yaml.safe_dump(shown)
    assert shown["database"]["dsn"] == f"postgresql://u:{MASK}@127.0.0.1/db"
    assert shown["s3api"]["secret_key"] == MASK
    assert shown["s3api"]["access_key"] == "main"
    assert parse_config(config_to_dict(config, mask_secrets=False), {}) == config


def test_restart_sections_and_live_fields_follow_the_table() -> None:
    assert restart_sections() == (
        "server", "database", "metrics", "api", "multipart", "repair", "jobs", "data_dir",
    )  # fmt: skip
    assert live_fields("s3api") == ("allow_create_bucket",)
    assert "health_check_period" not in live_fields("balancer")
    assert set(restart_keys()) >= {"server", "s3api.credentials", "balancer.update_stats_period"}


@pytest.mark.parametrize(
    "k",
    [k for k in KEYS if k.section in ("balancer", "s3api") or k.section == ""],
    ids=lambda k: k.path,
)
def test_reload_keeps_exactly_the_keys_that_are_not_live(k: Key) -> None:
    """A change to a key the table calls live is applied; any other is reported and undone."""
    old = parse_config(minimal(), {})
    changed = _changed(old, k)
    changes: list[str] = []
    effective = _keep_restart_only(old, changed, changes)
    if k.live:
        assert changes == []
        assert effective == changed
    else:
        assert changes and changes[0].endswith("changed: needs a restart")
        assert effective == old


def _changed(config: Config, k: Key) -> Config:
    changed = copy.deepcopy(config)
    target: Any = changed if k.section == "" else getattr(changed, k.section)
    value = getattr(target, k.name)
    if isinstance(value, bool):
        new: Any = not value
    elif isinstance(value, int | float):
        new = value + 1
    elif isinstance(value, list):
        new = [object()]
    else:
        new = str(value) + "-changed"
    setattr(target, k.name, new)
    return changed


def test_a_key_is_found_by_its_path() -> None:
    found = find_key("buckets[].operation_limits.type_a")
    assert found is not None and found.section == "buckets[].operation_limits"
    assert find_key("server") is None
