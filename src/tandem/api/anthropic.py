"""Anthropic-compatible route: POST /v1/messages, answered whole or streamed as Anthropic's
server-sent events (message_start, content_block_start, ping, content_block_delta...,
content_block_stop, message_delta with the usage, message_stop)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from tandem.api.anthropic_schemas import MAX_STOP_SEQUENCES, Message, MessagesRequest
from tandem.api.anthropic_tools import conversation, tool_choice_of, tool_functions, tool_use_block
from tandem.api.errors import APIError
from tandem.api.generation import Generation, GenerationFailed
from tandem.api.openapi import stream_response
from tandem.api.serving import serving_of
from tandem.api.streaming import GenerationResponse, collect, sse
from tandem.api.tool_output import CallStream, read_calls
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import GenerateRequest

router = APIRouter(tags=["Anthropic"])


def sampling_params(body: MessagesRequest) -> SamplingParams:
    if body.thinking and body.thinking.get("type", "disabled") != "disabled":
        raise APIError(400, "thinking: extended thinking is not supported")
    stops = [stop for stop in body.stop_sequences or [] if stop]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"stop_sequences: at most {MAX_STOP_SEQUENCES}")
    return SamplingParams(
        max_tokens=body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        stop=tuple(stops),
    )


def generate_request(body: MessagesRequest) -> GenerateRequest:
    tools = tool_functions(body)
    choice, forced = tool_choice_of(body, tools)
    return GenerateRequest(
        messages=conversation(body),
        params=sampling_params(body),
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
    )


def stop_reason(finish_reason: str, stop_sequence: str | None, calls: bool = False) -> str:
    if calls:
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


@router.post(
    "/v1/messages",
    summary="Create a message (Anthropic-compatible)",
    response_model=Message,
    responses=stream_response(
        Message, "text/event-stream", "the message, or with stream: Anthropic's events"
    ),
)
async def messages(body: MessagesRequest, request: Request) -> Any:
    command = generate_request(body)
    generation = await serving_of(request).start(body.model, command)
    message_id = f"msg_{secrets.token_hex(12)}"
    if body.stream:
        return GenerationResponse(
            message_events(generation, message_id, body.model), generation, "text/event-stream"
        )
    done = await collect(request, generation)
    text, calls = read_calls(generation.tool_format, done.text, prefix="toolu_")
    content = [{"type": "text", "text": text}] if text or not calls else []
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": content + [tool_use_block(call) for call in calls],
        "stop_reason": stop_reason(done.finish_reason, done.stop_sequence, bool(calls)),
        "stop_sequence": done.stop_sequence,
        "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": done.completion_tokens},
    }


async def message_events(generation: Generation, message_id: str, model: str) -> AsyncIterator[bytes]:
    def event(kind: str, **data: Any) -> bytes:
        return sse({"type": kind, **data}, event=kind)

    yield event(
        "message_start",
        message={
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": 0},
        },
    )
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield event("ping")
    reason, stop_sequence, calls = "end_turn", None, []
    held = CallStream(generation.tool_format, prefix="toolu_")
    try:
        async for token in generation.tokens():
            text = held.push(token.text)
            if token.finish_reason is not None:
                rest, calls = held.finish()
                text += rest
                stop_sequence = token.stop_sequence
                reason = stop_reason(token.finish_reason, stop_sequence, bool(calls))
            if text:
                yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
    except GenerationFailed as error:
        yield event("error", error={"type": "api_error", "message": str(error)})
        return
    yield event("content_block_stop", index=0)
    for index, call in enumerate(calls, start=1):
        yield event("content_block_start", index=index, content_block={**tool_use_block(call), "input": {}})
        delta = {"type": "input_json_delta", "partial_json": call.arguments}
        yield event("content_block_delta", index=index, delta=delta)
        yield event("content_block_stop", index=index)
    yield event(
        "message_delta",
        delta={"stop_reason": reason, "stop_sequence": stop_sequence},
        usage={"output_tokens": generation.completion_tokens},
    )
    yield event("message_stop")
