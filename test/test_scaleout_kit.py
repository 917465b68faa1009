"""The scale-out kit in ``etc/``: docker-compose and the Kubernetes manifests.

Each file names ports, paths, config keys and a command that only work if they agree with the
daemon.  A probe on a path the daemon does not serve restarts pods forever; a ConfigMap with a
misspelt key makes every replica refuse to start; Prometheus scraping the wrong port sees
nothing.  These tests load the configurations through the daemon's own loader and build the
daemon from them, so each such mismatch fails here instead of in a cluster.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import IResource

from s3balance.app import S3BalanceService
from s3balance.config import Config
from s3balance.configfile import ConfigError, load_config
from s3balance.metrics import MetricsResource
from s3balance.tap import Options
from s3balance.web.health import HealthResource

pytestmark = pytest.mark.timeout(30)

ETC = Path(__file__).resolve().parent.parent / "etc"
KUBERNETES = ETC / "kubernetes"
CONFIG_MOUNT = "/etc/s3balance"
CONFIG_FILE = f"{CONFIG_MOUNT}/s3balance.yaml"
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in etc/kubernetes, by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                assert document["kind"] not in found, f"two {document['kind']} manifests"
                found[document["kind"]] = document
    return found


def _load_daemon_config(text: str, environ: dict[str, str], tmp_path: Path) -> Config:
    """The configuration as ``twistd s3balance --config`` reads it, with ``environ`` for ``${}``."""
    path = tmp_path / "s3balance.yaml"
    path.write_text(text)
    references = set(_REFERENCE.findall(text))
    missing = references - set(environ)
    assert not missing, f"the configuration refers to variables nobody sets: {sorted(missing)}"
    config = load_config(str(path), environ=environ)
    config.data_dir = str(tmp_path / "data")  # the container's data_dir does not exist here
    return config


def _served_child(config: Config, path: str) -> object:
    """What the daemon built from ``config`` serves at ``path`` (a one-segment reserved path)."""
    service = S3BalanceService(config, reactor=MemoryReactorClock(), listen=[])
    segment = path.strip("/").encode("utf-8")
    child = service.components.resource.reserved.get(segment)
    assert child is not None and IResource.providedBy(child), f"the daemon serves nothing at {path}"
    return child


def _assert_runs_the_plugin(command: list[str]) -> list[str]:
    """``twistd -n --pidfile= s3balance --config FILE``, with options the plugin knows."""
    assert command[0] == "twistd", command
    assert "-n" in command and "--pidfile=" in command, "twistd must stay in the foreground"
    arguments = command[command.index("s3balance") + 1 :]
    known = {f"--{name}" for name, *_ in Options.optParameters + Options.optFlags}
    assert {a.split("=", 1)[0] for a in arguments if a.startswith("--")} <= known, arguments
    assert arguments[arguments.index("--config") + 1] == CONFIG_FILE
    # The plugin parses exactly these arguments (with a file that exists here).
    example = str(ETC / "s3balance.example.yaml")
    Options().parseOptions([example if a == CONFIG_FILE else a for a in arguments])
    return arguments


# Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_has_every_object_an_operator_needs() -> None:
    manifests = _manifests()
    assert set(manifests) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    labels = {"app.kubernetes.io/name": "s3balance"}
    deployment = manifests["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    assert manifests["Service"]["spec"]["selector"] == labels
    assert manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_kubernetes_configmap_loads_with_the_secret_and_matches_ports_and_probes(
    tmp_path: Path,
) -> None:
    manifests = _manifests()
    secret = manifests["Secret"]["stringData"]
    text = manifests["ConfigMap"]["data"]["s3balance.yaml"]
    config = _load_daemon_config(text, dict(secret), tmp_path)
    assert config.database.type == "postgres", "replicas share state only through one database"
    assert config.database.dsn == secret["S3BALANCE_DSN"]
    assert config.server.host == "0.0.0.0", "a pod must listen beyond its loopback"

    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _assert_runs_the_plugin(container["command"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"] == CONFIG_MOUNT
    assert volumes["config"]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert container["envFrom"] == [
        {"secretRef": {"name": manifests["Secret"]["metadata"]["name"]}}
    ]
    assert config.data_dir.endswith("data") and mounts["data"] == "/var/lib/s3balance"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.server.port
    (service_port,) = manifests["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in ("http", config.server.port)

    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", config.server.port), probe
        assert isinstance(_served_child(config, get["path"]), HealthResource), probe

    # Transfers in flight get server.shutdown_grace; Kubernetes must not kill the pod sooner.
    assert pod["terminationGracePeriodSeconds"] > config.server.shutdown_grace

    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert config.metrics.enabled
    assert int(annotations["prometheus.io/port"]) == (config.metrics.port or config.server.port)
    assert annotations["prometheus.io/path"] == config.metrics.path
    assert isinstance(_served_child(config, config.metrics.path), MetricsResource)


def test_kubernetes_configmap_is_refused_by_the_loader_when_a_key_is_misspelt(
    tmp_path: Path,
) -> None:
    """The check above would be worthless if the loader accepted anything."""
    manifests = _manifests()
    text = manifests["ConfigMap"]["data"]["s3balance.yaml"].replace(
        "shutdown_grace", "shutdown_grac"
    )
    with pytest.raises(ConfigError, match="shutdown_grac"):
        _load_daemon_config(text, dict(manifests["Secret"]["stringData"]), tmp_path)


# docker-compose --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return _yaml(ETC / "docker-compose.yml")


def _host_file(mount: str) -> tuple[Path, str]:
    """A compose bind mount ``./x:/y[:ro]``: the file in the repository and the container path."""
    source, target, *_ = mount.split(":")
    return (ETC / source).resolve(), target


def _daemons(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("s3balance")
    }


def _compose_environment(daemon: dict[str, Any]) -> dict[str, str]:
    """The daemon's environment as compose sets it with nothing exported: the defaults."""

    def default(match: re.Match[str]) -> str:
        return match.group(2) if match.group(2) is not None else ""

    return {
        key: re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", default, value)
        for key, value in daemon["environment"].items()
    }


def _compose_daemon_config(daemon: dict[str, Any], tmp_path: Path) -> Config:
    """The configuration a compose daemon runs, loaded by the daemon's loader."""
    mounts = dict(_host_file(m)[::-1] for m in daemon["volumes"] if m.startswith("./"))
    return _load_daemon_config(
        mounts[CONFIG_FILE].read_text(), _compose_environment(daemon), tmp_path
    )


def test_compose_runs_two_daemons_on_one_postgres_with_the_image_command(tmp_path: Path) -> None:
    compose = _compose()
    assert {"postgres", "prometheus", "grafana"} <= set(compose["services"])
    daemons = _daemons(compose)
    assert len(daemons) == 2
    for name, daemon in daemons.items():
        assert daemon["build"] == {"context": "..", "dockerfile": "etc/Dockerfile"}
        _assert_runs_the_plugin(daemon["command"])
        config = _compose_daemon_config(daemon, tmp_path)
        assert config.database.type == "postgres"
        assert "@postgres:5432/" in config.database.dsn, "the dsn names the compose service"
        assert "postgres" in daemon["depends_on"]
        published = [p.rsplit(":", 1)[1] for p in daemon["ports"]]
        assert published == [str(config.server.port)], name
        healthcheck = " ".join(daemon["healthcheck"]["test"])
        assert f"127.0.0.1:{config.server.port}/health" in healthcheck
        assert isinstance(_served_child(config, "/health"), HealthResource)
        assert daemon["stop_grace_period"].endswith("s")
        assert int(daemon["stop_grace_period"][:-1]) > config.server.shutdown_grace


def test_compose_prometheus_scrapes_both_daemons_where_they_serve_metrics(tmp_path: Path) -> None:
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = dict(_host_file(m)[::-1] for m in prometheus["volumes"] if m.startswith("./"))
    scrape_file = mounts["/etc/prometheus/prometheus.yml"]
    assert mounts["/etc/prometheus/s3balance-alerts.yml"] == (ETC / "prometheus-alerts.yml")
    settings = _yaml(scrape_file)
    assert settings["rule_files"] == ["/etc/prometheus/s3balance-alerts.yml"]
    (job,) = settings["scrape_configs"]
    # The S3BalanceDown alert selects job="s3balance".
    assert job["job_name"] == "s3balance"
    assert 'job="s3balance"' in (ETC / "prometheus-alerts.yml").read_text()
    daemons = _daemons(compose)
    config = _compose_daemon_config(next(iter(daemons.values())), tmp_path)
    assert job.get("metrics_path", "/metrics") == config.metrics.path
    assert isinstance(_served_child(config, config.metrics.path), MetricsResource)
    port = config.metrics.port or config.server.port
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert sorted(targets) == sorted(f"{name}:{port}" for name in daemons)


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(_host_file(m)[::-1] for m in grafana["volumes"] if m.startswith("./"))
    datasources = [
        _yaml(source)
        for target, source in mounts.items()
        if target.startswith("/etc/grafana/provisioning/datasources/")
    ]
    ((source,),) = [d["datasources"] for d in datasources]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    providers = [
        _yaml(source)
        for target, source in mounts.items()
        if target.startswith("/etc/grafana/provisioning/dashboards/")
    ]
    ((provider,),) = [p["providers"] for p in providers]
    folder = provider["options"]["path"]
    dashboards = [s for t, s in mounts.items() if t.startswith(folder + "/")]
    assert dashboards == [ETC / "grafana-dashboard.json"]


def test_dockerfile_installs_the_database_drivers_the_kit_needs() -> None:
    text = (ETC / "Dockerfile").read_text()
    install = next(line for line in text.splitlines() if "pip install" in line)
    (target,) = [w for w in shlex.split(install.rstrip("\\ ")) if w.startswith(".")]
    assert "postgres" in target, "the compose file and the ConfigMap use PostgreSQL"
