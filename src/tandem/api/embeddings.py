"""Embeddings: POST /v1/embeddings (OpenAI) and POST /api/embed, POST /api/embeddings (Ollama).

Each input is one request to the instance, whose runner answers it at once with the pooled,
possibly normalised final hidden states the checkpoint declares (`tandem.model.pooling`). A model
that is not an embedding model is a 400 that says so.
"""

from __future__ import annotations

import base64
import math
import struct
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tandem.api.errors import APIError
from tandem.api.serving import Serving, serving_of, without_default_tag
from tandem.protocol.runner import Embedding, GenerateRequest

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's own limit per request


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, texts, token ids, or lists of token ids"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) or base64: little-endian float32"
    )
    dimensions: int | None = Field(
        None, ge=1, description="the first N components, renormalised when the model normalises"
    )
    user: str | None = None


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="a text or texts")
    truncate: bool | None = Field(None, description="accepted; an input longer than the context is a 400")
    options: dict[str, Any] | None = Field(None, description="accepted and ignored")
    keep_alive: int | float | str | None = Field(None, description="accepted and ignored")
    dimensions: int | None = Field(None, ge=1, description="the first N components, renormalised")


class OllamaEmbeddingsRequest(BaseModel):
    """Ollama's older route: one prompt."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str


def embed_commands(inputs: str | list[str] | list[int] | list[list[int]]) -> list[GenerateRequest]:
    if isinstance(inputs, str):
        return [GenerateRequest(prompt=inputs, embed=True)]
    if not inputs:
        raise APIError(400, "input: give at least one input", param="input")
    if len(inputs) > MAX_INPUTS:
        raise APIError(400, f"input: at most {MAX_INPUTS} inputs per request", param="input")
    if all(isinstance(item, int) for item in inputs):
        return [GenerateRequest(prompt_ids=tuple(inputs), embed=True)]  # type: ignore[arg-type]
    commands = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            commands.append(GenerateRequest(prompt=item, embed=True))
        elif isinstance(item, list) and item:
            commands.append(GenerateRequest(prompt_ids=tuple(item), embed=True))
        else:
            raise APIError(400, f"input.{index}: an input must be a text or a non-empty list of token ids")
    return commands


async def embed_all(
    serving: Serving, model: str, commands: list[GenerateRequest], dimensions: int | None = None
) -> tuple[list[tuple[float, ...]], int]:
    """Every input's embedding, in order (shortened to `dimensions`), and the tokens they held."""
    vectors, tokens = [], 0
    for command in commands:
        try:
            generation = await serving.start(model, command)
        except APIError as error:
            if error.status == 400 and "not an embedding model" in error.message:
                raise APIError(400, f"model {model!r}: {error.message}", param="model") from None
            raise
        tokens += generation.prompt_tokens
        vectors.append(shortened(await generation.embedding(), dimensions))
    return vectors, tokens


def shortened(embedding: Embedding, dimensions: int | None) -> tuple[float, ...]:
    """The first `dimensions` components (Matryoshka-trained models such as Qwen3-Embedding keep
    their meaning in a prefix), renormalised when the model normalises."""
    vector = embedding.vector
    if dimensions is None or dimensions == len(vector):
        return vector
    if dimensions > len(vector):
        raise APIError(
            400,
            f"dimensions: the model embeds in {len(vector)} dimensions, not {dimensions}",
            param="dimensions",
        )
    prefix = vector[:dimensions]
    if not embedding.normalized:
        return prefix
    norm = math.sqrt(sum(x * x for x in prefix)) or 1.0
    return tuple(x / norm for x in prefix)


def encoded(vector: tuple[float, ...], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


@router.post("/v1/embeddings", tags=["OpenAI"], summary="Embeddings (OpenAI-compatible)")
async def embeddings(body: EmbeddingsRequest, request: Request) -> Any:
    commands = embed_commands(body.input)
    vectors, tokens = await embed_all(serving_of(request), body.model, commands, body.dimensions)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encoded(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post("/api/embed", tags=["Ollama"], summary="Embeddings (Ollama-compatible)")
async def ollama_embed(body: OllamaEmbedRequest, request: Request) -> Any:
    arrived = time.monotonic()
    commands = embed_commands(body.input if isinstance(body.input, str) else list(body.input))
    model = without_default_tag(body.model)
    vectors, tokens = await embed_all(serving_of(request), model, commands, body.dimensions)
    return {
        "model": body.model,
        "embeddings": [list(vector) for vector in vectors],
        "total_duration": int((time.monotonic() - arrived) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": tokens,
    }


@router.post("/api/embeddings", tags=["Ollama"], summary="One embedding (Ollama's older route)")
async def ollama_embeddings(body: OllamaEmbeddingsRequest, request: Request) -> Any:
    command = GenerateRequest(prompt=body.prompt, embed=True)
    vectors, _ = await embed_all(serving_of(request), without_default_tag(body.model), [command])
    return {"embedding": list(vectors[0])}
