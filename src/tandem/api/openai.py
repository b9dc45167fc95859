"""OpenAI-compatible routes: POST /v1/chat/completions and POST /v1/completions, streamed as
server-sent events (`data: {chunk}` lines, then `data: [DONE]`) or answered whole."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request

from tandem.api.errors import APIError
from tandem.api.generation import Completion, Generation, GenerationFailed
from tandem.api.openai_schemas import (
    MAX_STOP_STRINGS,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
    TextCompletion,
)
from tandem.api.openai_tools import (
    call_deltas,
    calls_value,
    message_calls,
    response_constraint,
    tool_choice_of,
    tool_functions,
)
from tandem.api.openapi import stream_response
from tandem.api.serving import serving_of
from tandem.api.streaming import GenerationResponse, collect, sse
from tandem.api.tool_output import CallStream, read_calls
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import ChatMessage as PromptMessage
from tandem.protocol.runner import GenerateRequest, Token

router = APIRouter(tags=["OpenAI"])

SSE = "text/event-stream"
UNLIMITED_TOKENS = 2**31 - 1  # the engine stops at the end of the context anyway
LOWEST_LOGPROB = -9999.0  # what OpenAI reports for impossible tokens; JSON has no -Infinity


def sampling_params(body: SamplingFields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """The engine's sampling settings for an OpenAI request; 400 for what it cannot honour."""
    if body.n not in (None, 1):
        raise APIError(400, "n: only n=1 is supported", param="n")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    stops = [stop for stop in stops if stop]
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return SamplingParams(
        max_tokens=min(max_tokens or UNLIMITED_TOKENS, UNLIMITED_TOKENS),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(body.top_k or 0, 0),
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=None if body.seed is None else body.seed % 2**63,
        stop=tuple(stops),
        ignore_eos=bool(body.ignore_eos),
        logprobs=logprobs,
    )


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"messages.{index}.content: only text parts are supported, not {part.type!r}",
                param=f"messages.{index}.content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def chat_messages(messages: list[ChatMessage]) -> tuple[PromptMessage, ...]:
    # Chat templates know "system"; OpenAI's newer "developer" role means the same.
    return tuple(
        PromptMessage(
            "system" if m.role == "developer" else m.role,
            message_text(m, i),
            tool_calls=message_calls(m.tool_calls, f"messages.{i}"),
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for i, m in enumerate(messages)
    )


def chat_request(body: ChatCompletionRequest, params: SamplingParams) -> GenerateRequest:
    """The runner's request: messages, tools and tool choice, JSON output as a constraint."""
    tools = tool_functions(body.tools)
    choice, forced = tool_choice_of(body.tool_choice, tools)
    params = replace(params, constraint=response_constraint(body.response_format))
    return GenerateRequest(
        messages=chat_messages(body.messages),
        params=params,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
    )


def logprob_value(value: Any) -> float:
    return max(float(value), LOWEST_LOGPROB)


def token_logprob(event: Token) -> float:
    return logprob_value(LOWEST_LOGPROB if event.logprob is None else event.logprob)


def chat_logprob(event: Token) -> dict[str, Any]:
    """OpenAI's entry for one chosen token, with its top alternatives."""
    token = event.text if event.token is None else event.token
    return {
        "token": token,
        "logprob": token_logprob(event),
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": top.token, "logprob": logprob_value(top.logprob), "bytes": list(top.token.encode())}
            for top in event.top_logprobs or ()
        ],
    }


def usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def stream_error(error: GenerationFailed) -> bytes:
    # The openai client raises APIError when an event carries an `error` object.
    return sse({"error": {"message": str(error), "type": "server_error", "param": None, "code": None}})


def include_usage(body: SamplingFields) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


# --- chat completions ----------------------------------------------------------------------------


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses=stream_response(ChatCompletionChunk, SSE, "the completion, or with stream: chunks"),
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    top = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(body, body.max_completion_tokens or body.max_tokens, top)
    command = chat_request(body, params)
    generation = await serving_of(request).start(body.model, command)
    reply_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if body.stream:
        events = chat_chunks(generation, reply_id, created, body.model, include_usage(body), top is not None)
        return GenerationResponse(events, generation, SSE)
    done = await collect(request, generation)
    content, calls = read_calls(generation.tool_format, done.text)
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls_value(calls)
    return {
        "id": reply_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": [chat_logprob(e) for e in done.tokens]} if top is not None else None,
                "finish_reason": "tool_calls" if calls else done.finish_reason,
            }
        ],
        "usage": usage(generation),
    }


async def chat_chunks(
    generation: Generation, reply_id: str, created: int, model: str, with_usage: bool, with_logprobs: bool
) -> AsyncIterator[bytes]:
    head = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model}
    tail = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice], **tail})

    yield chunk({"role": "assistant", "content": ""})
    calls_held = CallStream(generation.tool_format)
    try:
        async for event in generation.tokens():
            logprobs = {"content": [chat_logprob(event)]} if with_logprobs else None
            text = calls_held.push(event.text)
            if text or logprobs:
                yield chunk({"content": text}, logprobs=logprobs)
            if event.finish_reason is not None:
                rest, calls = calls_held.finish()
                if rest:
                    yield chunk({"content": rest})
                if calls:
                    yield chunk({"tool_calls": call_deltas(calls)})
                yield chunk({}, finish="tool_calls" if calls else event.finish_reason)
    except GenerationFailed as error:
        yield stream_error(error)
        return
    if with_usage:
        yield sse({**head, "choices": [], "usage": usage(generation)})
    yield sse("[DONE]")


# --- text completions ----------------------------------------------------------------------------


def completion_prompt(body: CompletionRequest, params: SamplingParams) -> GenerateRequest:
    """The runner's prompt: text, or token ids; one prompt only."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, "prompt: only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return GenerateRequest(prompt=prompt, params=params)
    if not prompt:
        raise APIError(400, "prompt: the prompt is empty", param="prompt")
    return GenerateRequest(prompt_ids=tuple(int(t) for t in prompt), params=params)  # type: ignore[arg-type]


def completion_logprobs(tokens: list[Token], offset: int = 0) -> dict[str, Any]:
    """The legacy completions format: parallel lists, and a dict of alternatives per token;
    `offset` is where the first token's text starts in the completion."""
    offsets = []
    for event in tokens:
        offsets.append(offset)
        offset += len(event.text)
    return {
        "tokens": [e.text if e.token is None else e.token for e in tokens],
        "token_logprobs": [token_logprob(e) for e in tokens],
        "top_logprobs": [
            {top.token: logprob_value(top.logprob) for top in e.top_logprobs or ()} for e in tokens
        ],
        "text_offset": offsets,
    }


@router.post(
    "/v1/completions",
    summary="Text completion (OpenAI-compatible, legacy)",
    response_model=TextCompletion,
    responses=stream_response(TextCompletion, SSE, "the completion, or with stream: chunks"),
)
async def completions(body: CompletionRequest, request: Request) -> Any:
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo")
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of not in (None, 1):
        raise APIError(400, "best_of: only 1 is supported", param="best_of")
    command = completion_prompt(body, sampling_params(body, body.max_tokens, body.logprobs))
    generation = await serving_of(request).start(body.model, command)
    reply_id, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    with_logprobs = body.logprobs is not None
    if body.stream:
        events = completion_chunks(
            generation, reply_id, created, body.model, include_usage(body), with_logprobs
        )
        return GenerationResponse(events, generation, SSE)
    done: Completion = await collect(request, generation)
    return {
        "id": reply_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "text": done.text,
                "index": 0,
                "logprobs": completion_logprobs(done.tokens) if with_logprobs else None,
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": usage(generation),
    }


async def completion_chunks(
    generation: Generation, reply_id: str, created: int, model: str, with_usage: bool, with_logprobs: bool
) -> AsyncIterator[bytes]:
    head = {"id": reply_id, "object": "text_completion", "created": created, "model": model}

    def chunk(text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice], **({"usage": None} if with_usage else {})})

    offset = 0
    try:
        async for event in generation.tokens():
            logprobs = completion_logprobs([event], offset) if with_logprobs else None
            offset += len(event.text)
            if event.text or logprobs:
                yield chunk(event.text, logprobs=logprobs)
            if event.finish_reason is not None:
                yield chunk("", finish=event.finish_reason)
    except GenerationFailed as error:
        yield stream_error(error)
        return
    if with_usage:
        yield sse({**head, "choices": [], "usage": usage(generation)})
    yield sse("[DONE]")
