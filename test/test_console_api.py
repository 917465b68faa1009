"""The admin API endpoints the web console uses, and the ``/web`` pages' headers, against a real
daemon process (twistd) with real buckets in local directories, over a real socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from twisted.internet.task import Clock

from s3balance.admin.configcheck import parse_yaml_text, problem_documents, restart_keys
from s3balance.admin.history import Totals, TrafficHistory
from test.support.process import DaemonProcess

pytestmark = pytest.mark.timeout(120)

TOKEN = "console-api-token-0123"
S3_KEY, S3_SECRET = "AKIDCONSOLEAPI01", "console-api-secret-0123456789"
BACKENDS = ("disk-one", "disk-two")


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def call(base: str, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return Answer(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    workdir = tmp_path_factory.mktemp("console-api")
    config = {
        "buckets": [
            {"name": name, "path": str(workdir / name), "secret_access_key": "disk-secret-xyz"}
            for name in BACKENDS
        ]
        + [{"name": "configured", "virtual": True}],
        "balancer": {"strategy": "round-robin"},
        "s3api": {"access_key": S3_KEY, "secret_key": S3_SECRET, "auth_required": True},
        "api": {"enabled": True, "token": TOKEN},
    }
    with DaemonProcess(workdir, config) as process:
        yield process


@pytest.fixture(scope="module")
def s3(daemon: DaemonProcess) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=daemon.endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def totals_of(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    buckets = call(daemon.endpoint, "GET", "/api/virtual-buckets").json()["buckets"]
    return next(b for b in buckets if b["name"] == name)


def test_create_list_and_delete_buckets(daemon: DaemonProcess, s3: Any) -> None:
    base = daemon.endpoint
    created = call(base, "POST", "/api/buckets", {"name": "made-by-api"})
    assert created.status == 200, created.body
    assert created.json()["name"] == "made-by-api" and created.json()["virtual"] is True
    assert {"name": "made-by-api"}.items() <= totals_of(daemon, "made-by-api").items()
    assert (
        totals_of(daemon, "made-by-api")["object_count"],
        totals_of(daemon, "made-by-api")["bytes"],
    ) == (0, 0)
    # S3 clients see it.
    assert "made-by-api" in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    again = call(base, "POST", "/api/buckets", {"name": "made-by-api"})
    assert again.status == 409 and again.json()["code"] == "BucketAlreadyOwnedByYou"
    bad = call(base, "POST", "/api/buckets", {"name": "Not_Valid"})
    assert bad.status == 400 and bad.json()["code"] == "InvalidBucketName"
    real = call(base, "POST", "/api/buckets", {"name": BACKENDS[0]})
    assert real.status == 409
    assert call(base, "DELETE", f"/api/buckets/{BACKENDS[0]}").status == 409

    s3.put_object(Bucket="made-by-api", Key="one", Body=b"12345")
    assert totals_of(daemon, "made-by-api")["object_count"] == 1
    assert totals_of(daemon, "made-by-api")["bytes"] == 5
    full = call(base, "DELETE", "/api/buckets/made-by-api")
    assert full.status == 409 and full.json()["code"] == "BucketNotEmpty"
    s3.delete_object(Bucket="made-by-api", Key="one")
    assert call(base, "DELETE", "/api/buckets/made-by-api").status == 200
    gone = call(base, "DELETE", "/api/buckets/made-by-api")
    assert gone.status == 404 and gone.json()["code"] == "NoSuchBucket"
    # Without the token, nothing.
    assert call(base, "POST", "/api/buckets", {"name": "sneaky"}, token=None).status == 401
    assert call(base, "GET", "/api/buckets/sneaky").status == 404


def test_object_listing_paging_download_and_delete(daemon: DaemonProcess, s3: Any) -> None:
    base = daemon.endpoint
    s3.create_bucket(Bucket="browse")
    s3.put_object(Bucket="browse", Key="top.txt", Body=b"top", ContentType="text/plain")
    payload = bytes(range(256)) * 8192  # 2 MiB
    s3.put_object(Bucket="browse", Key="dir/b.bin", Body=payload)
    s3.put_object(Bucket="browse", Key="dir/c.bin", Body=b"c")
    s3.put_object(Bucket="browse", Key="dir/sub/d.bin", Body=b"d")

    page = call(base, "GET", "/api/buckets/browse/objects").json()
    assert page["prefixes"] == ["dir/"]
    assert [o["key"] for o in page["objects"]] == ["top.txt"]
    top = page["objects"][0]
    assert top["size"] == 3 and top["content_type"] == "text/plain"
    assert len(top["etag"]) == 32 and '"' not in top["etag"]
    assert top["locations"][0]["backend"] in BACKENDS

    first = call(base, "GET", "/api/buckets/browse/objects?prefix=dir/&max_keys=1").json()
    assert [o["key"] for o in first["objects"]] == ["dir/b.bin"]
    assert first["truncated"] is True and first["next_start_after"] == "dir/b.bin"
    second = call(
        base, "GET", "/api/buckets/browse/objects?prefix=dir/&max_keys=5&start_after=dir/b.bin"
    ).json()
    assert [o["key"] for o in second["objects"]] == ["dir/c.bin"]
    assert second["prefixes"] == ["dir/sub/"] and second["truncated"] is False
    flat = call(base, "GET", "/api/buckets/browse/objects?delimiter=").json()
    assert len(flat["objects"]) == 4 and flat["prefixes"] == []
    assert call(base, "GET", "/api/buckets/browse/objects?max_keys=0").status == 400
    assert call(base, "GET", "/api/buckets/nowhere/objects").status == 404

    download = call(base, "GET", "/api/buckets/browse/download?key=dir/b.bin")
    assert download.status == 200
    assert download.body == payload
    assert download.headers["Content-Length"] == str(len(payload))
    assert download.headers["Content-Disposition"].startswith('attachment; filename="b.bin"')
    assert download.headers["Content-Type"] == "binary/octet-stream" or download.headers[
        "Content-Type"
    ].endswith("octet-stream")
    assert call(base, "GET", "/api/buckets/browse/download?key=dir/b.bin", token=None).status == 401
    missing = call(base, "GET", "/api/buckets/browse/download?key=nope")
    assert missing.status == 404 and missing.json()["code"] == "NoSuchKey"
    assert call(base, "GET", "/api/buckets/browse/download").status == 400

    deleted = call(base, "DELETE", "/api/buckets/browse/object?key=dir/c.bin")
    assert deleted.status == 200
    assert "Contents" not in s3.list_objects_v2(Bucket="browse", Prefix="dir/c")


def test_balancer_decisions_and_history(daemon: DaemonProcess, s3: Any) -> None:
    base = daemon.endpoint
    s3.create_bucket(Bucket="decided")
    for index in range(4):
        s3.put_object(Bucket="decided", Key=f"k{index}", Body=b"x")
    balancer = call(base, "GET", "/api/balancer").json()
    assert balancer["strategy"] == "round-robin"
    assert set(BACKENDS) <= set(balancer["decisions"])
    assert sum(d["total"] for d in balancer["decisions"].values()) >= 4
    # Round robin: both backends were chosen.
    assert all(balancer["decisions"][name].get("round-robin", 0) >= 1 for name in BACKENDS)
    history = call(base, "GET", "/api/history").json()
    assert history["period"] == 10.0 and isinstance(history["samples"], list)


def test_config_yaml_round_trip_validation_and_apply(daemon: DaemonProcess) -> None:
    base = daemon.endpoint
    exported = call(base, "GET", "/api/config/yaml").json()
    text = exported["yaml"]
    assert "disk-secret-xyz" not in text and S3_SECRET not in text and TOKEN not in text
    assert "***" in text
    assert "server" in exported["restart_keys"]
    assert "balancer.health_check_period" in exported["restart_keys"]
    assert "balancer.strategy" not in exported["restart_keys"]

    # The exported text applied as it is changes nothing (masked secrets are kept).
    same = call(base, "POST", "/api/config/yaml", {"yaml": text})
    assert same.status == 200, same.body
    assert same.json()["changes"] == []

    broken = text.replace("strategy: round-robin", "strategy: fastest", 1)
    broken = broken.replace("retry_attempts: 3", "retry_attempts: -1", 1)
    lines = broken.splitlines()
    strategy_line = next(i for i, line in enumerate(lines, 1) if "strategy: fastest" in line)
    checked = call(base, "POST", "/api/config/validate", {"yaml": broken}).json()
    assert checked["valid"] is False
    by_key = {p["key"]: p for p in checked["problems"]}
    assert by_key["balancer.strategy"]["line"] == strategy_line
    assert "not one of" in by_key["balancer.strategy"]["message"]
    assert "out of range" in by_key["balancer.retry_attempts"]["message"]
    refused = call(base, "POST", "/api/config/yaml", {"yaml": broken})
    assert refused.status == 400
    assert {p["key"] for p in refused.json()["problems"]} == set(by_key)
    assert call(base, "GET", "/api/strategy").json()["strategy"] == "round-robin"

    syntax = call(base, "POST", "/api/config/validate", {"yaml": "balancer:\n  strategy: [x\n"})
    assert syntax.status == 400
    assert syntax.json()["problems"][0]["line"] == 3
    assert "not valid YAML" in syntax.json()["problems"][0]["message"]
    scalar = call(base, "POST", "/api/config/validate", {"yaml": "just text"})
    assert scalar.status == 400

    form = call(
        base,
        "POST",
        "/api/config/validate",
        {"config": {"buckets": [{"name": BACKENDS[1], "weight": -4}]}},
    ).json()
    assert form["valid"] is False
    assert form["problems"][0]["key"] == "buckets[1].weight"
    assert form["problems"][0]["line"] is None
    ok = call(base, "POST", "/api/config/validate", {"config": {"balancer": {"retry_attempts": 2}}})
    assert ok.json() == {"valid": True, "problems": []}
    assert call(base, "GET", "/api/config").json()["balancer"]["retry_attempts"] == 3

    changed = text.replace("retry_attempts: 3", "retry_attempts: 7", 1).replace(
        "idle_timeout: 1m", "idle_timeout: 2m", 1
    )
    applied = call(base, "POST", "/api/config/yaml", {"yaml": changed})
    assert applied.status == 200, applied.body
    assert any("needs a restart" in change for change in applied.json()["changes"])
    config = call(base, "GET", "/api/config").json()
    assert config["balancer"]["retry_attempts"] == 7
    assert config["server"]["idle_timeout"] == "1m"


def test_console_pages_and_their_headers(daemon: DaemonProcess) -> None:
    base = daemon.endpoint
    for path in ("/web", "/web/", "/web/dashboard", "/web/settings", "/web/buckets/photos"):
        page = call(base, "GET", path, token=None)
        assert page.status == 200, path
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["X-Frame-Options"] == "DENY"
        assert b'<script src="/web/static/app.js"' in page.body
        assert b"<script>" not in page.body  # no inline script
        assert TOKEN.encode() not in page.body
    script = call(base, "GET", "/web/static/app.js", token=None)
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "Authorization" in script.body.decode()
    assert call(base, "GET", "/web/static/style.css", token=None).status == 200
    assert call(base, "GET", "/web/static/missing.js", token=None).status == 404
    assert call(base, "GET", "/web/nothing", token=None).status == 404
    refused = call(base, "POST", "/web/dashboard", body={}, token=None)
    assert refused.status == 405 and refused.headers["X-Frame-Options"] == "DENY"
    assert call(base, "GET", "/web/static/../../etc/passwd", token=None).status == 404
    # A bucket whose name only starts with "web" is S3's, not the console's.
    s3_answer = call(base, "GET", "/website/", token=None)
    assert s3_answer.headers["Content-Type"] == "application/xml"
    assert b"<Error>" in s3_answer.body


def test_console_absent_without_the_admin_api(tmp_path: Path) -> None:
    config = {
        "buckets": [{"name": "only", "path": str(tmp_path / "only")}],
        "api": {"enabled": False},
    }
    with DaemonProcess(tmp_path, config) as process:
        answer = call(process.endpoint, "GET", "/web/dashboard", token=None)
        assert b"<Error>" in answer.body and b"app.js" not in answer.body


# -- units ------------------------------------------------------------------------------------


def test_history_keeps_rates_and_is_bounded() -> None:
    clock = Clock()
    readings = iter(
        [
            Totals(requests=0, bytes_in=0),
            Totals(requests=50, server_errors=10, bytes_in=1000),
            Totals(requests=50, server_errors=10, bytes_in=500),  # a series dropped
            Totals(requests=80, bytes_in=700),
        ]
    )
    history = TrafficHistory(clock, period=10.0, size=2, read=lambda: next(readings))
    history.startService()
    for _ in range(3):
        clock.advance(10)
    history.stopService()
    samples = history.samples()
    assert len(samples) == 2  # bounded: the first rate was pushed out
    assert samples[0]["requests_per_second"] == 0.0 and samples[0]["bytes_in_per_second"] == 0.0
    assert samples[1]["requests_per_second"] == 3.0
    assert samples[1]["bytes_in_per_second"] == 20.0
    assert samples[1]["time"] == 30.0


def test_problem_documents_find_the_key_and_its_line() -> None:
    text = "balancer:\n  strategy: x\nbuckets:\n  - name: a\n    weight: -1\n"
    data, lines = parse_yaml_text(text)
    assert data["balancer"]["strategy"] == "x"
    problems = problem_documents(
        [
            "balancer.strategy: 'x' is not one of round-robin",
            "buckets[0].weight: -1 is out of range",
            "buckets[0].operation_limits.type_a: 'q' is not a whole number",
            "buckets: no real bucket is configured",
        ],
        lines,
    )
    assert [(p["key"], p["line"]) for p in problems] == [
        ("balancer.strategy", 2),
        ("buckets[0].weight", 5),
        ("buckets[0].operation_limits.type_a", 4),  # the nearest parent that is in the text
        ("buckets", 3),
    ]
    assert problems[0]["message"] == "'x' is not one of round-robin"
    free = problem_documents(["something odd happened"])
    assert free == [
        {
            "key": None,
            "message": "something odd happened",
            "line": None,
            "text": "something odd happened",
        }
    ]
    assert "api" in restart_keys() and "s3api.allow_create_bucket" not in restart_keys()


def test_metrics_path_may_not_hide_the_console() -> None:
    from s3balance.configfile import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config(
            {"buckets": [{"name": "b", "path": "/tmp/b"}], "metrics": {"path": "/web/metrics"}}
        )
    assert "metrics.path: '/web/metrics' is inside the web console" in str(refused.value)
    parse_config({"buckets": [{"name": "b", "path": "/tmp/b"}], "metrics": {"path": "/webstats"}})


def test_every_console_asset_is_package_data() -> None:
    """The wheel carries what the console serves (pyproject's package-data globs cover it)."""
    import fnmatch
    import tomllib

    from s3balance.console import resource

    root = Path(resource.__file__).parent
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["s3balance.console"]
    shipped = sorted(p.relative_to(root).as_posix() for p in (root / "static").iterdir())
    assert shipped == sorted(["static/shell.html", *(f"static/{n}" for n in resource.ASSETS)])
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in globs), name
