"""The console shows drift per device and shadow figures per rollout stage: a real headless chromium,
a real `edge-fleet serve --http`, and real `edge-agent serve --source VIDEO` processes."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState, Topics, dumps

from .fleet_http_helpers import (FleetProcess, client, fleet_home, make_tokens, start_agent, upload_bundles, wait_devices,
                                 wait_rollout)
from .monitor_fixtures import digits_video, scene_change_video, white_digits_bundle  # noqa: F401 - fixtures
from .ota_helpers import wait_for
from .test_console_browser import _wait_hash, browser_page  # noqa: F401 - fixture

pytestmark = pytest.mark.browser
MONITOR = ["--drift-window", "100", "--probation", "0"]


def test_console_shows_drift_per_device_and_shadow_figures_per_stage(tmp_path, browser_page, digits, int8_bundle,
                                                                     white_digits_bundle, digits_video,
                                                                     scene_change_video):
    page = browser_page
    home = fleet_home(tmp_path, digits.pub)
    tokens = make_tokens(home, "admin")
    fleet = FleetProcess(home)
    agents = []
    try:
        with client(fleet.http, tokens["admin"]) as api:
            upload_bundles(api, *(int8_bundle, white_digits_bundle))
            agents.append(start_agent(tmp_path, fleet.device_url("cam-a"), "cam-a", int8_bundle, digits.pub,
                                      extra=["--source", str(digits_video), *MONITOR]))
            agents.append(start_agent(tmp_path, fleet.device_url("cam-b"), "cam-b", int8_bundle, digits.pub,
                                      extra=["--source", str(scene_change_video), *MONITOR]))
            wait_devices(api, ["cam-a", "cam-b"])
            page.goto(f"{fleet.http}/#token={tokens['admin']}")
            page.wait_for_selector("#live[data-state=live]")

            # drift per device: held-out digits are ok, the camera whose scene changed drifts
            page.click("nav a[data-page=devices]")
            page.locator("tr[data-device=cam-a] [data-test=drift]", has_text="ok").wait_for()
            page.locator("tr[data-device=cam-b] [data-test=drift]", has_text="drift").wait_for()
            title = page.get_attribute("tr[data-device=cam-b] [data-test=drift]", "title")
            assert "PSI" in title and "threshold 0.25" in title

            # a rollout with a shadow gate, started from the page: the white-background model disagrees
            page.click("nav a[data-page=rollouts]")
            form = page.locator("[data-test=deploy-form]")
            form.locator("select[name=bundle]").select_option("digits:3")
            fields = {"devices": "cam-a", "stages": "100", "min_shadow_agreement": "0.9", "shadow_frames": "60"}
            for name, value in fields.items():
                form.locator(f"input[name={name}]").fill(value)
            form.locator("button[type=submit]").click()
            _wait_hash(page, "#/rollouts/r-")
            rid = page.url.rsplit("/", 1)[1]
            page.locator("[data-test=rollout-status]", has_text="halted").wait_for()
            row = page.locator("[data-test=stage-shadow] tr[data-stage='1']")
            row.locator("td", has_text="1 failed").wait_for()
            assert "failed: agreement 0." in page.text_content("tr[data-device=cam-a]")
            r = wait_rollout(api, rid, ("halted",))
            assert r["shadow"]["min_agreement"] == 0.9 and r["stage_progress"][0]["shadow"]["verdicts"] == {"failed": 1}
            assert api.get("/api/v1/devices/cam-a").json()["version"] == 1
            page.screenshot(path=str(tmp_path / "rollout-shadow.png"), full_page=True)
    finally:
        page.goto("about:blank")
        for a in agents:
            a.stop()
        fleet.stop()


def _report(fleet: FleetProcess, device_id: str, state: ReportedState) -> None:
    """Publish a reported state as the device (a raw MQTT peer with the device's own login) would."""
    url = urlparse(fleet.device_url(device_id))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{device_id}")
    c.username_pw_set(unquote(url.username), unquote(url.password))
    c.connect(url.hostname, url.port)
    c.loop_start()
    c.publish(Topics().reported(device_id), dumps(state), qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_console_renders_a_device_whose_shadow_and_drift_figures_are_text_or_null(tmp_path, browser_page, digits,
                                                                                   int8_bundle):
    """A device's report is untrusted: `agreement` as text threw in `.toFixed` and left the device page and the
    rollout page blank. Such figures are shown as missing (`-`), the rest of the page as usual."""
    page = browser_page
    home = fleet_home(tmp_path, digits.pub)
    tokens = make_tokens(home, "admin")
    fleet = FleetProcess(home)
    old = BundleRef("digits", 1, "e" * 64)
    drift = {"state": "drift", "worst": "input.brightness", "psi": "1.93", "frames": None, "window": [200],
             "threshold": {"x": 1}, "model": "digits:1"}
    try:
        with client(fleet.http, tokens["admin"]) as api:
            upload_bundles(api, int8_bundle)
            _report(fleet, "cam-t", ReportedState(device_id="cam-t", profile="raspberry-pi-4", current=old,
                                                  phase="idle", agent_version="x", drift=drift))
            wait_for(lambda: api.get("/api/v1/devices/cam-t").status_code == 200, what="cam-t known")
            made = api.post("/api/v1/rollouts", json={"bundle": "digits:1", "devices": ["cam-t"], "stages": "100"})
            assert made.status_code == 201, made.text
            rid = made.json()["id"]
            wait_for(lambda: api.get(f"/api/v1/rollouts/{rid}").json()["devices"][0]["status"] == "sent",
                     what="desired state sent")
            shadow = {"deployment_id": rid, "verdict": "failed", "agreement": "0.125", "min_agreement": "high",
                      "frames": None, "active_p50_ms": "fast", "candidate_p50_ms": [1], "reason": "figures as text"}
            _report(fleet, "cam-t", ReportedState(device_id="cam-t", profile="raspberry-pi-4", current=old,
                                                  phase="failed", deployment_id=rid, last_error="shadow failed",
                                                  agent_version="x", drift=drift, shadow=shadow))
            r = wait_rollout(api, rid, ("halted",))
            assert r["devices"][0]["shadow"]["agreement"] == "0.125"  # kept as the device sent it
        page.goto(f"{fleet.http}/#token={tokens['admin']}")
        page.wait_for_selector("#live[data-state=live]")
        line = "failed: agreement - (min -) over - frames; p50 active -, new -; figures as text"
        page.goto(f"{fleet.http}/#/devices/cam-t")
        page.locator("dd", has_text=line).wait_for()
        assert page.text_content("[data-test=device-id]") == "cam-t"
        assert page.text_content("[data-test=drift-model]").strip() == "of digits:1"
        title = page.get_attribute("[data-test=drift]", "title")
        assert title == "digits:1: input.brightness: PSI - (threshold -, window -/-)", title
        page.goto(f"{fleet.http}/#/rollouts/{rid}")
        page.locator(f"tr[data-device=cam-t] td", has_text=line).wait_for()
        page.goto(f"{fleet.http}/#/devices")
        page.locator("tr[data-device=cam-t] [data-test=drift]", has_text="drift").wait_for()
    finally:
        page.goto("about:blank")
        fleet.stop()
