"""What a request can get wrong (an HTTP status and one line) and the one error the server can exit with."""

from __future__ import annotations

from ..errors import AgentError


class HttpError(Exception):
    """A request that gets a 4xx/5xx answer with a one-line message; the server keeps serving."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message.splitlines()[0] if message else self.__class__.__name__)


class BadRequest(HttpError):
    status = 400


class Unauthorized(HttpError):
    status = 401


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    """The path exists but not for this method: the answer's Allow header lists the ones it takes."""

    status = 405

    def __init__(self, message: str, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow


class LengthRequired(HttpError):
    status = 411


class TooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    """A content coding the server cannot decode (RFC 9110 §15.5.16: 415, not a malformed request)."""

    status = 415


class NotSupported(HttpError):
    """A transfer coding the server does not implement (RFC 9112 §6.1: 501)."""

    status = 501


class Unavailable(HttpError):
    """No model yet, or the queue is full: the client should retry later (503)."""

    status = 503


class InferenceFailed(HttpError):
    """The runtime refused or failed on the request's tensors."""

    status = 500


class ServingPortError(AgentError, OSError):
    """The serving port cannot be bound (in use, no permission, bad host)."""

    code_name = "port"
    kind = "serving"
