"""Request bodies of the public APIs are JSON whatever their `Content-Type` says.

The Ollama docs' own example is `curl URL -d '{...}'`, which sends no JSON content type (curl says
`application/x-www-form-urlencoded`); many scripts send none at all. Every body route of the public
APIs takes JSON only, so this middleware labels such bodies `application/json` before FastAPI reads
them; a body that is not JSON still gets the family's clear 400.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

JSON = b"application/json"


def is_json_type(value: bytes) -> bool:
    media = value.split(b";", 1)[0].strip().lower()
    return media == JSON or media.endswith(b"+json")


def is_public_api(path: str) -> bool:
    return path.startswith(("/v1/", "/api/"))


def with_json_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers with any non-JSON content type replaced by `application/json`."""
    kept = [(key, value) for key, value in headers if key.lower() != b"content-type"]
    return [*kept, (b"content-type", JSON)]


class JsonBodies:
    """ASGI middleware: a body sent to a public API route (POST, PUT, PATCH, DELETE) is read as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
            and is_public_api(scope["path"])
        ):
            content_types = [value for key, value in scope["headers"] if key.lower() == b"content-type"]
            if not any(is_json_type(value) for value in content_types):
                scope = {**scope, "headers": with_json_type(scope["headers"])}
        await self.app(scope, receive, send)
