"""Anthropic's content blocks, tools and tool choice, translated for the runner: text blocks
joined, `tool_use` blocks as an assistant's calls, `tool_result` blocks as tool messages."""

from __future__ import annotations

import json
from typing import Any

from tandem.api.anthropic_schemas import ContentBlock, MessagesRequest
from tandem.api.errors import APIError
from tandem.api.openai_tools import function_of
from tandem.api.tool_output import Call
from tandem.model.tool_calls import ToolCall, ToolChoice, ToolFunction
from tandem.protocol.runner import ChatMessage


def block_text(content: str | list[ContentBlock] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for block in content:
        if block.type != "text" or block.text is None:
            raise APIError(400, f"{where}: only text content blocks are supported here, not {block.type!r}")
        texts.append(block.text)
    return "\n".join(texts)


def message_of(role: str, content: str | list[ContentBlock], where: str) -> list[ChatMessage]:
    """One Anthropic message as chat messages: its text (with an assistant's calls), and a tool
    message for each `tool_result` block."""
    if isinstance(content, str):
        return [ChatMessage(role, content)]
    texts, calls, results = [], [], []
    for index, block in enumerate(content):
        if block.type == "text" and block.text is not None:
            texts.append(block.text)
        elif block.type == "tool_use" and role == "assistant" and block.name:
            calls.append(ToolCall(block.id or f"toolu_{index}", block.name, json.dumps(block.input or {})))
        elif block.type == "tool_result" and role == "user":
            text = block_text(block.content, f"{where}.{index}.content")
            results.append(ChatMessage("tool", text, tool_call_id=block.tool_use_id))
        else:
            raise APIError(
                400, f"{where}.{index}: a {block.type!r} block is not supported in a {role} message"
            )
    messages = results
    if texts or calls or not results:
        messages = [*results, ChatMessage(role, "\n".join(texts), tool_calls=tuple(calls))]
    return messages


def conversation(body: MessagesRequest) -> tuple[ChatMessage, ...]:
    messages = []
    if body.system:
        messages.append(ChatMessage("system", block_text(body.system, "system")))
    for index, message in enumerate(body.messages):
        messages.extend(message_of(message.role, message.content, f"messages.{index}.content"))
    return tuple(messages)


def tool_functions(body: MessagesRequest) -> tuple[ToolFunction, ...]:
    functions = []
    for index, tool in enumerate(body.tools or []):
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise APIError(400, f"tools.{index}: a tool needs a name")
        functions.append(function_of(name, tool.get("description"), tool.get("input_schema")))
    return tuple(functions)


def tool_choice_of(
    body: MessagesRequest, functions: tuple[ToolFunction, ...]
) -> tuple[ToolChoice, str | None]:
    """`auto`, `none`, `any` (some tool must be called) or `tool` (this one must)."""
    kind = (body.tool_choice or {}).get("type", "auto")
    if kind in ("auto", "none"):
        return kind, None
    if not functions:
        raise APIError(400, f"tool_choice: {kind!r} needs tools")
    if kind == "any":
        return "required", None
    name = (body.tool_choice or {}).get("name")
    if kind == "tool" and name in {function.name for function in functions}:
        return "required", name
    raise APIError(400, "tool_choice: 'auto', 'any', 'none', or 'tool' with the name of one of the tools")


def tool_use_block(call: Call) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)}
