"""Request and response bodies of the Anthropic-compatible route (POST /v1/messages)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_SEQUENCES = 16


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ContentBlock(Lenient):
    type: str = Field(description="'text', 'tool_use' (an assistant's call) or 'tool_result'")
    text: str | None = None
    id: str | None = Field(None, description="tool_use: the call's id")
    name: str | None = Field(None, description="tool_use: the tool called")
    input: dict[str, Any] | None = Field(None, description="tool_use: the arguments")
    tool_use_id: str | None = Field(None, description="tool_result: the call it answers")
    content: str | list[ContentBlock] | None = Field(None, description="tool_result: what the tool said")
    is_error: bool | None = None


class InputMessage(Lenient):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class MessagesRequest(Lenient):
    model: str = Field(min_length=1, description="a model name from GET /v1/models, or an instance id")
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1, description="most tokens to generate (capped by the context)")
    system: str | list[ContentBlock] | None = None
    stop_sequences: list[str] | None = Field(None, description=f"up to {MAX_STOP_SEQUENCES}")
    temperature: float | None = Field(None, ge=0, le=1, description="0 is greedy (default 1)")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = False
    metadata: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="tools: name, description, input_schema")
    tool_choice: dict[str, Any] | None = Field(None, description="{'type': 'auto' | 'any' | 'tool' | 'none'}")
    thinking: dict[str, Any] | None = Field(None, description="not supported: must be disabled")


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Message(BaseModel):
    """The reply; streamed, it arrives as the events message_start, content_block_start, ping,
    content_block_delta..., content_block_stop, message_delta (with usage), message_stop."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage
