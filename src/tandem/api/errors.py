"""Errors in each API's own format, with the right status code.

Which format a reply uses depends on the route's family: OpenAI routes answer
`{"error": {"message", "type", "param", "code"}}`, Anthropic routes
`{"type": "error", "error": {"type", "message"}}`, Ollama routes and Tandem's own cluster routes
`{"error": "..."}`. The handlers installed here turn every error a request can cause (a failed
validation, an unknown route, a TandemError from the cluster, a bug) into that family's format.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.errors import InvalidRequestError, PeerUnreachable, TandemError, UnknownInstance

log = logging.getLogger("tandem.api")

TANDEM_PREFIXES = ("/v1/cluster", "/v1/instances", "/v1/placements")


class Family(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"
    TANDEM = "tandem"


class Kind(enum.StrEnum):
    """What went wrong, independent of any API's words for it."""

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


OPENAI_TYPES = {
    Kind.INVALID_REQUEST: "invalid_request_error",
    Kind.AUTHENTICATION: "invalid_request_error",  # what OpenAI itself answers for a bad key
    Kind.PERMISSION: "invalid_request_error",
    Kind.NOT_FOUND: "invalid_request_error",
    Kind.TOO_LARGE: "invalid_request_error",
    Kind.OVERLOADED: "rate_limit_error",
    Kind.UNAVAILABLE: "service_unavailable_error",
    Kind.INTERNAL: "server_error",
}
ANTHROPIC_TYPES = {
    Kind.INVALID_REQUEST: "invalid_request_error",
    Kind.AUTHENTICATION: "authentication_error",
    Kind.PERMISSION: "permission_error",
    Kind.NOT_FOUND: "not_found_error",
    Kind.TOO_LARGE: "request_too_large",
    Kind.OVERLOADED: "rate_limit_error",
    Kind.UNAVAILABLE: "api_error",
    Kind.INTERNAL: "api_error",
}
KIND_OF_STATUS = {
    400: Kind.INVALID_REQUEST,
    401: Kind.AUTHENTICATION,
    403: Kind.PERMISSION,
    404: Kind.NOT_FOUND,
    413: Kind.TOO_LARGE,
    429: Kind.OVERLOADED,
    503: Kind.UNAVAILABLE,
}


class APIError(Exception):
    """An error answer: status, a one-line message, and optionally OpenAI's `code` and `param`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = KIND_OF_STATUS.get(status, Kind.INTERNAL if status >= 500 else Kind.INVALID_REQUEST)
        self.code = code
        self.param = param
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed the connection before its answer was ready; nobody reads the reply."""


def family_of(path: str, headers: Any = None) -> Family:
    """The API family a path belongs to (GET /v1/models speaks Anthropic to Anthropic clients)."""
    if path.startswith("/api/") or path == "/api":
        return Family.OLLAMA
    if path.startswith("/v1/messages"):
        return Family.ANTHROPIC
    if path.startswith("/v1/models") and headers is not None and "anthropic-version" in headers:
        return Family.ANTHROPIC
    if path.startswith(TANDEM_PREFIXES) or not path.startswith("/v1/"):
        return Family.TANDEM
    return Family.OPENAI


def error_body(family: Family, error: APIError) -> dict[str, Any]:
    if family is Family.OPENAI:
        return {
            "error": {
                "message": error.message,
                "type": OPENAI_TYPES[error.kind],
                "param": error.param,
                "code": error.code,
            }
        }
    if family is Family.ANTHROPIC:
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES[error.kind], "message": error.message}}
    return {"error": error.message}


def error_response(family: Family, error: APIError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(error_body(family, error), status_code=error.status, headers=headers)


def from_tandem_error(error: TandemError) -> APIError:
    """The answer for an error raised by the cluster: unknown instances are 404, unreachable
    peers 503, and everything else the user's input caused 400."""
    if isinstance(error, UnknownInstance):
        return APIError(404, str(error), code="model_not_found")
    if isinstance(error, PeerUnreachable):
        return APIError(503, str(error))
    return APIError(400, str(error))


def context_code(message: str) -> str | None:
    """OpenAI's code for a prompt longer than the context (the engine's message names it)."""
    return "context_length_exceeded" if "context" in message else None


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line for the first problem pydantic found, and the field it concerns."""
    problems = error.errors()
    if not problems:
        return "invalid request", None
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or None
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON{': ' + str(detail) if detail else ''}", None
    message = str(first.get("msg", "invalid value"))
    if field is None:
        return f"the request body: {message}", None
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{field}: {message}{more}", field


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the format of the route's API family; replaces FastAPI's 422 with 400
    and the node's own handlers (which already answered `{"error": ...}` on cluster routes)."""

    def family(request: Request) -> Family:
        return family_of(request.url.path, request.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(family(request), error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        message, field = validation_message(error)
        return error_response(family(request), APIError(400, message, param=field))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(family(request), APIError(error.status_code, message))

    async def _tandem(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, TandemError)
        return error_response(family(request), from_tandem_error(error))

    for kind in (TandemError, InvalidRequestError, UnknownInstance, PeerUnreachable):
        app.add_exception_handler(kind, _tandem)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; no one receives it

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
        message = f"internal error: {type(error).__name__} (the node's log has the details)"
        return error_response(family(request), APIError(500, message))
