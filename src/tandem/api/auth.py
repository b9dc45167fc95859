"""Who may call (`tandem.api.exposure`), the optional API key, and a cap on request bodies,
checked before any route runs.

With a key set (`tandem node --api-key KEY` or TANDEM_API_KEY), every public API route (`/v1/*`,
`/api/*`, `/metrics`) needs it, as `Authorization: Bearer KEY` (OpenAI and Ollama clients) or `x-api-key: KEY`
(Anthropic clients); either header works on every route. `/internal/*` routes carry the cluster
secret's signatures instead, and the OpenAPI document and its pages stay open.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.api.errors import APIError, error_response, family_of
from tandem.api.exposure import Exposure, closed_page, is_dashboard, is_local

MAX_BODY_BYTES = 32 * 2**20  # far above any context window's worth of text


def needs_key(path: str) -> bool:
    return path.startswith(("/v1/", "/api/")) or path in ("/v1", "/api", "/metrics")


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a client sent: a bearer token, else `x-api-key`."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class ApiGate:
    """ASGI middleware: refuses callers the exposure does not admit (403; a browser gets a page
    that explains how to get in), requests without the API key (401) and bodies over the cap (413)."""

    def __init__(
        self, app: ASGIApp, api_key: str | None, open_api: bool = False, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.exposure = Exposure(api_key_set=api_key is not None, open_api=open_api)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        family = family_of(path, headers)
        client, server = scope.get("client"), scope.get("server")
        local = is_local(client[0] if client else None, server[0] if server else None)
        closed = self.exposure.refusal(path, local)
        if closed is not None:
            if is_dashboard(path):
                page = closed_page(closed, server[1] if server else "PORT")
                await HTMLResponse(page, status_code=403)(scope, receive, send)
            else:
                await error_response(family, APIError(403, closed, code="not_open_to_this_machine"))(
                    scope, receive, send
                )
            return
        refusal = self._refusal(path, headers)
        if refusal is not None:
            await error_response(family, refusal)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            # Bodies sent without Content-Length are counted as they arrive; the route's error
            # handlers turn the HTTPException into a 413 in the family's format.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large().message)
            return message

        await self.app(scope, counted_receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> APIError | None:
        if self.api_key is not None and needs_key(path):
            key = presented_key(headers)
            if key is None:
                return APIError(
                    401,
                    "this node requires an API key: send Authorization: Bearer KEY or x-api-key: KEY",
                    code="invalid_api_key",
                )
            if not hmac.compare_digest(key.encode(), self.api_key):
                return APIError(401, "the API key is not valid", code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_body_bytes // 2**20} MiB")
