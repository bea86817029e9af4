"""The web console in a real headless browser: Debian's chromium driven by Playwright (no browser
download: executable_path=/usr/bin/chromium), against a real `edge-fleet serve --http`, its
embedded Mosquitto, and real `edge-agent serve` processes.

Marked `browser`: `pytest -m 'not browser'` skips these in a quick local loop; CI runs them.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState, Topics, dumps
from edge_fleet.registry import BundleRecord, open_registry
from .fleet_http_helpers import (FleetProcess, client, fleet_home, make_tokens, start_agent, upload_bundles,
                                      wait_devices, wait_rollout)
from .ota_helpers import wait_for

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the flags /work/shared/README.md ("Web") gives for Debian's chromium in this sandbox
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000


@pytest.fixture
def browser_page(tmp_path, request) -> Iterator:
    """A fresh chromium profile and one page; fails the test on any JS error or CSP violation.
    Parametrized indirectly with True, the page ignores the server's Content-Security-Policy."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run scripts/ensure_chromium.sh (apt-get install chromium)")
    errors: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS, viewport={"width": 1280, "height": 900},
                                                        bypass_csp=getattr(request, "param", False))
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
        page.errors = errors
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            context.close()
    # a 401/404 the test provoked on purpose shows as a console error for the failed fetch; nothing else may
    assert [e for e in errors if "status of 4" not in e] == []


def _wait_hash(page, prefix: str) -> None:
    # (not page.wait_for_function: its polling evaluates strings, which the console's CSP forbids)
    wait_for(lambda: page.evaluate("location.hash").startswith(prefix), what=f"page {prefix}...")


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def test_console_sees_devices_live_drives_a_rollout_to_100_and_halts_another(
        tmp_path, browser_page, digits, int8_bundle, int8_v2_bundle):
    page = browser_page
    home = fleet_home(tmp_path, digits.pub)
    tokens = make_tokens(home, "admin")
    fleet = FleetProcess(home)
    agents = []
    try:
        with client(fleet.http, tokens["admin"]) as api:
            upload_bundles(api, *(int8_bundle, int8_v2_bundle))
            page.goto(f"{fleet.http}/#token={tokens['admin']}")
            page.wait_for_selector("#live[data-state=live]")
            assert page.text_content("[data-test=device-total]") == "0"
            assert "token=" not in page.url  # the token left the address bar

            # an agent starts: the overview shows it without a reload
            agents.append(start_agent(tmp_path, fleet.device_url("pi-a"), "pi-a", int8_bundle, digits.pub))
            page.locator("[data-test=recent-devices] a", has_text="pi-a").wait_for()
            page.locator("[data-test=device-total]", has_text=re.compile(r"^1$")).wait_for()
            _shot(page, tmp_path, "overview")

            # start a rollout from the page and watch it reach 100 %
            page.click("nav a[data-page=rollouts]")
            form = page.locator("[data-test=deploy-form]")
            form.locator("select[name=bundle]").select_option("digits:2")
            form.locator("input[name=devices]").fill("pi-a")
            form.locator("input[name=stages]").fill("100")
            form.locator("button[type=submit]").click()
            _wait_hash(page, "#/rollouts/r-")
            page.locator("[data-test=rollout-status]", has_text="succeeded").wait_for()
            assert page.text_content(".overall [data-test=rollout-percent]") == "100 %"
            first = page.url.rsplit("/", 1)[1]
            _shot(page, tmp_path, "rollout-succeeded")

            # a second rollout that waits (stage soak): halt it from its page, resume, then roll it back
            agents.append(start_agent(tmp_path, fleet.device_url("pi-b"), "pi-b", int8_bundle, digits.pub))
            wait_devices(api, ["pi-b"])
            page.click("nav a[data-page=rollouts]")
            form = page.locator("[data-test=deploy-form]")
            form.locator("select[name=bundle]").select_option("digits:2")
            form.locator("input[name=devices]").fill("pi-b")
            form.locator("input[name=stages]").fill("100")
            form.locator("input[name=stage_soak]").fill("3600")
            form.locator("button[type=submit]").click()
            _wait_hash(page, "#/rollouts/r-")
            second = page.url.rsplit("/", 1)[1]
            assert second != first
            page.locator("tr[data-device=pi-b] .badge", has_text="succeeded").wait_for()
            assert page.text_content("[data-test=rollout-status]") == "running"  # soaking, not finished
            page.click("button[data-action=halt]")
            page.locator("[data-test=rollout-status]", has_text="paused").wait_for()
            assert api.get(f"/api/v1/rollouts/{second}").json()["status"] == "paused"
            _shot(page, tmp_path, "rollout-halted")
            page.click("button[data-action=resume]")
            page.locator("[data-test=rollout-status]", has_text="running").wait_for()
            page.once("dialog", lambda d: d.accept())
            page.click("button[data-action=rollback]")
            page.locator("[data-test=rollout-status]", has_text="halted").wait_for()
            page.locator("tr[data-device=pi-b] .badge", has_text="rolled_back").wait_for()
            r = wait_rollout(api, second, ("halted",))
            assert r["devices"][0]["status"] == "rolled_back"
            assert api.get("/api/v1/devices/pi-b").json()["version"] == 1  # the device really went back
            assert api.get(f"/api/v1/rollouts/{first}").json()["status"] == "succeeded"

            # the device page: update history and the latency plot
            page.goto(f"{fleet.http}/#/devices/pi-a")
            page.locator("[data-test=history] td", has_text="succeeded").first.wait_for()
            page.wait_for_selector("svg.plot path.line.p50")
            _shot(page, tmp_path, "device")

            audit = api.get("/api/v1/audit", params={"limit": 100}).json()["items"]
            assert {(e["actor"], e["action"], e["outcome"]) for e in audit} >= {
                ("admin", "deploy", "ok"), ("admin", "halt", "ok"), ("admin", "resume", "ok"), ("admin", "rollback", "ok")}
    finally:
        page.goto("about:blank")
        for a in agents:
            a.stop()
        fleet.stop()


HTML_ID = '<img src=x onerror="window.__xss=1">'
HTML_GROUP = "<script>window.__xss=2</script>"
HTML_NAME = '<img src=x onerror="window.__xss=3">'
HTML_ERROR = '<svg onload="window.__xss=4"></svg><b>bold?</b>'


def _report_with_html_error(fleet: FleetProcess, device_id: str, sha: str) -> None:
    """A device (a raw MQTT peer with its own login) whose reported error text is HTML."""
    url = urlparse(fleet.device_url(device_id))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="html-device")
    c.username_pw_set(unquote(url.username), unquote(url.password))
    c.connect(url.hostname, url.port)
    c.loop_start()
    state = ReportedState(device_id=device_id, profile="raspberry-pi-4", current=BundleRef("digits", 1, sha),
                          phase="failed", last_error=HTML_ERROR, agent_version="x")
    c.publish(Topics().reported(device_id), dumps(state), qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def _xss_fired(page) -> bool:
    return page.evaluate("window.__xss !== undefined || document.querySelector('img[src=\"x\"], script:not([src])') !== null")


# Without the CSP (True) the escaping alone must hold; with it (False) the page must work under it too.
@pytest.mark.parametrize("browser_page", [True, False], indirect=True, ids=["escaping-alone", "with-csp"])
def test_console_shows_html_in_ids_names_and_errors_as_text_and_never_runs_it(tmp_path, browser_page):
    page = browser_page
    home = fleet_home(tmp_path, Path(__file__))  # no uploads here; any file stands in for the key
    tokens = make_tokens(home, "admin")
    fleet = FleetProcess(home)
    try:
        sha = "f" * 64
        with open_registry(home / "fleet.db", store_dir=home / "bundles") as reg:
            # rows an older tool or a hand-edited database could hold: the console must not trust them
            reg.set_group(HTML_ID, HTML_GROUP)
            reg.add_bundle(BundleRecord(sha, HTML_NAME, 1, "raspberry-pi-4", 10, {"precision": HTML_NAME}, {},
                                        HTML_NAME, home / "bundles" / "missing", time.time()))
        _report_with_html_error(fleet, "cam-1", sha)
        with client(fleet.http, tokens["admin"]) as api:
            wait_for(lambda: api.get("/api/v1/devices/cam-1").status_code == 200, what="cam-1 known")
            made = api.post("/api/v1/rollouts", json={"bundle": f"{HTML_NAME}:1", "devices": [HTML_ID, "cam-1"],
                                                      "stages": "100"})
            assert made.status_code == 201, made.text
            rid = made.json()["id"]
        page.goto(f"{fleet.http}/#token={tokens['admin']}")
        page.wait_for_selector("#live[data-state=live]")
        pages = [("#/devices", HTML_ID), ("#/devices", HTML_ERROR), ("#/rollouts", f"{HTML_NAME}:1"),
                 (f"#/rollouts/{rid}", HTML_ID), ("#/bundles", f"{HTML_NAME}:1"), (f"#/bundles/{sha}", HTML_NAME),
                 ("#/devices/cam-1", HTML_ERROR), ("#/", "cam-1")]
        for hash_, literal in pages:
            page.goto(f"{fleet.http}/{hash_}")
            page.get_by_text(literal, exact=False).filter(visible=True).first.wait_for()
            assert not _xss_fired(page), hash_
        page.goto(f"{fleet.http}/#/devices")
        page.locator("[data-test=device-table] a", has_text=HTML_ID).click()
        page.locator("[data-test=device-id]").wait_for()
        assert page.text_content("[data-test=device-id]") == HTML_ID
        assert page.locator("dd", has_text=HTML_GROUP).count() == 1
        assert not _xss_fired(page)
        _shot(page, tmp_path, "escaped")
    finally:
        page.goto("about:blank")  # close the live stream before the server goes away
        fleet.stop()
