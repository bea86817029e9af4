"""The one interface of a protocol adapter: routes from (method, path) to a handler of a parsed request.

The HTTP server owns sockets, size limits, auth and metrics; an adapter only turns a request body into
InferenceService calls and the answer back into its protocol's body. Adding a protocol (e.g. OpenAI-style
or gRPC-gateway JSON) is one more module here and one line in `ADAPTERS`.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...finite_json import dumps_counted
from ..errors import BadRequest
from ..service import InferenceService


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # case-insensitive (http.client.HTTPMessage)
    body: bytes
    query: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def json(self, data: bytes | None = None) -> Any:
        try:
            return json.loads(self.body if data is None else data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        except RecursionError:  # '[' * 100000: the decoder's recursion limit, a 500 'internal error' before
            raise BadRequest("body is not valid JSON: nested too deeply") from None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, obj: Any, status: int = 200) -> "Response":
        body, headers = json_body(obj)
        return cls(status, body, headers=headers)


NON_FINITE = "Edgekit-Non-Finite"


def json_body(obj: Any) -> tuple[bytes, dict[str, str]]:
    """`obj` as strict JSON, and the headers saying how many NaN/inf values it carries as null.

    Bare NaN/Infinity (what json.dumps writes) made a model's non-finite output an unparsable answer for
    JavaScript's JSON.parse and every strict parser; null keeps the answer readable, and the header tells a
    client that looks which nulls were not numbers (docs/serving.md, "Non-finite outputs")."""
    text, count = dumps_counted(obj, separators=(",", ":"))
    return text.encode(), ({NON_FINITE: str(count)} if count else {})


Handler = Callable[[Request, "re.Match[str]"], Response]


class ProtocolAdapter(ABC):
    """One inference protocol's REST routes over an InferenceService."""

    name: str  # label in metrics: kserve_v2, tf_serving

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @abstractmethod
    def routes(self) -> list[tuple[str, "re.Pattern[str]", Handler]]:
        """(HTTP method, full-match path pattern, handler)."""

    def error_body(self, message: str) -> dict[str, Any]:
        """How this protocol words an error (both KServe v2 and TF Serving use {"error": ...})."""
        return {"error": message}


def route(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern)


def is_image(req: Request) -> bool:
    return req.content_type.startswith("image/")
