"""Ollama-compatible generation: POST /api/chat and POST /api/generate, streamed as JSON lines
(Ollama's default) or answered whole with `stream: false`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from tandem.api.errors import APIError
from tandem.api.generation import Generation, GenerationFailed
from tandem.api.images_ollama import IMAGE_MODEL_REFUSAL, asks_for_an_image, ollama_generate_image
from tandem.api.ollama_schemas import (
    OllamaChatMessage,
    OllamaChatRequest,
    OllamaChatResponse,
    OllamaGenerateRequest,
    OllamaGenerateResponse,
    OllamaOptions,
)
from tandem.api.openai_tools import message_calls, tool_choice_of, tool_functions
from tandem.api.openapi import stream_response
from tandem.api.serving import serving_of, without_default_tag
from tandem.api.streaming import GenerationResponse, collect, json_line
from tandem.api.tool_output import Call, CallStream, read_calls
from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import ChatMessage, GenerateRequest

router = APIRouter(tags=["Ollama"])

# Ollama's documented defaults for what a request leaves out (its default repeat_penalty of 1.1
# is not copied: greedy decoding here stays the model's plain argmax).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
UNLIMITED_TOKENS = 2**31 - 1
NDJSON = "application/x-ndjson"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def sampling_params(options: OllamaOptions | None) -> SamplingParams:
    options = options or OllamaOptions.model_validate({})
    if options.num_predict == 0:
        raise APIError(400, "options.num_predict must be positive, or -1 for no limit")
    limit = options.num_predict
    stops = [options.stop] if isinstance(options.stop, str) else list(options.stop or [])
    return SamplingParams(
        max_tokens=UNLIMITED_TOKENS if limit is None or limit < 0 else min(limit, UNLIMITED_TOKENS),
        temperature=DEFAULT_TEMPERATURE if options.temperature is None else options.temperature,
        top_k=DEFAULT_TOP_K if options.top_k is None else options.top_k,
        top_p=DEFAULT_TOP_P if options.top_p is None else options.top_p,
        min_p=options.min_p or 0.0,
        seed=None if options.seed is None else options.seed % 2**63,
        stop=tuple(stop for stop in stops if stop),
        repetition_penalty=options.repeat_penalty or 1.0,
        presence_penalty=options.presence_penalty or 0.0,
        frequency_penalty=options.frequency_penalty or 0.0,
    )


def format_constraint(format_value: str | dict[str, Any] | None) -> OutputConstraint | None:
    """Ollama's `format`: "json" for any JSON object, or a JSON Schema."""
    if not format_value:
        return None
    if format_value == "json":
        return OutputConstraint.any_json()
    if isinstance(format_value, dict):
        try:
            return OutputConstraint.json_schema(format_value)
        except InvalidRequestError as error:
            raise APIError(400, f"format: {error}") from None
    raise APIError(400, "format: 'json' or a JSON Schema")


def refuse_unsupported(body: OllamaChatRequest | OllamaGenerateRequest) -> None:
    images = getattr(body, "images", None) or [
        image for message in getattr(body, "messages", []) for image in message.images or []
    ]
    if images:
        raise APIError(400, "images: this server serves text models only")
    if getattr(body, "suffix", None) or getattr(body, "template", None):
        raise APIError(400, "suffix and template are not supported")


def nanoseconds(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def final_stats(generation: Generation, model: str, arrived: float, reason: str) -> dict[str, Any]:
    """The last line's fields: why it stopped, token counts and durations."""
    now = time.monotonic()
    accepted = generation.accepted_at or generation.started_at
    first = generation.first_token_at or now
    return {
        "model": model,
        "created_at": now_iso(),
        "done": True,
        "done_reason": reason,
        "total_duration": nanoseconds(now - arrived),
        "load_duration": nanoseconds(generation.started_at - arrived),
        "prompt_eval_count": generation.prompt_tokens,
        "prompt_eval_duration": nanoseconds(first - accepted),
        "eval_count": generation.completion_tokens,
        "eval_duration": nanoseconds(now - first),
    }


def loaded(model: str, piece: dict[str, Any], arrived: float) -> dict[str, Any]:
    """The answer to a request with nothing to generate, which Ollama clients send to load a model."""
    return {
        "model": model,
        "created_at": now_iso(),
        **piece,
        "done": True,
        "done_reason": "load",
        "total_duration": nanoseconds(time.monotonic() - arrived),
    }


async def reply_lines(generation: Generation, model: str, arrived: float, piece: Any) -> AsyncIterator[bytes]:
    reason = "stop"
    held = CallStream(generation.tool_format)
    try:
        async for token in generation.tokens():
            text, calls = held.push(token.text), []
            if token.finish_reason is not None:
                rest, calls = held.finish()
                text += rest
                reason = token.finish_reason
            if text or calls:
                line = {"model": model, "created_at": now_iso(), **piece(text, calls), "done": False}
                yield json_line(line)
    except GenerationFailed as error:
        yield json_line({"error": str(error)})
        return
    yield json_line({**final_stats(generation, model, arrived, reason), **piece("")})


async def answer(
    request: Request, model: str, command: GenerateRequest | None, stream: bool | None, piece: Any
) -> Any:
    arrived = time.monotonic()
    serving = serving_of(request)
    name = without_default_tag(model)
    if command is None:
        await serving.instance_for(name)
        return loaded(model, piece(""), arrived)
    generation = await serving.start(name, command)
    if stream is not False:
        return GenerationResponse(reply_lines(generation, model, arrived, piece), generation, NDJSON)
    done = await collect(request, generation)
    text, calls = read_calls(generation.tool_format, done.text)
    return {**final_stats(generation, model, arrived, done.finish_reason), **piece(text, calls)}


def chat_piece(text: str, calls: list[Call] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"function": {"name": call.name, "arguments": json.loads(call.arguments)}} for call in calls
        ]
    return {"message": message}


def generate_piece(text: str, calls: list[Call] | None = None) -> dict[str, Any]:
    return {"response": text}


def chat_message(message: OllamaChatMessage, index: int) -> ChatMessage:
    calls = message_calls(message.tool_calls, f"messages.{index}")
    return ChatMessage(message.role, message.content, tool_calls=calls, name=message.tool_name)


def chat_request(body: OllamaChatRequest) -> GenerateRequest | None:
    if not body.messages:
        return None  # only load the model
    params = replace(sampling_params(body.options), constraint=format_constraint(body.format))
    tools = tool_functions(body.tools)
    choice, forced = tool_choice_of(body.tool_choice, tools)
    messages = tuple(chat_message(m, i) for i, m in enumerate(body.messages))
    return GenerateRequest(
        messages=messages, params=params, tools=tools, tool_choice=choice, forced_tool=forced
    )


@router.post(
    "/api/chat",
    summary="Chat (Ollama-compatible); JSON lines unless stream is false",
    response_model=OllamaChatResponse,
    response_model_exclude_unset=True,  # a message without calls has no `tool_calls`, as in Ollama
    responses=stream_response(OllamaChatResponse, NDJSON, "the reply, or JSON lines unless stream is false"),
)
async def chat(body: OllamaChatRequest, request: Request) -> Any:
    refuse_unsupported(body)
    return await answer(request, body.model, chat_request(body), body.stream, chat_piece)


@router.post(
    "/api/generate",
    summary="Generate from a prompt (Ollama-compatible); JSON lines unless stream is false",
    response_model=OllamaGenerateResponse,
    responses=stream_response(
        OllamaGenerateResponse, NDJSON, "the reply, or JSON lines unless stream is false"
    ),
)
async def generate(body: OllamaGenerateRequest, request: Request) -> Any:
    refuse_unsupported(body)
    if asks_for_an_image(body):
        return await ollama_generate_image(body, request)
    params = replace(sampling_params(body.options), constraint=format_constraint(body.format))
    command: GenerateRequest | None = None
    if body.prompt and body.raw:
        command = GenerateRequest(prompt=body.prompt, params=params)
    elif body.prompt:
        system = (ChatMessage("system", body.system),) if body.system else ()
        command = GenerateRequest(messages=(*system, ChatMessage("user", body.prompt)), params=params)
    try:
        return await answer(request, body.model, command, body.stream, generate_piece)
    except APIError as error:
        if command is None or IMAGE_MODEL_REFUSAL not in error.message:
            raise
    return await ollama_generate_image(body, request)  # an image model, asked without image fields
