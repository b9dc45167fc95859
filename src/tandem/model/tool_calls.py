"""Tool calls in each model family's own words. Pure Python.

A chat template renders the tools and the earlier calls; the model answers a call in its
family's format. Here, per family: how to recognise it from the chat template, how to read
calls out of the text the model wrote (`parse`), and the grammar (an xgrammar structural tag)
that forces a call of one of the given functions with arguments valid under its schema.

    hermes    (Qwen 2.5/3, Hermes)   <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>
    llama3    (Llama 3.1-3.3)        {"name": ..., "parameters": {...}}
    mistral                          [TOOL_CALLS][{"name": ..., "arguments": {...}}]
    deepseek  (DeepSeek-V3)          <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
                                     ```json\\n{...}\\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
    kimi      (Kimi-K2)              <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
                                     <|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

FormatName = Literal["hermes", "llama3", "mistral", "deepseek", "kimi"]
ToolChoice = Literal["auto", "none", "required"]

DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_SEP = (
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
)
KIMI_SECTION_BEGIN, KIMI_SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
KIMI_CALL_BEGIN, KIMI_ARGUMENT, KIMI_CALL_END = (
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)


@dataclass(frozen=True)
class ToolFunction:
    """A function the model may call: its name, what it does, and a JSON Schema (as JSON text)
    of its arguments."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object"}'

    def template_value(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's shape)."""
        function = {
            "name": self.name,
            "description": self.description,
            "parameters": json.loads(self.parameters),
        }
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: `arguments` is JSON text (an object)."""

    id: str
    name: str
    arguments: str

    def template_value(self) -> dict[str, Any]:
        """The call as chat templates expect it in an assistant message (arguments as an object)."""
        try:
            arguments = json.loads(self.arguments)
        except json.JSONDecodeError:
            arguments = self.arguments
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": arguments}}


@dataclass(frozen=True)
class ParsedOutput:
    """What the model wrote, split into plain text and the calls it made."""

    content: str
    calls: tuple[tuple[str, str], ...]  # (name, arguments as JSON text)


def detect_format(chat_template: str | None) -> FormatName | None:
    """The tool-call format a chat template teaches its model; None if it renders no tools."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "tool▁calls▁begin" in chat_template:
        return "deepseek"
    if "tool_calls_section_begin" in chat_template:
        return "kimi"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3"
    return None


def start_marker(format_name: FormatName) -> str:
    """Text that begins a call (for streaming: text after it is held back until the end)."""
    return {
        "hermes": "<tool_call>",
        "llama3": '{"name"',
        "mistral": "[TOOL_CALLS]",
        "deepseek": DEEPSEEK_CALLS_BEGIN,
        "kimi": KIMI_SECTION_BEGIN,
    }[format_name]


def _json_object(text: str) -> str | None:
    """`text` as compact JSON if it is a JSON object, else None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _call_from_object(value: Any, arguments_key: str) -> tuple[str, str] | None:
    """(name, arguments as JSON object text) of a call written as a JSON object; None if it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(arguments_key, value.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        text = _json_object(arguments)
        return None if text is None else (value["name"], text)
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


def parse_hermes(text: str) -> ParsedOutput:
    calls, content = [], text
    for match in re.finditer(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.DOTALL):
        try:
            call = _call_from_object(json.loads(match.group(1)), "arguments")
        except json.JSONDecodeError:
            continue
        if call is not None:
            calls.append(call)
            content = content.replace(match.group(0), "", 1)
    return ParsedOutput(content.strip() if calls else text, tuple(calls))


def parse_llama3(text: str) -> ParsedOutput:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    calls = []
    for part in body.split(";"):  # Llama 3 writes several calls separated by semicolons
        try:
            call = _call_from_object(json.loads(part), "parameters")
        except json.JSONDecodeError:
            return ParsedOutput(text, ())
        if call is None:
            return ParsedOutput(text, ())
        calls.append(call)
    return ParsedOutput("", tuple(calls))


def parse_mistral(text: str) -> ParsedOutput:
    before, marker, after = text.partition("[TOOL_CALLS]")
    if not marker:
        return ParsedOutput(text, ())
    try:
        value = json.loads(after.strip())
    except json.JSONDecodeError:
        return ParsedOutput(text, ())
    values = value if isinstance(value, list) else [value]
    calls = [call for item in values if (call := _call_from_object(item, "arguments")) is not None]
    return ParsedOutput(before.strip(), tuple(calls)) if calls else ParsedOutput(text, ())


def parse_deepseek(text: str) -> ParsedOutput:
    before, marker, _ = text.partition(DEEPSEEK_CALLS_BEGIN)
    if not marker:
        return ParsedOutput(text, ())
    pattern = re.escape(DEEPSEEK_CALL_BEGIN) + r"function" + re.escape(DEEPSEEK_SEP)
    pattern += r"(.*?)\n```json\n(.*?)\n```" + re.escape(DEEPSEEK_CALL_END)
    calls = [
        (name.strip(), arguments)
        for name, raw in re.findall(pattern, text, re.DOTALL)
        if (arguments := _json_object(raw)) is not None
    ]
    return ParsedOutput(before.strip(), tuple(calls)) if calls else ParsedOutput(text, ())


def parse_kimi(text: str) -> ParsedOutput:
    before, marker, _ = text.partition(KIMI_SECTION_BEGIN)
    if not marker:
        return ParsedOutput(text, ())
    pattern = re.escape(KIMI_CALL_BEGIN) + r"\s*(?:functions\.)?([^:<\s]+):\d+\s*"
    pattern += re.escape(KIMI_ARGUMENT) + r"(.*?)" + re.escape(KIMI_CALL_END)
    calls = [
        (name, arguments)
        for name, raw in re.findall(pattern, text, re.DOTALL)
        if (arguments := _json_object(raw)) is not None
    ]
    return ParsedOutput(before.strip(), tuple(calls)) if calls else ParsedOutput(text, ())


PARSERS = {
    "hermes": parse_hermes,
    "llama3": parse_llama3,
    "mistral": parse_mistral,
    "deepseek": parse_deepseek,
    "kimi": parse_kimi,
}


def parse_tool_calls(format_name: FormatName, text: str) -> ParsedOutput:
    """The calls in `text` (a model's whole answer) and the text around them."""
    return PARSERS[format_name](text)


# --- forcing a call ---------------------------------------------------------------------------


def _const(value: str) -> dict[str, Any]:
    return {"type": "const_string", "value": value}


def _json(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}


def _sequence(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sequence", "elements": list(elements)}


def _named_object(name: str, arguments_key: str, schema: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, arguments_key: schema},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _one_call(format_name: FormatName, tool: ToolFunction) -> dict[str, Any]:
    """The grammar of one call of `tool`, wrapped as the family wraps a single call."""
    schema = json.loads(tool.parameters)
    if format_name == "hermes":
        return _sequence(
            _const("<tool_call>\n"),
            _json(_named_object(tool.name, "arguments", schema)),
            _const("\n</tool_call>"),
        )
    if format_name == "llama3":
        return _json(_named_object(tool.name, "parameters", schema))
    if format_name == "mistral":
        return _sequence(
            _const("[TOOL_CALLS]["), _json(_named_object(tool.name, "arguments", schema)), _const("]")
        )
    if format_name == "deepseek":
        head = f"{DEEPSEEK_CALLS_BEGIN}{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}{tool.name}\n```json\n"
        return _sequence(_const(head), _json(schema), _const(f"\n```{DEEPSEEK_CALL_END}{DEEPSEEK_CALLS_END}"))
    head = f"{KIMI_SECTION_BEGIN}{KIMI_CALL_BEGIN}functions.{tool.name}:0{KIMI_ARGUMENT}"
    return _sequence(_const(head), _json(schema), _const(f"{KIMI_CALL_END}{KIMI_SECTION_END}"))


def forced_call_grammar(format_name: FormatName, tools: tuple[ToolFunction, ...]) -> dict[str, Any]:
    """An xgrammar structural tag: exactly one call, of one of `tools`, in the family's format."""
    if not tools:
        raise ValueError("forcing a tool call needs at least one tool")
    calls = [_one_call(format_name, tool) for tool in tools]
    grammar = calls[0] if len(calls) == 1 else {"type": "or", "elements": calls}
    return {"type": "structural_tag", "format": grammar}
