"""OpenAI's tools, tool choice, tool messages and response formats, translated for the runner:
functions and calls as protocol values, JSON output as an output constraint."""

from __future__ import annotations

import json
from typing import Any

from tandem.api.errors import APIError
from tandem.api.tool_output import Call
from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint
from tandem.model.tool_calls import ToolCall, ToolChoice, ToolFunction


def tool_functions(tools: list[dict[str, Any]] | None, param: str = "tools") -> tuple[ToolFunction, ...]:
    """OpenAI's `[{"type": "function", "function": {name, description, parameters}}]`."""
    functions = []
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise APIError(400, f"{param}.{index}: a function tool with a name is expected", param=param)
        functions.append(
            function_of(function["name"], function.get("description"), function.get("parameters"))
        )
    return tuple(functions)


def function_of(name: str, description: Any, parameters: Any, param: str = "tools") -> ToolFunction:
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise APIError(400, f"{param}: the parameters of {name!r} must be a JSON Schema object", param=param)
    return ToolFunction(name, description if isinstance(description, str) else "", json.dumps(parameters))


def tool_choice_of(choice: Any, functions: tuple[ToolFunction, ...]) -> tuple[ToolChoice, str | None]:
    """OpenAI's tool_choice as (auto/none/required, the function it names or None)."""
    if choice is None:
        return "auto", None
    if choice in ("auto", "none", "required"):
        if choice == "required" and not functions:
            raise APIError(400, "tool_choice: 'required' needs tools", param="tool_choice")
        return choice, None
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise APIError(
            400, "tool_choice: 'auto', 'none', 'required' or a named function", param="tool_choice"
        )
    if name not in {function.name for function in functions}:
        raise APIError(400, f"tool_choice: {name!r} is not among the tools", param="tool_choice")
    return "required", name


def response_constraint(response_format: dict[str, Any] | None) -> OutputConstraint | None:
    """`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`."""
    kind = (response_format or {}).get("type", "text")
    try:
        if kind == "text":
            return None
        if kind == "json_object":
            return OutputConstraint.any_json()
        if kind == "json_schema":
            assert response_format is not None
            schema = (response_format.get("json_schema") or {}).get("schema", {"type": "object"})
            if not isinstance(schema, dict | bool):
                raise InvalidRequestError("json_schema.schema must be a JSON Schema")
            return OutputConstraint.json_schema(schema)
    except InvalidRequestError as error:
        raise APIError(400, f"response_format: {error}", param="response_format") from None
    raise APIError(400, f"response_format: unknown type {kind!r}", param="response_format")


def message_calls(tool_calls: list[dict[str, Any]] | None, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls, for the chat template."""
    calls = []
    for index, call in enumerate(tool_calls or []):
        function = call.get("function") or {}
        name, arguments = function.get("name"), function.get("arguments", "{}")
        if not isinstance(name, str):
            raise APIError(400, f"{where}.tool_calls.{index}: a function call with a name is expected")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(ToolCall(str(call.get("id") or f"call_{index}"), name, arguments))
    return tuple(calls)


def calls_value(calls: list[Call]) -> list[dict[str, Any]]:
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in calls
    ]


def call_deltas(calls: list[Call]) -> list[dict[str, Any]]:
    """The calls as streamed `tool_calls` deltas (each whole, in one delta)."""
    return [{"index": index, **value} for index, value in enumerate(calls_value(calls))]
