"""Each family's tool-call format: read from text, recognised from its chat template, and forced
by a grammar that accepts exactly the calls the parser reads (and refuses bad arguments); the
streamed text holds calls back."""

from __future__ import annotations

import json

import pytest

from tandem.api.tool_output import CallStream
from tandem.engine.grammar import Grammars
from tandem.model.output_constraint import OutputConstraint
from tandem.model.tokenizer import Tokenizer
from tandem.model.tool_calls import (
    ToolFunction,
    detect_format,
    forced_call_grammar,
    parse_tool_calls,
)
from tandem.store.resolve import DEMO_MODEL_DIR

ARGS = {"city": "Paris", "days": 3}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = ToolFunction("get_weather", "The forecast.", json.dumps(SCHEMA))
TIME = ToolFunction("get_time", "The time.", json.dumps({"type": "object", "properties": {}}))

DS = {"calls": "<｜tool▁calls▁begin｜>", "call": "<｜tool▁call▁begin｜>", "sep": "<｜tool▁sep｜>"}
DS_END = "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
KIMI = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
KIMI_END = "<|tool_call_end|><|tool_calls_section_end|>"


def written(args: dict) -> dict[str, str]:
    """How each family writes one call of get_weather with `args` (compact JSON as forced)."""
    body = json.dumps(args)
    return {
        "hermes": f'<tool_call>\n{{"name": "get_weather", "arguments": {body}}}\n</tool_call>',
        "llama3": f'{{"name": "get_weather", "parameters": {body}}}',
        "mistral": f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {body}}}]',
        "deepseek": f"{DS['calls']}{DS['call']}function{DS['sep']}get_weather\n```json\n{body}\n```{DS_END}",
        "kimi": f"{KIMI}{body}{KIMI_END}",
    }


FAMILIES = list(written(ARGS))


@pytest.fixture(scope="module")
def grammars():
    tokenizer = Tokenizer(DEMO_MODEL_DIR)
    return Grammars(DEMO_MODEL_DIR, 4096, tokenizer.eos_token_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_reads_its_calls_and_the_text_before_them(family):
    text = written(ARGS)[family]
    parsed = parse_tool_calls(family, text)
    assert [(name, json.loads(arguments)) for name, arguments in parsed.calls] == [("get_weather", ARGS)]
    assert parsed.content == ""
    if family != "llama3":  # a Llama call is the whole answer
        parsed = parse_tool_calls(family, "Let me look. " + text)
        assert parsed.content == "Let me look." and len(parsed.calls) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_text_has_no_calls(family):
    parsed = parse_tool_calls(family, "Thou art more lovely and more temperate.")
    assert parsed.calls == () and parsed.content == "Thou art more lovely and more temperate."


def test_several_calls_in_one_answer():
    hermes = written(ARGS)["hermes"] + "\n" + written({"city": "Oslo", "days": 1})["hermes"]
    assert [json.loads(a)["city"] for _, a in parse_tool_calls("hermes", hermes).calls] == ["Paris", "Oslo"]
    llama = written(ARGS)["llama3"] + "; " + written({"city": "Oslo", "days": 1})["llama3"]
    assert len(parse_tool_calls("llama3", llama).calls) == 2
    mistral = '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'
    assert [name for name, _ in parse_tool_calls("mistral", mistral).calls] == ["a", "b"]


def test_arguments_written_as_a_json_string_are_read_and_bad_ones_are_not_calls():
    text = '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
    assert parse_tool_calls("hermes", text).calls == (("f", '{"x": 1}'),)
    broken = '<tool_call>\n{"name": "f", "arguments": "not json"}\n</tool_call>'
    assert parse_tool_calls("hermes", broken).calls == ()


@pytest.mark.parametrize(
    "template,family",
    [
        ("{% if tools %}<tools>{{ tools }}</tools> <tool_call>{% endif %}", "hermes"),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
        ("{% if tools %}{% endif %}<｜tool▁calls▁begin｜>", "deepseek"),
        ("{% if tools %}{% endif %}<|tool_calls_section_begin|>", "kimi"),
        ("{%- if tools %}Environment: ipython{% endif %}<|python_tag|>", "llama3"),
        ("{% for message in messages %}{{ message.content }}{% endfor %}", None),
    ],
)
def test_the_format_is_recognised_from_the_chat_template(template, family):
    assert detect_format(template) == family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_forcing_grammar_accepts_what_the_parser_reads_and_refuses_bad_arguments(grammars, family):
    constraint = OutputConstraint.structural_tag(forced_call_grammar(family, (WEATHER,)))
    assert grammars.matcher(constraint).accept_string(written(ARGS)[family])
    assert not grammars.matcher(constraint).accept_string(written({"city": "Paris", "days": 30})[family])
    assert not grammars.matcher(constraint).accept_string(written({"town": "Paris"})[family])


def test_a_required_call_may_be_of_any_tool_given(grammars):
    constraint = OutputConstraint.structural_tag(forced_call_grammar("hermes", (WEATHER, TIME)))
    assert grammars.matcher(constraint).accept_string(written(ARGS)["hermes"])
    time_call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert grammars.matcher(constraint).accept_string(time_call)
    other = OutputConstraint.structural_tag(forced_call_grammar("hermes", (TIME,)))
    assert not grammars.matcher(other).accept_string(written(ARGS)["hermes"])


def test_streaming_holds_back_a_call_and_shows_the_text_before_it():
    stream = CallStream("hermes")
    pieces = [
        "Let me ",
        "look. <tool",
        '_call>\n{"name": "get_weather", ',
        '"arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
    ]
    shown = "".join(stream.push(piece) for piece in pieces)
    assert shown == "Let me look. "
    rest, calls = stream.finish()
    assert rest == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", ARGS)]


def test_streaming_text_that_only_looked_like_a_call_comes_out_at_the_end():
    stream = CallStream("hermes")
    shown = stream.push("a <tool") + stream.push("box> b")
    assert shown == "a <toolbox> b"
    stream = CallStream("hermes")
    shown = stream.push("a <tool_call> not json")
    rest, calls = stream.finish()
    assert shown + rest == "a <tool_call> not json" and calls == []
