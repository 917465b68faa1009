"""The files in ``etc/`` an operator installs: dashboard, alert rules, systemd unit, Dockerfile.

A dashboard or an alert naming a metric the daemon does not export stays silent forever, which
is the failure these tests exist to catch.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics_core import Metric

from s3balance import metrics
from s3balance.tap import Options

pytestmark = pytest.mark.timeout(30)

ETC = Path(__file__).resolve().parent.parent / "etc"
OUR_PREFIX = "s3_balance_"
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_series_names() -> set[str]:
    """Every series name the registry can expose, including the suffixes Prometheus adds to
    counters and histograms (which a labelled metric only shows once a series exists)."""
    names: set[str] = set()
    family: Metric
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.update({family.name + "_total", family.name + "_created"})
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count", "_created"))
    return names


def metric_names_in(expression: str) -> set[str]:
    """Identifiers of our metrics in a PromQL expression (quoted label values removed first)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    return {name for name in _IDENTIFIER.findall(unquoted) if name.startswith(OUR_PREFIX)}


def dashboard_expressions(dashboard: dict) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend(target["expr"] for target in inner.get("targets", []))
    return found


def alert_rules() -> list[dict]:
    document = yaml.safe_load((ETC / "prometheus-alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_metric_name_parser_sees_through_label_values_and_functions() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le) (rate(s3_balance_x_bucket{operation!~"s3_balance_y"}'
        "[5m]))) / s3_balance_z"
    )
    assert metric_names_in(expression) == {"s3_balance_x_bucket", "s3_balance_z"}


def test_dashboard_is_json_with_panels_querying_exported_metrics() -> None:
    dashboard = json.loads((ETC / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    used = set().union(*(metric_names_in(e) for e in dashboard_expressions(dashboard)))
    unknown = used - exported_series_names()
    assert not unknown, f"dashboard queries metrics s3balance does not export: {sorted(unknown)}"
    # The panels an operator looks at first are there.
    for needed in (
        "s3_balance_bucket_healthy",
        "s3_balance_bucket_usage_bytes",
        "s3_balance_s3_operations_total",
        "s3_balance_s3_operation_duration_seconds_bucket",
        "s3_balance_bucket_operations_month",
    ):
        assert needed in used, needed


def test_alert_rules_have_prometheus_structure_and_use_exported_metrics() -> None:
    document = yaml.safe_load((ETC / "prometheus-alerts.yml").read_text())
    assert isinstance(document["groups"], list) and document["groups"]
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}
        assert isinstance(group["name"], str) and group["rules"]
    exported = exported_series_names()
    names = []
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["for"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        unknown = metric_names_in(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} uses unknown metrics {sorted(unknown)}"
        names.append(rule["alert"])
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("metric", "what"),
    [
        ("s3_balance_bucket_healthy", "backend down"),
        ("s3_balance_bucket_capacity_bytes", "usage above 90 %"),
        ("s3_balance_s3_operations_total", "5xx error rate"),
        ("s3_balance_s3_operation_duration_seconds_bucket", "latency p99"),
        ("s3_balance_bucket_operation_limit", "operation limit near"),
    ],
)
def test_each_required_condition_has_an_alert(metric: str, what: str) -> None:
    assert any(metric in metric_names_in(rule["expr"]) for rule in alert_rules()), what


def _twistd_arguments(command: list[str]) -> list[str]:
    """The plugin's own arguments: what follows ``s3balance`` in a twistd command line."""
    assert command[0].endswith("twistd"), command
    assert "-n" in command and "--pidfile=" in command, "twistd must stay in the foreground"
    return command[command.index("s3balance") + 1 :]


def _assert_plugin_accepts(arguments: list[str]) -> None:
    known = {f"--{name}" for name, *_ in Options.optParameters}
    known |= {f"--{name}" for name, *_ in Options.optFlags}
    options = [a.split("=", 1)[0] for a in arguments if a.startswith("--")]
    assert options and set(options) <= known, (options, known)


def test_systemd_unit_runs_the_plugin_reloads_with_sighup_and_restarts_on_failure() -> None:
    settings: dict[str, list[str]] = {}
    for line in (ETC / "s3balance.service").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    command = shlex.split(settings["ExecStart"][0])
    _assert_plugin_accepts(_twistd_arguments(command))
    assert "/etc/s3balance/s3balance.yaml" in command
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert hardening in settings, hardening


def test_dockerfile_installs_the_package_and_runs_the_same_command() -> None:
    lines = (ETC / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert any(re.search(r"pip install .*[ \"]\.(\[|[ \"]|$)", line) for line in instructions)
    assert "EXPOSE 8080" in instructions
    cmd = json.loads(next(line for line in instructions if line.startswith("CMD "))[4:])
    _assert_plugin_accepts(_twistd_arguments(cmd))
    assert "/etc/s3balance/s3balance.yaml" in cmd
