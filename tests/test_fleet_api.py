"""The management API with a real HTTP client (httpx) against a real `edge-fleet serve --http`, its
embedded Mosquitto and three real `edge-agent serve` processes. Also the CLI through the API
(`edge-fleet --api URL --token T ...`) and the live event stream.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import exit_code
from .fleet_http_helpers import (FleetProcess, client, fleet_home, make_tokens, start_agent, wait_devices,
                                      wait_rollout)
from .ota_helpers import wait_for

IDS = ["pi-a", "pi-b", "pi-c"]
MAX_UPLOAD = 3_000_000


class Env:
    """One running fleet shared by this module's tests (starting agents is the slow part)."""

    def __init__(self, tmp: Path, digits, v1: Path, v2: Path) -> None:
        self.tmp, self.v1, self.v2, self.pub = tmp, v1, v2, digits.pub
        self.home = fleet_home(tmp, digits.pub)
        self.tokens = make_tokens(self.home, "viewer", "operator", "admin")
        self.fleet = FleetProcess(self.home, "--max-upload", str(MAX_UPLOAD))
        self.url = self.fleet.http
        self.agents = [start_agent(tmp, self.fleet.device_url(i), i, v1, digits.pub) for i in IDS]

    def api(self, role: str | None = "admin", **kw):
        return client(self.url, self.tokens[role] if role else None, **kw)

    def idle(self) -> None:
        """No active rollout and every device back on v1 (tests leave the fleet like that)."""
        with self.api() as api:
            wait_for(lambda: not api.get("/api/v1/rollouts", params={"status": ["pending", "running", "paused",
                                                                                 "halting"]}).json()["total"],
                     what="no active rollout")
            wait_devices(api, IDS, version=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory, digits, int8_bundle, int8_v2_bundle) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("api"), digits, int8_bundle, int8_v2_bundle)
    try:
        with e.api() as api:
            for b in (int8_bundle, int8_v2_bundle):
                r = api.post("/api/v1/bundles", params={"filename": b.name}, content=b.read_bytes())
                assert r.status_code == 201, r.text
            wait_devices(api, IDS, version=1)
        yield e
    finally:
        for a in e.agents:
            a.stop()
        e.fleet.stop()


def snapshot(e: Env) -> dict:
    """What a refused request must not change."""
    with e.api() as api:
        return {"bundles": api.get("/api/v1/bundles").json()["total"],
                "rollouts": api.get("/api/v1/rollouts").json()["total"],
                "groups": api.get("/api/v1/groups").json()["items"],
                "tokens": [t["name"] for t in api.get("/api/v1/tokens").json()["items"] if not t["revoked_at"]]}


def tampered(src: Path, out: Path) -> Path:
    data = bytearray(src.read_bytes())
    with tarfile.open(src) as tar:
        last = tar.getmembers()[-1]
    data[last.offset_data + last.size // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


WRITES = [  # (method, path, body, role needed)
    ("POST", "/api/v1/rollouts", {"bundle": "digits:2", "devices": ["pi-a"]}, "operator"),
    ("PUT", "/api/v1/devices/pi-a/group", {"group": "evil"}, "operator"),
    ("POST", "/api/v1/rollouts/r-x/halt", None, "operator"),
    ("POST", "/api/v1/bundles", b"not a bundle", "admin"),
    ("POST", "/api/v1/tokens", {"name": "sneaky", "role": "admin"}, "admin"),
    ("DELETE", "/api/v1/tokens/admin", None, "admin"),
]


def _send(api, method: str, path: str, body):
    if isinstance(body, bytes):
        return api.request(method, path, content=body)
    return api.request(method, path, json=body) if body is not None else api.request(method, path)


def test_no_anonymous_access_roles_enforced_and_nothing_changes(env):
    before = snapshot(env)
    for method, path, body, needed in WRITES:
        for who in (env.api(None), client(env.url, "efk_not-a-token"), client(env.url, headers={"Authorization": "Basic dXNlcjpwdw=="})):
            with who as api:
                r = _send(api, method, path, body)
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"] == "unauthenticated" and r.headers["www-authenticate"] == "Bearer"
        lower = ["viewer"] + (["operator"] if needed == "admin" else [])
        for role in lower:
            with env.api(role) as api:
                r = _send(api, method, path, body)
                assert r.status_code == 403, (role, method, path, r.text)
                assert r.json()["exit_code"] == exit_code("access-denied")
    for path in ("/api/v1/devices", "/api/v1/overview", "/api/v1/audit", "/api/v1/events", "/api/v1/bundles"):
        with env.api(None) as api:
            assert api.get(path).status_code == 401, path
    with env.api("operator") as api:
        assert api.get("/api/v1/audit").status_code == 403 and api.get("/api/v1/tokens").status_code == 403
    assert snapshot(env) == before
    with env.api() as api:
        denied = [e for e in api.get("/api/v1/audit", params={"limit": 500}).json()["items"]
                  if e["outcome"].startswith("denied")]
    assert {(e["actor"], e["action"]) for e in denied} >= {("viewer", "deploy"), ("viewer", "group"),
                                                           ("operator", "publish"), ("operator", "token-create")}
    # the console's files are public (they hold no data); every answer carries the strict CSP
    with env.api(None) as api:
        page = api.get("/")
        assert page.status_code == 200 and "js/app.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]


def test_an_anonymous_oversized_json_body_is_refused_before_it_is_read(env):
    """FastAPI parses a JSON body before it checks the token: an anonymous 300 MB POST made the server hold
    1.2 GB before its 401. Bodies over the API's JSON limit are refused unread (413), with or without a
    Content-Length; the bundle upload keeps its own --max-upload."""
    from edge_fleet.api.limits import MAX_JSON_BODY

    big = b'{"bundle": "' + b"a" * (MAX_JSON_BODY + 1) + b'"}'
    with env.api(None) as api:
        for content in (big, iter([big[:1000], big[1000:]])):  # the second is sent chunked, no Content-Length
            r = api.post("/api/v1/rollouts", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "too-large", r.text[:200]
            assert "script-src 'self'" in r.headers["content-security-policy"]
    with env.api("operator") as api:  # small bodies, sent either way, still reach the API
        for content in (b'{"bundle": "digits:9", "devices": ["pi-a"]}', iter([b'{"bundle": "digits:9", ',
                                                                              b'"devices": ["pi-a"]}'])):
            r = api.post("/api/v1/rollouts", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 404 and r.json()["error"] == "unknown-bundle", r.text


def test_upload_is_publish_with_its_checks_and_limits(env, tmp_path, capsys):
    with env.api() as api:
        bundles = {b["version"]: b for b in api.get("/api/v1/bundles").json()["items"]}
        detail = api.get(f"/api/v1/bundles/{bundles[1]['sha256']}").json()
        assert detail["precision"] == "int8-static" and detail["size"] == env.v1.stat().st_size
        assert detail["accuracy"]["checked"] is True and detail["host_latency"]
        assert detail["signer"]["key_id"] == bundles[1]["key_id"] and detail["signer"]["algorithm"]
        assert detail["manifest"]["name"] == "digits" and detail["files"]
        got = api.get(f"/api/v1/bundles/{bundles[1]['sha256']}/download")
        assert got.status_code == 200 and got.content == env.v1.read_bytes()
        before = snapshot(env)
        # the same file again: idempotent, like `edge-fleet publish`
        assert api.post("/api/v1/bundles", params={"filename": env.v1.name}, content=env.v1.read_bytes()).status_code == 201
        # tampered: refused with the CLI's own line and exit code
        bad = tampered(env.v1, tmp_path / "digits-int8.edgebundle")
        r = api.post("/api/v1/bundles", params={"filename": bad.name}, content=bad.read_bytes())
        capsys.readouterr()
        rc = fleet_main(["publish", str(bad), "--trust", str(env.pub), "--db", str(tmp_path / "cli.db")])
        cli_line = capsys.readouterr().err.strip().removeprefix("edge-fleet: error: ")
        assert r.status_code == 422 and r.json()["message"] == cli_line and r.json()["exit_code"] == rc == 14
        assert api.post("/api/v1/bundles", content=b"garbage" * 100).json()["error"] == "corrupt"
        # too large: by its declared length and by counting a body sent without one
        huge = b"\0" * (MAX_UPLOAD + 1)
        assert api.post("/api/v1/bundles", content=huge).status_code == 413
        r = api.post("/api/v1/bundles", content=iter([huge[:1_000_000]] * 4))
        assert r.status_code == 413 and r.json()["error"] == "too-large"
        assert api.post("/api/v1/bundles", content=b"").status_code == 422
        assert api.post("/api/v1/bundles", params={"filename": "../../etc/x"}, content=b"x").status_code == 422
        assert api.get("/api/v1/bundles/" + "0" * 64).status_code == 404
        assert api.get("/api/v1/bundles/not-a-sha/download").status_code == 404
    assert snapshot(env) == before
    assert not [p for p in (env.home / "bundles").iterdir() if p.name.startswith(".")]  # no upload left behind
    with env.api() as api:
        audit = api.get("/api/v1/audit", params={"action": "publish", "limit": 500}).json()["items"]
    assert ("admin", "digits:1", "ok") in {(e["actor"], e["target"], e["outcome"]) for e in audit}
    assert any(e["target"] == bad.name and e["outcome"] == f"refused: {cli_line}" for e in audit)


def test_bad_deploy_requests_are_refused_and_create_nothing(env):
    before = snapshot(env)
    with env.api("operator") as api:
        def refused(body, status, error):
            r = api.post("/api/v1/rollouts", **body)
            assert r.status_code == status and r.json()["error"] == error, r.text
            return r.json()
        refused({"content": b'{"bundle": "digits:2", "devices": ["pi-a"]', "headers": {"content-type": "application/json"}},
                422, "invalid-request")
        refused({"json": {"bundle": "digits:2", "devices": ["pi-a"], "stagez": "1"}}, 422, "invalid-request")
        refused({"json": {"bundle": "digits:2", "devices": "pi-a"}}, 422, "invalid-request")
        assert refused({"json": {"bundle": "digits:9", "devices": ["pi-a"]}}, 404, "unknown-bundle")["exit_code"] == 4
        assert refused({"json": {"bundle": "digits:2", "devices": ["nobody"]}}, 422, "no-targets")["exit_code"] == 5
        refused({"json": {"bundle": "digits:2", "devices": ["pi-a"], "group": "g"}}, 400, "error")
        refused({"json": {"bundle": "digits:2", "devices": ["pi-a"], "stages": "5,200"}}, 400, "error")
        refused({"json": {"bundle": "digits", "devices": ["pi-a"]}}, 400, "error")
        for version in ("99999999999999999999999", "\u00b2"):  # past SQLite's integers; a digit int() refuses
            refused({"json": {"bundle": f"digits:{version}", "devices": ["pi-a"]}}, 400, "error")
        for template in ("http://cdn/{nope}", "http://cdn/{", "http://cdn/{0}"):  # were 500s
            assert "{sha256}" in refused({"json": {"bundle": "digits:2", "devices": ["pi-a"], "source_url": template}},
                                         400, "error")["message"]
        assert api.post("/api/v1/rollouts/r-none/halt").json()["error"] == "not-found"
        assert api.get("/api/v1/devices/nobody").status_code == 404
        assert api.put("/api/v1/devices/bad%20id/group", json={"group": "x"}).status_code == 400
    assert snapshot(env) == before


def test_devices_filter_sort_paginate_and_show_history(env):
    with env.api("viewer") as api:
        wait_for(lambda: all(d["latency_p50_ms"] is not None for d in api.get("/api/v1/devices").json()["items"]),
                 what="telemetry from every agent")
        def ids(**params):
            return [d["id"] for d in api.get("/api/v1/devices", params=params).json()["items"]]
        assert ids() == IDS
        assert ids(profile="raspberry-pi-4", model="digits", version=1, presence="online") == IDS
        assert ids(profile="jetson-orin-nano") == [] and ids(version=7) == [] and ids(presence="offline") == []
        assert ids(latency_min=0) == IDS and ids(latency_min=1e6) == [] and ids(q="pi-b") == ["pi-b"]
        assert ids(sort="-id") == IDS[::-1]
        first = api.get("/api/v1/devices", params={"limit": 2}).json()
        second = api.get("/api/v1/devices", params={"limit": 2, "offset": 2}).json()
        assert (first["total"], len(first["items"]), [d["id"] for d in second["items"]]) == (3, 2, ["pi-c"])
        assert api.get("/api/v1/devices", params={"limit": 0}).status_code == 422
        assert api.get("/api/v1/devices", params={"sort": "password"}).status_code == 422
        d = api.get("/api/v1/devices/pi-a").json()
        assert d["history"] and d["history"][-1]["version"] == 1 and d["latency_series"]
        assert d["last_error"] is None and "rollouts" in d
    with env.api("operator") as api:
        assert api.put("/api/v1/devices/pi-c/group", json={"group": "yard"}).json()["group"] == "yard"
        assert api.get("/api/v1/devices", params={"group": "yard"}).json()["total"] == 1
        assert {"name": "yard", "devices": 1} in api.get("/api/v1/groups").json()["items"]
        assert api.put("/api/v1/devices/pi-c/group", json={"group": None}).json()["group"] is None


def test_rollout_progress_per_stage_then_roll_back_a_finished_one(env):
    env.idle()
    with env.api("operator") as api:
        for dev in ("pi-a", "pi-b"):
            api.put(f"/api/v1/devices/{dev}/group", json={"group": "lobby"})
        made = api.post("/api/v1/rollouts", json={"bundle": "digits:2", "group": "lobby", "stages": "50,100",
                                                  "stage_timeout": 120})
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        assert made.json()["created_by"] == "operator"
        r = wait_rollout(api, rid, ("succeeded", "halted"))
        assert r["status"] == "succeeded", r
        assert [(s["devices"], s["succeeded"], s["percent"]) for s in r["stage_progress"]] == [(1, 1, 100.0), (1, 1, 100.0)]
        assert r["progress"] == {"targets": 2, "succeeded": 2, "failed": 0, "skipped": 0, "percent": 100.0}
        history = api.get("/api/v1/devices/pi-a").json()["history"]
        assert {"downloading", "succeeded"} <= {e["phase"] for e in history if e["deployment_id"] == rid}
        assert rid in [x["rollout_id"] for x in api.get("/api/v1/devices/pi-a").json()["rollouts"]]
        assert api.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409  # not paused
        back = api.post(f"/api/v1/rollouts/{rid}/rollback")
        assert back.status_code == 200 and back.json()["status"] in ("halting", "halted")
        r = wait_rollout(api, rid, ("halted",))
        assert r["reason"] == "rolled back by operator"
        assert {d["status"] for d in r["devices"]} == {"rolled_back"}
        for dev in ("pi-a", "pi-b"):
            api.put(f"/api/v1/devices/{dev}/group", json={"group": None})
    env.idle()


def test_halt_pauses_resume_continues_rollback_undoes(env):
    env.idle()
    with env.api("operator") as api:
        rid = api.post("/api/v1/rollouts", json={"bundle": "digits:2", "devices": ["pi-c"], "stages": "100",
                                                 "stage_soak": 3600}).json()["id"]
        wait_for(lambda: api.get(f"/api/v1/rollouts/{rid}").json()["devices"][0]["status"] == "succeeded",
                 what="pi-c on v2")
        assert api.get(f"/api/v1/rollouts/{rid}").json()["status"] == "running"  # soaking
        halted = api.post(f"/api/v1/rollouts/{rid}/halt")
        assert halted.status_code == 200 and halted.json()["status"] == "paused"
        again = api.post(f"/api/v1/rollouts/{rid}/halt")
        assert again.status_code == 409 and again.json()["exit_code"] == exit_code("action-refused")
        assert api.post(f"/api/v1/rollouts/{rid}/resume").json()["status"] == "running"
        assert api.post(f"/api/v1/rollouts/{rid}/rollback").status_code == 200
        r = wait_rollout(api, rid, ("halted",))
        assert r["devices"][0]["status"] == "rolled_back"
    env.idle()
    with env.api() as api:
        audit = api.get("/api/v1/audit", params={"actor": "operator", "limit": 500}).json()["items"]
    assert [e["action"] for e in audit if e["target"] == rid and e["outcome"] == "ok"] == ["rollback", "resume", "halt"]
    assert any(e["action"] == "deploy" and e["outcome"] == "ok" for e in audit)


def test_cli_works_on_the_remote_fleet(env, tmp_path, capsys):
    env.idle()
    remote = ["--api", env.url, "--token", env.tokens["operator"]]
    capsys.readouterr()
    assert fleet_main([*remote, "status", "--json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)["devices"]] == IDS
    assert fleet_main(["deploy", "digits:2", "--devices", "pi-b", "--stages", "100", "--wait", "--wait-timeout", "120",
                       "--json", *remote]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["status"] == "succeeded" and r["created_by"] == "operator"
    assert fleet_main([*remote, "rollback", r["id"], "--json"]) == 0
    capsys.readouterr()
    env.idle()
    # refusals come back with the local CLI's exit codes and one line
    viewer = ["--api", env.url, "--token", env.tokens["viewer"]]
    assert fleet_main([*viewer, "deploy", "digits:2", "--devices", "pi-a"]) == exit_code("access-denied")
    assert fleet_main([*remote, "deploy", "digits:9", "--devices", "pi-a"]) == exit_code("unknown-bundle")
    assert fleet_main([*remote, "halt", "r-nope"]) == exit_code("not-found")
    assert capsys.readouterr().err.count("\n") == 3
    admin = ["--api", env.url, "--token", env.tokens["admin"]]
    bad = tampered(env.v1, tmp_path / "digits-int8.edgebundle")
    assert fleet_main([*admin, "publish", str(bad)]) == 14
    assert "differs from the signed manifest" in capsys.readouterr().err
    assert fleet_main([*admin, "publish", str(env.v2), "--json"]) == 0  # already there: idempotent
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert fleet_main(["--api", env.url, "--token", "efk_wrong", "bundles"]) == exit_code("access-denied")
    assert fleet_main(["--api", "http://127.0.0.1:9", "--token", "x", "bundles"]) == exit_code("api-failed")
    # the API's base URL as the docs show it (.../api/v1) was 'Not Found', exit 63; a missing token was exit 1
    assert fleet_main(["--api", env.url + "/api/v1/", "--token", env.tokens["viewer"], "bundles"]) == 0
    assert fleet_main(["--api", env.url, "bundles"]) == exit_code("access-denied")


def test_tokens_are_stored_hashed_and_revocation_is_immediate(env):
    with env.api() as api:
        made = api.post("/api/v1/tokens", json={"name": "ci", "role": "operator"})
        assert made.status_code == 201
        secret = made.json()["token"]
        assert api.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).status_code == 409
        assert api.post("/api/v1/tokens", json={"name": "x", "role": "root"}).status_code == 422
    with client(env.url, secret) as ci:
        assert ci.get("/api/v1/whoami").json() == {"name": "ci", "role": "operator"}
    db = b"".join(p.read_bytes() for p in env.home.glob("fleet.db*"))
    for s in [secret, *env.tokens.values()]:
        assert s.encode() not in db
    with env.api() as api:
        assert api.delete("/api/v1/tokens/ci").status_code == 200
        assert api.delete("/api/v1/tokens/ci").status_code == 404
    with client(env.url, secret) as ci:
        assert ci.get("/api/v1/whoami").status_code == 401
    with env.api() as api:  # rotation: the revoked name is free again; the old secret stays dead
        again = api.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"})
        assert again.status_code == 201, again.text
    with client(env.url, again.json()["token"]) as ci:
        assert ci.get("/api/v1/whoami").json() == {"name": "ci", "role": "viewer"}
    with client(env.url, secret) as ci:
        assert ci.get("/api/v1/whoami").status_code == 401


def test_event_stream_sends_the_overview_and_each_change(env):
    with env.api("viewer", timeout=30) as api, api.stream("GET", "/api/v1/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = []
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    with env.api("operator") as op:  # a change: the stream must send another event
                        op.put("/api/v1/devices/pi-a/group", json={"group": "sse"})
                        op.put("/api/v1/devices/pi-a/group", json={"group": None})
                else:
                    break
    assert events[0]["overview"]["counts"]["total"]["devices"] == 3
    assert events[1]["seq"] > events[0]["seq"]


def test_openapi_document_is_served(env):
    with env.api(None) as api:
        doc = api.get("/api/v1/openapi.json").json()
    assert {"/api/v1/devices", "/api/v1/bundles", "/api/v1/rollouts", "/api/v1/rollouts/{rollout_id}/{action}",
            "/api/v1/tokens", "/api/v1/audit", "/api/v1/events"} <= set(doc["paths"])


def test_the_readme_ci_step_publishes_and_deploys_with_curl(env):
    """scripts/ci_deploy.sh, the README's pipeline step, against the real fleet: curl and a token only."""
    import os
    import subprocess

    env.idle()
    with env.api("operator") as api:
        api.put("/api/v1/devices/pi-a/group", json={"group": "ci"})
    script = Path(__file__).resolve().parents[1] / "scripts" / "ci_deploy.sh"
    run_env = {**os.environ, "EDGE_FLEET_API": env.url, "EDGE_FLEET_TOKEN": env.tokens["admin"],
               "EDGE_FLEET_STAGES": "100", "EDGE_FLEET_POLL": "0.5"}
    done = subprocess.run(["bash", str(script), str(env.v2), "digits:2", "ci"], env=run_env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    rid = done.stdout.split()[1]
    assert done.stdout.strip().endswith(f"rollout {rid} succeeded")
    refused = subprocess.run(["bash", str(script), str(env.v2), "digits:9", "ci"], env=run_env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "digits:9 is not published" in refused.stdout + refused.stderr
    with env.api("operator") as api:
        api.post(f"/api/v1/rollouts/{rid}/rollback")
        api.put("/api/v1/devices/pi-a/group", json={"group": None})
    env.idle()


def _readme_ci_step() -> str:
    """The shell of the README's CI pipeline step (the `run: |` block of its YAML example)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("- name: Publish and deploy to the lobby cameras", 1)[1].split("```", 1)[0]
    lines = block.split("run: |\n", 1)[1].splitlines()
    return "\n".join(line[4:] for line in lines)


def test_the_readme_ci_yaml_step_runs_as_written(env, tmp_path):
    import os
    import subprocess

    env.idle()
    with env.api("operator") as api:
        api.put("/api/v1/devices/pi-b/group", json={"group": "lobby"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "digits-v2.edgebundle").symlink_to(env.v2)
    run_env = {**os.environ, "FLEET": env.url, "TOKEN": env.tokens["admin"]}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", _readme_ci_step().replace("sleep 5", "sleep 0.5")],
                          cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    with env.api("operator") as api:
        r = api.get("/api/v1/rollouts", params={"limit": 1}).json()["items"][0]
        assert (r["bundle"], r["status"], r["created_by"]) == ("digits:2", "succeeded", "admin")
        api.post(f"/api/v1/rollouts/{r['id']}/rollback")
        api.put("/api/v1/devices/pi-b/group", json={"group": None})
    env.idle()
