"""A chat request made ready for the engine: the prompt rendered with its tools by the chat
template, and, when a call is required, the grammar that forces it into the sampling settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint
from tandem.model.sampling_params import SamplingParams
from tandem.model.tokenizer import Tokenizer
from tandem.model.tool_calls import FormatName, detect_format, forced_call_grammar
from tandem.protocol.runner import ChatMessage, GenerateRequest


@dataclass(frozen=True)
class ChatPrompt:
    prompt_ids: list[int]
    params: SamplingParams
    tool_format: FormatName | None  # how the model writes calls, when tools were offered


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it (the shape transformers passes them)."""
    value: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        value["tool_calls"] = [call.template_value() for call in message.tool_calls]
    if message.tool_call_id is not None:
        value["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        value["name"] = message.name
    return value


def chat_prompt(tokenizer: Tokenizer, request: GenerateRequest) -> ChatPrompt:
    """Render `request` (chat messages) and force its tool call where it asks for one."""
    assert request.messages is not None
    messages = [template_message(m) for m in request.messages]
    tools = request.tools if request.tool_choice != "none" else ()
    if not tools:
        return ChatPrompt(tokenizer.encode_chat(messages), request.params, None)
    tool_format = detect_format(tokenizer.chat_template)
    if tool_format is None:
        raise InvalidRequestError("this model's chat template does not render tools")
    prompt_ids = tokenizer.encode_chat(messages, tools=[tool.template_value() for tool in tools])
    # Some tokenizers hold a family's call markers as special tokens: keep their text to read calls.
    params = replace(request.params, skip_special_tokens=False)
    if request.tool_choice == "required" or request.forced_tool is not None:
        if params.constraint is not None:
            raise InvalidRequestError("a required tool call and a response format cannot be asked together")
        forced = tuple(t for t in tools if request.forced_tool in (None, t.name))
        grammar = forced_call_grammar(tool_format, forced)
        params = replace(params, constraint=OutputConstraint.structural_tag(grammar))
    return ChatPrompt(prompt_ids, params, tool_format)
