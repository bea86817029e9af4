"""The console shows drift per device and shadow figures per rollout stage: a real headless chromium,
a real `edge-fleet serve --http`, and real `edge-agent serve --source VIDEO` processes."""

from __future__ import annotations

import pytest

from .fleet_http_helpers import (FleetProcess, client, fleet_home, make_tokens, start_agent, upload_bundles, wait_devices,
                                 wait_rollout)
from .monitor_fixtures import digits_video, scene_change_video, white_digits_bundle  # noqa: F401 - fixtures
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
