"""The web console in a real headless Chromium, against a real daemon with SeaweedFS backends.

One daemon process (twistd) serves the console for the whole module; the tests run in order, as
an operator would: sign in, look, change things, sign out.  Every page is saved as a screenshot
under ``test-artifacts/console/`` at the repository root.

The browser is Debian's (``/usr/bin/chromium`` with ``/usr/bin/chromedriver``), driven by
Selenium with an explicit driver path, so nothing is ever downloaded.  Each wait is explicit and
bounded.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test.support import unavailable
from test.support.process import REPO_ROOT, DaemonProcess
from test.support.seaweedfs import shared_seaweedfs

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    unavailable("Debian's chromium and chromium-driver are not installed")

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TOKEN = "console-admin-token-0123"
S3_KEY, S3_SECRET = "AKIDCONSOLE0001", "console-secret-0123456789"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
WAIT = 10.0
#: Bytes per second the daemon's jobs move: each 32 KiB object then takes two seconds.
JOB_RATE = 16 * 1024
#: A drain is done no sooner than 10 s after it began, then after its objects are moved.
DRAIN_WAIT = 60.0

#: Runs in every page before its own scripts: records CSP violations (none are expected).
RECORD_VIOLATIONS = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', function (e) {"
    "  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI); });"
)

#: Form controls a screen reader could not name: no label, no aria-label, no text.
UNLABELLED_CONTROLS = """
return Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter((e) => e.type !== 'hidden')
  .filter((e) => e.tagName === 'BUTTON'
    ? !(e.textContent.trim() || e.getAttribute('aria-label'))
    : !((e.labels && e.labels.length) || e.getAttribute('aria-label')))
  .map((e) => e.outerHTML.slice(0, 120));
"""


class Console:
    """The driver, the daemon and the few moves every test makes."""

    def __init__(self, driver: Any, daemon: DaemonProcess, names: list[str], downloads: Path):
        self.driver = driver
        self.daemon = daemon
        self.backends = names
        self.downloads = downloads
        self.visited_origins: set[str] = set()

    @property
    def base(self) -> str:
        return self.daemon.endpoint

    def wait(self, timeout: float = WAIT) -> WebDriverWait:
        return WebDriverWait(self.driver, timeout)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        return self.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css: str) -> None:
        """Click what ``css`` names, finding it again if a redraw replaced it meanwhile."""

        def attempt(driver: Any) -> bool:
            try:
                driver.find_element(By.CSS_SELECTOR, css).click()
            except (StaleElementReferenceException, NoSuchElementException):
                return False
            return True

        self.wait().until(attempt)

    def text_in(self, css: str, text: str) -> None:
        self.wait().until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def title_is(self, text: str) -> None:
        self.text_in("#page-title", text)

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.check_page_stays_home()
        self.check_every_control_is_labelled()
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def check_page_stays_home(self) -> None:
        """Every resource this page loaded came from the daemon, and nothing broke the CSP."""
        entries = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".concat([location.href]);"
        )
        for url in entries:
            assert url.startswith(self.base + "/") or url.startswith("blob:" + self.base), url
        violations = self.driver.execute_script("return window.__cspViolations || [];")
        assert violations == []

    def check_every_control_is_labelled(self) -> None:
        unlabelled = self.driver.execute_script(UNLABELLED_CONTROLS)
        assert unlabelled == []

    def api(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}/api/{path}",
            data=data,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def health_of(self, name: str) -> dict[str, Any]:
        return self.daemon.health()["backends"][name]

    def sign_in(self) -> None:
        self.open("/web/signin")
        field = self.find("#token")
        field.clear()
        field.send_keys(TOKEN)
        self.find("#signin-button").click()
        self.title_is("Dashboard")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    weed = shared_seaweedfs()
    suffix = uuid.uuid4().hex[:8]
    names = [f"console-a-{suffix}", f"console-b-{suffix}"]
    real = []
    for name in names:
        weed.create_bucket(name)
        real.append(
            {
                "name": name,
                "endpoint": weed.endpoint,
                "region": weed.region,
                "access_key_id": weed.access_key,
                "secret_access_key": weed.secret_key,
                "path_style": True,
                "use_ssl": False,
                "max_size": "1GiB",
            }
        )
    config = {
        "buckets": real + [{"name": "photos", "virtual": True}],
        # (the automatic rebalance stays off until a test turns it on: then it checks each second)
        "balancer": {
            "strategy": "round-robin",
            "health_check_period": "1s",
            "rebalance_interval": "1s",
        },
        "s3api": {"access_key": S3_KEY, "secret_key": S3_SECRET, "auth_required": True},
        "api": {"enabled": True, "token": TOKEN},
        # Slow enough that a drain or rebalance is still running when its buttons are clicked.
        "jobs": {"max_bytes_per_second": JOB_RATE},
    }
    workdir = tmp_path_factory.mktemp("console")
    downloads = workdir / "downloads"
    downloads.mkdir()
    daemon = DaemonProcess(workdir, config)
    daemon.start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS}
        )
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads)},
        )
        _put_objects(daemon)
        yield Console(driver, daemon, names, downloads)
    finally:
        driver.quit()
        daemon.stop()


def _s3(daemon: DaemonProcess) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=daemon.endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _put_objects(daemon: DaemonProcess) -> None:
    client = _s3(daemon)
    client.put_object(Bucket="photos", Key="hello.txt", Body=b"hello from the console test\n")
    client.put_object(Bucket="photos", Key="docs/readme.txt", Body=b"R" * 300_000)
    client.put_object(Bucket="photos", Key="docs/more/deep.txt", Body=b"deep")


def test_sign_in_refuses_a_wrong_token_then_accepts_the_right_one(console: Console) -> None:
    console.open("/web/dashboard")
    console.wait().until(ec.url_contains("/web/signin"))
    field = console.find("#token")
    assert field.get_attribute("type") == "password"
    label = console.driver.find_element(By.CSS_SELECTOR, "label[for=token]")
    assert label.text == "Admin token"
    field.send_keys("not-the-token")
    field.submit()
    console.text_in("#signin-message", "Wrong token")
    console.screenshot("signin-wrong-token")
    assert console.driver.execute_script("return sessionStorage.length") == 0
    field.clear()
    field.send_keys(TOKEN + Keys.ENTER)  # the keyboard alone signs in
    console.title_is("Dashboard")
    # The token is in this tab's session storage and in no cookie.
    stored = console.driver.execute_script("return sessionStorage.getItem('s3balance.token')")
    assert stored == TOKEN
    assert console.driver.get_cookies() == []
    assert TOKEN not in console.driver.page_source


def test_dashboard_shows_every_backend_and_its_state(console: Console) -> None:
    console.open("/web/dashboard")
    console.title_is("Dashboard")
    console.text_in("#overall-status", "healthy")
    # (located again at each look: the dashboard redraws itself every 10 s)
    for name in console.backends:
        console.text_in(f'tr[data-backend="{name}"]', "healthy")
        console.find(f'tr[data-backend="{name}"] meter[aria-label]')
    for chart in ("requests", "errors", "bytes-in", "bytes-out"):
        console.find(f"#chart-{chart} svg")
    console.screenshot("dashboard")
    # The keyboard reaches the skip link first, then the pages.
    body = console.driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = console.driver.switch_to.active_element
    assert focused.text == "Skip to content"
    for _ in range(2):
        focused.send_keys(Keys.TAB)
        focused = console.driver.switch_to.active_element
    assert focused.text == "Dashboard" and focused.get_attribute("aria-current") == "page"


def test_disable_and_enable_a_backend_changes_health(console: Console) -> None:
    name = console.backends[1]
    console.open("/web/backends")
    console.title_is("Backends")
    console.click(f"#toggle-{name}")
    console.wait().until(lambda _: not console.health_of(name)["enabled"])
    # The table is drawn again after each change: wait for the new one before the next move.
    console.text_in(f"#toggle-{name}", "Enable")
    console.text_in(f'tr[data-backend="{name}"]', "disabled")
    console.screenshot("backends-disabled")
    console.click(f"#toggle-{name}")
    console.wait().until(lambda _: console.health_of(name)["enabled"])
    console.text_in(f"#toggle-{name}", "Disable")
    console.text_in(f'tr[data-backend="{name}"]', "healthy")
    weight = console.find(f"#weight-{name}")
    weight.clear()
    weight.send_keys("3")
    console.click(f"#save-weight-{name}")
    console.wait().until(lambda _: console.api(f"buckets/{name}")["weight"] == 3)
    console.click("#probe-now")
    console.text_in("#toast", "Probed: all 2 enabled backends are healthy")
    console.screenshot("backends")


def test_switch_the_strategy(console: Console) -> None:
    console.open("/web/balancer")
    console.title_is("Balancer")
    Select(console.find("#strategy")).select_by_value("weighted")
    console.find("#strategy-form button[type=submit]").click()
    console.text_in("#current-strategy", "weighted")
    assert console.api("strategy")["strategy"] == "weighted"
    console.screenshot("balancer")


def test_buckets_list_create_and_delete(console: Console) -> None:
    console.open("/web/buckets")
    console.title_is("Buckets")
    row = console.find('tr[data-bucket="photos"]')
    assert "3" in row.text  # objects
    field = console.find("#new-bucket")
    field.send_keys("made-in-console")
    field.submit()
    console.find('tr[data-bucket="made-in-console"]')
    assert any(b["name"] == "made-in-console" for b in console.api("virtual-buckets")["buckets"])
    console.screenshot("buckets")
    console.click('tr[data-bucket="made-in-console"] button')
    console.wait().until(ec.alert_is_present()).accept()
    console.wait().until(
        ec.invisibility_of_element_located((By.CSS_SELECTOR, 'tr[data-bucket="made-in-console"]'))
    )
    assert all(b["name"] != "made-in-console" for b in console.api("virtual-buckets")["buckets"])


def test_browse_a_bucket_and_download_an_object(console: Console) -> None:
    console.open("/web/buckets")
    console.find('tr[data-bucket="photos"] a').click()
    console.title_is("Bucket photos")
    hello = console.find('tr[data-key="hello.txt"]')
    assert any(name in hello.text for name in console.backends)  # where it lives
    folder = console.driver.find_element(By.LINK_TEXT, "docs/")
    folder.click()
    readme = console.find('tr[data-key="docs/readme.txt"]')
    assert "more/" in console.find("tr.folder").text
    console.screenshot("bucket-browser")
    readme.find_element(By.CSS_SELECTOR, "button.download").click()
    target = console.downloads / "readme.txt"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not (
        target.exists() and target.stat().st_size == 300_000
    ):
        time.sleep(0.1)
    assert target.read_bytes() == b"R" * 300_000


def test_statistics_page(console: Console) -> None:
    console.open("/web/stats")
    console.title_is("Statistics")
    console.find("#chart-month svg")
    console.find("#chart-history svg")
    console.screenshot("statistics")


def test_change_a_setting_through_the_form(console: Console) -> None:
    console.open("/web/settings")
    console.title_is("Settings")
    field = console.find("#field-balancer-retry-attempts")
    field.clear()
    field.send_keys("5")
    console.find("#form-apply").click()
    console.find("#applied")
    assert console.api("config")["balancer"]["retry_attempts"] == 5
    assert "balancer.health_check_period" in console.find("#restart-keys").text
    # A bad value in the form: the problem is shown next to its field, nothing applied.
    field.clear()
    field.send_keys("-2")
    console.find("#form-apply").click()
    console.text_in("#field-balancer-retry-attempts-problem", "out of range")
    assert console.api("config")["balancer"]["retry_attempts"] == 5
    console.screenshot("settings-form")


def test_invalid_yaml_shows_the_problem_next_to_its_key(console: Console) -> None:
    console.open("/web/settings")
    console.title_is("Settings")
    editor = console.find("#yaml")
    text = editor.get_attribute("value")
    assert "***" in text  # secrets are masked
    assert "weighted" in text
    broken = text.replace("strategy: weighted", "strategy: fastest", 1)
    console.driver.execute_script("arguments[0].value = arguments[1];", editor, broken)
    console.find("#yaml-validate").click()
    problem = console.find('#yaml-problems p.problem[data-key="balancer.strategy"]')
    assert "not one of" in problem.text
    line = console.driver.find_element(By.CSS_SELECTOR, "#yaml-problems .ln.has-problem")
    assert "strategy: fastest" in line.text
    console.find("#yaml-apply").click()
    console.text_in("#yaml-message", "Refused")
    assert console.api("strategy")["strategy"] == "weighted"
    console.driver.execute_script("arguments[0].scrollIntoView();", console.find("#yaml-problems"))
    console.screenshot("settings-yaml-problem")
    # Export: the running configuration as a file, secrets masked.
    console.find("#yaml-export").click()
    exported = console.downloads / "s3balance.yaml"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not exported.exists():
        time.sleep(0.1)
    text = exported.read_text()
    assert "strategy: weighted" in text and "***" in text
    assert "seaweed-secret" not in text and TOKEN not in text


#: How many times this page asked the API for the jobs list.
JOBS_REQUESTS = (
    "return performance.getEntriesByType('resource')"
    ".filter((e) => new URL(e.name).pathname === '/api/jobs').length;"
)


def _job_state_shown(console: Console, job_id: int) -> str | None:
    """The state the Jobs page shows for job ``job_id`` (read in the page: it redraws itself)."""
    state: str | None = console.driver.execute_script(
        "const row = document.querySelector('tr[data-job=\"' + arguments[0] + '\"]');"
        "return row ? row.dataset.state : null;",
        job_id,
    )
    return state


def _wait_job_state(console: Console, job_id: int, states: set[str], timeout: float = WAIT) -> None:
    console.wait(timeout).until(lambda _: _job_state_shown(console, job_id) in states)


def _accept_confirmation(console: Console, says: str) -> None:
    dialog = console.wait().until(ec.alert_is_present())
    assert says in dialog.text, dialog.text
    dialog.accept()


def test_drain_a_backend_from_the_backends_page_until_removable(console: Console) -> None:
    name = console.backends[0]
    console.open("/web/backends")
    console.title_is("Backends")
    console.click(f"#drain-{name}")
    _accept_confirmation(console, "no new writes")
    console.find(f"#undrain-{name}")
    console.text_in(f'tr[data-backend="{name}"]', "draining")
    bucket = console.api(f"buckets/{name}")
    assert bucket["draining"] and bucket["drain_job"] is not None
    job_id = bucket["drain_job"]
    console.screenshot("backends-draining")

    console.open("/web/jobs")
    console.title_is("Jobs")
    row = console.find(f'tr[data-job="{job_id}"]')
    assert "drain" in row.text and name in row.text
    # The page follows the job by itself until it is done (at least 10 s after it began).
    _wait_job_state(console, job_id, {"done"}, DRAIN_WAIT)
    # Nothing queued or running any more: the page stops asking (it asks every 2 s otherwise).
    asked = console.driver.execute_script(JOBS_REQUESTS)
    time.sleep(5)
    assert console.driver.execute_script(JOBS_REQUESTS) == asked
    console.find(f'tr[data-job="{job_id}"] progress[aria-label]')
    assert console.find(f"#job-{job_id}-cancel").get_attribute("disabled") is not None
    console.screenshot("jobs-drain-done")

    bucket = console.api(f"buckets/{name}")
    assert bucket["removable"] and bucket["held_objects"] == 0
    console.open("/web/backends")
    console.text_in(f'tr[data-backend="{name}"] .drain-badge', "removable")
    console.text_in(f"#drain-state-{name} .removable", "can be removed")
    console.open("/web/dashboard")
    console.text_in(f'tr[data-backend="{name}"]', "removable")
    console.open("/web/backends")
    console.title_is("Backends")
    console.screenshot("backends-removable")
    console.click(f"#undrain-{name}")  # done: no confirmation, nothing is stopped
    console.find(f"#drain-{name}")
    assert not console.api(f"buckets/{name}")["draining"]


def test_pause_resume_and_cancel_a_job_from_the_jobs_page(console: Console) -> None:
    client = _s3(console.daemon)
    for i in range(20):
        client.put_object(Bucket="photos", Key=f"bulk/{i:02d}", Body=bytes([i]) * 32 * 1024)
    name = console.backends[1]  # holds everything since the first backend's drain
    job_id = console.api(f"buckets/{name}/drain", {})["job"]["id"]
    console.open("/web/jobs")
    console.title_is("Jobs")
    _wait_job_state(console, job_id, {"running"})
    console.screenshot("jobs-drain-running")

    console.click(f"#job-{job_id}-pause")
    _wait_job_state(console, job_id, {"paused"})
    assert console.api(f"jobs/{job_id}")["state"] == "paused"
    assert console.find(f"#job-{job_id}-pause").get_attribute("disabled") is not None
    console.click(f"#job-{job_id}-resume")
    _wait_job_state(console, job_id, {"queued", "running"})
    assert console.api(f"jobs/{job_id}")["state"] in {"queued", "running"}

    # Paused here, resumed elsewhere (another operator, the command line): the page still offers
    # Resume, and the API's refusal is what the operator reads.
    console.click(f"#job-{job_id}-pause")
    _wait_job_state(console, job_id, {"paused"})
    console.api(f"jobs/{job_id}/resume", {})
    console.click(f"#job-{job_id}-resume")
    console.text_in("#jobs-message", f"Resume job {job_id}: not done")
    assert "it cannot resume" in console.find("#jobs-message").text
    console.screenshot("jobs-refused")
    _wait_job_state(console, job_id, {"queued", "running"})

    console.click(f"#job-{job_id}-cancel")
    _accept_confirmation(console, "takes new writes again")
    _wait_job_state(console, job_id, {"cancelled"})
    assert console.api(f"jobs/{job_id}")["state"] == "cancelled"
    assert not console.api(f"buckets/{name}")["draining"]


def test_rebalance_dry_run_shows_a_plan_and_a_second_job_is_refused(console: Console) -> None:
    console.open("/web/jobs")
    console.title_is("Jobs")
    # Pack with threshold 0 moves every copy on the last backend that fits on the first: the
    # second backend still holds what its cancelled drain did not move, so there is a plan
    # (spread's depends on how far that drain got).
    Select(console.find("#rebalance-mode")).select_by_value("pack")
    threshold = console.find("#rebalance-threshold")
    threshold.clear()
    threshold.send_keys("0")
    console.click("#rebalance-dry-run")
    summary = console.find("#plan-summary")
    plan = console.api("rebalance", {"mode": "pack", "threshold": 0, "dry_run": True})["plan"]
    assert plan["moves"] > 0
    assert f"{plan['moves']} moves" in summary.text and "pack" in summary.text
    for backend in plan["backends"]:
        row = console.find(f'tr[data-plan-backend="{backend["name"]}"]')
        assert "→" in row.text
    last = next(b for b in plan["backends"] if b["name"] == console.backends[1])
    assert last["moves_out"] == plan["moves"]  # everything moves off the last backend
    assert f"0 / {plan['moves']}" in console.find(f'tr[data-plan-backend="{last["name"]}"]').text
    console.find("#plan-moves summary").click()
    console.find("#plan-moves table.moves tbody tr")
    assert console.api("jobs?state=running")["jobs"] == []  # a dry run moves nothing
    console.screenshot("jobs-rebalance-plan")

    console.click("#rebalance-start")
    _accept_confirmation(console, "egress")
    console.text_in("#rebalance-under-way", "Rebalance job")
    job = console.api("rebalance")["job"]
    assert job is not None and job["kind"] == "rebalance"
    console.find(f'tr[data-job="{job["id"]}"]')
    console.click("#rebalance-start")
    _accept_confirmation(console, "egress")
    console.text_in("#rebalance-message", f"rebalance job {job['id']} is")
    console.screenshot("jobs-rebalance-refused")
    console.click(f"#job-{job['id']}-cancel")
    _accept_confirmation(console, "stops between two objects")
    _wait_job_state(console, job["id"], {"cancelled"})
    assert console.api("rebalance")["job"] is None


def test_the_rebalance_panel_says_what_the_automatic_check_found(console: Console) -> None:
    console.api("config", {"balancer": {"rebalance": "pack", "rebalance_threshold": 0.0}})
    try:
        console.wait().until(lambda _: console.api("rebalance")["last_check"] is not None)
        check = console.api("rebalance")["last_check"]
        console.open("/web/jobs")
        console.title_is("Jobs")
        console.text_in("#rebalance-under-way", "Automatic rebalance: pack, threshold 0.")
        if check["started_job"] is not None:
            found = f"started job {check['started_job']}"
        elif check["under_way"] is not None:
            found = f"job {check['under_way']} was under way"
        else:
            found = f"nothing to move ({check['plan']['stopped']})"
        console.text_in("#rebalance-under-way", "Last automatic check 20")
        console.text_in("#rebalance-under-way", found)
    finally:
        console.api("config", {"balancer": {"rebalance": "off"}})
        time.sleep(2)  # a check under way when it was turned off ends within its round
        job = console.api("rebalance")["job"]
        if job is not None:
            console.api(f"jobs/{job['id']}/cancel", {})


def test_narrow_screen_has_no_sideways_scroll(console: Console) -> None:
    console.driver.set_window_size(390, 844)
    try:
        pages = (
            ("dashboard", "Dashboard"),
            ("backends", "Backends"),
            ("buckets", "Buckets"),
            ("buckets/photos", "Bucket photos"),
            ("balancer", "Balancer"),
            ("jobs", "Jobs"),
            ("stats", "Statistics"),
            ("settings", "Settings"),
        )
        for page, title in pages:
            console.open(f"/web/{page}")
            console.title_is(title)
            if page == "jobs":  # with the jobs table and a plan drawn
                console.find("tr[data-job]")
                console.click("#rebalance-dry-run")
                console.find("#plan-summary")
            width = console.driver.execute_script("return document.documentElement.scrollWidth;")
            viewport = console.driver.execute_script("return window.innerWidth;")
            assert width <= viewport, (page, width, viewport)
            console.screenshot(f"{page.replace('/', '-')}-390px")
    finally:
        console.driver.set_window_size(1280, 900)


def test_sign_out(console: Console) -> None:
    console.open("/web/dashboard")
    console.title_is("Dashboard")
    # By now the traffic history has a few samples: this is the README's picture.
    # (two samples are 20 s apart; the dashboard redraws every 10 s)
    console.wait(30).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#chart-requests polyline"))
    )
    console.screenshot("dashboard-with-traffic")
    console.find("#signout").click()
    console.text_in("#signin-note", "Signed out")
    assert console.driver.execute_script("return sessionStorage.getItem('s3balance.token')") is None
    console.open("/web/backends")
    try:
        console.wait(5).until(ec.url_contains("/web/signin"))
    except TimeoutException:  # pragma: no cover - the assertion below says what happened
        pass
    assert "/web/signin" in console.driver.current_url
