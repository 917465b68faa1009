"""Configuration problems tied to their key, and YAML text for the console's editor.

Validation itself is :func:`s3balance.configfile.parse_config`, the same as for the file and for
``POST /api/config``; this module only reshapes its problems (``"<key path>: <message>"``) into
``{"key", "message", "line"}`` so a page can show each one next to its field, and finds the line of
a key in YAML text the operator typed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from s3balance.admin.reload import LIVE_BALANCER_FIELDS, LIVE_S3API_FIELDS, RESTART_SECTIONS
from s3balance.config import BalancerConfig, S3ApiConfig

#: A key path as validation writes it: ``balancer.strategy``, ``buckets[0].weight``.
_PROBLEM_RE = re.compile(
    r"^(?P<key>[A-Za-z0-9_]+(?:\[\d+\]|\.[A-Za-z0-9_]+)*): (?P<message>.*)$", re.S
)
#: Largest YAML text accepted from the editor.
MAX_YAML = 256 * 1024


class YamlTextError(Exception):
    """YAML the editor sent that is not a mapping, or not YAML at all."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def parse_yaml_text(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in ``text`` and the (1-based) line of every key path in it.

    :raises YamlTextError: a syntax error (with its line) or a document that is not a mapping.
    """
    if len(text) > MAX_YAML:
        raise YamlTextError(f"the YAML text is larger than {MAX_YAML} characters", None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise YamlTextError(f"not valid YAML: {problem}", line) from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise YamlTextError("the configuration must be a mapping of sections", 1)
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            name = str(key_node.value)
            child = f"{path}.{name}" if path else name
            lines.setdefault(child, key_node.start_mark.line + 1)
            _collect_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _collect_lines(item, child, lines)


def problem_documents(
    problems: list[str], lines: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """``[{"key", "message", "line", "text"}]`` for validation problems; ``key`` is None for a
    problem about the whole configuration, ``line`` the line of the key (or of its nearest
    parent) in the YAML text, when there is one."""
    return [_problem_document(problem, lines or {}) for problem in problems]


def _problem_document(problem: str, lines: dict[str, int]) -> dict[str, Any]:
    match = _PROBLEM_RE.match(problem)
    key = match.group("key") if match else None
    message = match.group("message") if match else problem
    return {"key": key, "message": message, "line": _line_of(key, lines), "text": problem}


def _line_of(key: str | None, lines: dict[str, int]) -> int | None:
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None


def restart_keys() -> list[str]:
    """Keys whose change is kept until a restart (what :mod:`s3balance.admin.reload` does)."""
    keys = list(RESTART_SECTIONS)
    keys += [
        f"balancer.{f.name}"
        for f in dataclasses.fields(BalancerConfig)
        if f.name not in LIVE_BALANCER_FIELDS
    ]
    keys += [
        f"s3api.{f.name}"
        for f in dataclasses.fields(S3ApiConfig)
        if f.name not in LIVE_S3API_FIELDS
    ]
    return keys


def config_yaml(document: dict[str, Any]) -> str:
    """The configuration in the file's format, keys in the file's order."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
