"""Request and response bodies of the OpenAI-compatible routes.

Requests accept fields this server does not know (OpenAI clients send `user`, `metadata`,
`store`, `service_tier` and more), so new client versions keep working. Fields that would change
the answer in ways this server cannot honour (n > 1, logit_bias) are refused
with a 400 by the routes, not silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 16


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(Lenient):
    include_usage: bool | None = Field(False, description="send a last chunk with the token counts")


class SamplingFields(Lenient):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, description="a model name from GET /v1/models, or an instance id")
    max_tokens: int | None = Field(
        None, ge=1, description="most tokens to generate (default: to the context's end)"
    )
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy (default 1)")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, description="only 1 is supported")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP_STRINGS} stop strings")
    seed: int | None = Field(None, description="makes sampling reproducible")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="not supported: must be empty")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions that vLLM's OpenAI server also accepts.
    top_k: int | None = Field(
        None, ge=-1, description="extension: keep the k most likely tokens (0 or -1: off)"
    )
    min_p: float | None = Field(None, ge=0, le=1, description="extension")
    repetition_penalty: float | None = Field(None, ge=0.01, le=100, description="extension")
    ignore_eos: bool | None = Field(False, description="extension: keep going past end-of-sequence tokens")


class ContentPart(Lenient):
    type: str = Field(description="only 'text' parts are supported")
    text: str | None = None


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="an assistant's earlier calls")
    tool_call_id: str | None = Field(None, description="the call a tool message answers")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="takes precedence over max_tokens")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(None, description="functions the model may call")
    tool_choice: Any = Field(None, description="'auto', 'none', 'required' or {'type': 'function', ...}")
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = Field(
        None, description="{'type': 'text'}, {'type': 'json_object'} or {'type': 'json_schema', ...}"
    )


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text or token ids; a list holds one prompt (batches are not supported)"
    )
    logprobs: int | None = Field(None, ge=0, le=20, description="log-probabilities of the top n tokens")
    echo: bool | None = Field(False, description="not supported")
    suffix: str | None = Field(None, description="not supported")
    best_of: int | None = Field(None, ge=1, description="only 1 is supported")


# --- responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(ToolCall):
    index: int


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`data: {...}`, then `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class TextCompletion(BaseModel):
    """A text completion; streamed, each server-sent event carries one of these."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tandem"
    instances: list[str] = Field(description="extension: ids of the instances serving it now")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
