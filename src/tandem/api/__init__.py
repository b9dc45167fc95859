"""The node's public model APIs: OpenAI-, Anthropic- and Ollama-compatible routes over every
instance in the cluster, plus the model lists and placement previews.

`mount_api(app, cluster, ...)` adds them to the node's FastAPI app (see `tandem.node.app`); they
see the cluster only through `ClusterAccess` (`api/cluster.py`).
"""

from __future__ import annotations

from fastapi import FastAPI

from tandem.api import (
    anthropic,
    embeddings,
    images,
    metrics,
    models,
    ollama,
    ollama_models,
    ollama_pull,
    openai,
)
from tandem.api.anthropic_schemas import Message
from tandem.api.auth import ApiGate
from tandem.api.cluster import ClusterAccess
from tandem.api.cluster_schemas import GenerateEvent
from tandem.api.errors import install_error_handlers
from tandem.api.json_bodies import JsonBodies
from tandem.api.ollama_pull import OllamaPullStatus
from tandem.api.ollama_schemas import OllamaChatResponse, OllamaGenerateResponse
from tandem.api.openai_schemas import ChatCompletionChunk, TextCompletion
from tandem.api.openapi import install_openapi
from tandem.api.serving import Serving

STREAMED_SCHEMAS = [
    ChatCompletionChunk,
    TextCompletion,
    Message,
    OllamaChatResponse,
    OllamaGenerateResponse,
    OllamaPullStatus,
    GenerateEvent,
]


def mount_api(app: FastAPI, cluster: ClusterAccess, api_key: str | None, open_api: bool = False) -> None:
    """Add the API routes, the error formats, the caller and API key checks (`open_api`: other
    machines may call without a key), JSON bodies whatever their content type, and the OpenAPI
    additions."""
    app.state.serving = Serving(cluster)
    for module in (
        openai,
        anthropic,
        models,
        ollama,
        ollama_models,
        ollama_pull,
        embeddings,
        images,
        metrics,
    ):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(ApiGate, api_key=api_key, open_api=open_api)
    app.add_middleware(JsonBodies)
    install_openapi(app, STREAMED_SCHEMAS, api_key_required=api_key is not None)
