"""The OpenAPI document: streamed answers' schemas, and the API key when one is required.

FastAPI documents each route's JSON request and answer; routes that can also stream name their
stream's item schema here (a server-sent event's data, a JSON line), and this module adds those
schemas to the document's components so the references resolve.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tandem.api.errors import Family, family_of

REF_TEMPLATE = "#/components/schemas/{model}"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: str = "error"
    error: AnthropicErrorDetail


class PlainError(BaseModel):
    """Ollama's and Tandem's own error body."""

    error: str


ERROR_SCHEMAS = {
    Family.OPENAI: OpenAIError,
    Family.ANTHROPIC: AnthropicError,
    Family.OLLAMA: PlainError,
    Family.TANDEM: PlainError,
}


def stream_response(schema: type[BaseModel], media_type: str, description: str) -> dict[int | str, Any]:
    """A route's `responses=` entry for its streamed form (it answers JSON otherwise)."""
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"$ref": REF_TEMPLATE.format(model=schema.__name__)}}},
        }
    }


def install_openapi(app: FastAPI, streamed: list[type[BaseModel]], api_key_required: bool) -> None:
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = default_openapi()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        _, definitions = models_json_schema(
            [(model, "serialization") for model in [*streamed, *ERROR_SCHEMAS.values()]],
            ref_template=REF_TEMPLATE,
        )
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        document_errors(document)
        if api_key_required:
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "OpenAI and Ollama clients"},
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "Anthropic clients",
                },
            }
            document["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(document: dict[str, Any]) -> None:
    """Invalid requests get 400 (not FastAPI's 422) in each family's error format."""
    for path, operations in document.get("paths", {}).items():
        schema = ERROR_SCHEMAS[family_of(path)]
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = {
                "description": "the request was refused (400 invalid, 401 key, 404 model, 429 busy...)",
                "content": {
                    "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=schema.__name__)}}
                },
            }
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
