"""RemoteFleet: the CLI through a fleet's management API (`edge-fleet --api URL --token T ...`).

Standard library only (urllib), so the CLI needs nothing new to talk to a remote fleet. An API
refusal comes back as {"error", "message", "exit_code"} and is raised as a FleetError with that
message and exit code: the remote CLI fails exactly like a local one would.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import ApiFailed, FleetError, FleetUsageError
from ..views import rollout_shadows
from .backend import Fleet, Json


class RemoteError(FleetError):
    """A refusal from the API, carrying the server's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class ApiClient:
    """JSON over HTTP(S) with a bearer token; `ca` verifies a self-signed server certificate."""

    def __init__(self, url: str, token: str | None, ca: Path | None = None, timeout: float = 60.0) -> None:
        try:
            host = urllib.parse.urlsplit(url).hostname if url.startswith(("http://", "https://")) else None
        except ValueError:  # http://[bad
            host = None
        if not host:
            raise FleetUsageError(f"--api must be an http:// or https:// URL with a host, got {url!r}")
        self.base = url.rstrip("/").removesuffix("/api/v1")  # the API's own base URL, as the docs print it, works too
        self.token = token
        self.timeout = timeout
        try:
            self.context = ssl.create_default_context(cafile=str(ca)) if ca else None
        except (OSError, ssl.SSLError) as exc:  # a bare "[Errno 2] No such file or directory", exit 1
            raise FleetUsageError(f"--api-ca {ca} is not a readable PEM CA certificate: "
                                  f"{getattr(exc, 'reason', None) or exc.strerror or exc}") from None

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
             data: bytes | None = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiFailed(f"fleet API {self.base} unreachable: {reason}") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:  # a proxy's or another server's page: "Expecting value: line 1 column 1", exit 1
            raise _not_the_api(self.base, path) from None

    def page(self, path: str, query: dict[str, Any]) -> Json:
        """One page of a list: {"items": [...], "total": N, ...}."""
        got = self.call("GET", path, query=query)
        if not (isinstance(got, dict) and isinstance(got.get("items"), list) and isinstance(got.get("total"), int)):
            raise _not_the_api(self.base, path)  # was KeyError: 'items', exit 1
        return got

    def pages(self, path: str, query: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paginated list."""
        items: list[Any] = []
        while True:
            got = self.page(path, {**(query or {}), "limit": 500, "offset": len(items)})
            items += got["items"]
            if not got["items"] or len(items) >= got["total"]:
                return items


def _not_the_api(base: str, path: str) -> ApiFailed:
    return ApiFailed(f"{base}{path} did not answer as the fleet API does (JSON): is --api the address "
                     "`edge-fleet serve --http` printed?")


def _refusal(exc: urllib.error.HTTPError) -> FleetError:
    try:
        err = json.loads(exc.read())
        return RemoteError(str(err["message"]), int(err["exit_code"]))
    except (ValueError, KeyError, TypeError):
        return ApiFailed(f"fleet API answered HTTP {exc.code} {exc.reason}")


class RemoteFleet(Fleet):
    """Each command as one or a few API calls."""

    def __init__(self, client: ApiClient) -> None:
        self.api = client

    def status(self, group: str | None) -> Json:
        devices = self.devices(group)
        active = self.api.pages("/api/v1/rollouts", {"status": ["pending", "running", "paused"]})
        newest = self.api.page("/api/v1/rollouts", {"limit": 1})["items"]
        return {"devices": devices, "active_rollouts": [r["id"] for r in reversed(active)],
                "rollout_shadows": rollout_shadows([*reversed(active), *newest])}

    def devices(self, group: str | None) -> list[Json]:
        return self.api.pages("/api/v1/devices", {"group": group} if group else None)

    def set_group(self, device_id: str, group: str | None) -> Json:
        return self.api.call("PUT", f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/group",
                             body={"group": group})

    def bundles(self) -> list[Json]:
        return self.api.pages("/api/v1/bundles")

    def publish(self, path: Path, trust: list[str] | None) -> Json:
        if trust:
            raise FleetUsageError("--trust is the server's: with --api the fleet verifies uploads with its own trusted keys")
        if not path.is_file():
            raise FleetUsageError(f"{path} does not exist or is not a file")
        # the API takes [A-Za-z0-9._-] names (they only label its messages): "digits v2.edgebundle" was refused
        shown = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-")[:128] or "upload.edgebundle"
        return self.api.call("POST", "/api/v1/bundles", query={"filename": shown}, data=path.read_bytes())

    def deploy(self, body: Json) -> Json:
        return self.api.call("POST", "/api/v1/rollouts", body={k: v for k, v in body.items() if v is not None})

    def rollout(self, rollout_id: str) -> Json:
        return self.api.call("GET", f"/api/v1/rollouts/{urllib.parse.quote(rollout_id, safe='')}")

    def rollouts(self) -> list[Json]:
        return list(reversed(self.api.pages("/api/v1/rollouts")))  # oldest first, like the local listing

    def act(self, rollout_id: str, action: str) -> Json:
        return self.api.call("POST", f"/api/v1/rollouts/{urllib.parse.quote(rollout_id, safe='')}/{action}")

    def create_token(self, name: str, role: str) -> Json:
        return self.api.call("POST", "/api/v1/tokens", body={"name": name, "role": role})

    def tokens(self) -> list[Json]:
        return self.api.pages("/api/v1/tokens")

    def revoke_token(self, name: str) -> Json:
        return self.api.call("DELETE", f"/api/v1/tokens/{urllib.parse.quote(name, safe='')}")

    def audit(self, limit: int) -> list[Json]:
        return self.api.page("/api/v1/audit", {"limit": min(limit, 500)})["items"]
