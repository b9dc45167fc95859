"""Tool calls and structured output through the official clients against a live node. The model
(the demo weights under a tool-calling chat template) never learned tools: that each forced call
is well formed and its arguments validate is the grammar's work."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import ollama
import openai
import pytest

from nodes import launch, running_nodes
from tool_checkpoints import TIME_TOOL, WEATHER, WEATHER_TOOL, tool_model

ASK = [{"role": "user", "content": "What weather shall we have in Verona?"}]
CONTEXT_WITH_TOOLS = 1024  # two tools rendered take some 400 tokens
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tool_node(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tools")
    model = tool_model(directory)
    with running_nodes(directory, 1, extra_args=("--models-dir", str(model))) as (node,):
        instance = launch(node, model=str(model), context=CONTEXT_WITH_TOOLS)
        node.model = instance["instance_id"]
        yield node


@pytest.fixture(scope="module")
def client(tool_node):
    with openai.OpenAI(base_url=f"{tool_node.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def valid_weather(arguments: str | dict) -> dict:
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(value, WEATHER)
    return value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_openai_named_tool_choice_returns_a_call_whose_arguments_validate(client, tool_node, seed):
    reply = client.chat.completions.create(
        model=tool_node.model,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=NAMED,
        seed=seed,
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    valid_weather(call.function.arguments)


def test_openai_streamed_named_tool_call(client, tool_node):
    chunks = list(
        client.chat.completions.create(
            model=tool_node.model,
            messages=ASK,
            tools=[WEATHER_TOOL],
            tool_choice=NAMED,
            seed=5,
            max_tokens=200,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [d.index for d in deltas] == [0] and deltas[0].function.name == "get_weather"
    valid_weather("".join(d.function.arguments for d in deltas))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


def test_openai_required_calls_one_of_the_tools_and_the_conversation_goes_on(client, tool_node):
    reply = client.chat.completions.create(
        model=tool_node.model,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        seed=7,
        max_tokens=200,
    )
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "fair"}'},
    ]
    answer = client.chat.completions.create(
        model=tool_node.model, messages=follow_up, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=20
    )
    assert (
        answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.tool_calls is None
    )


def test_openai_auto_with_a_model_that_answers_in_prose_gives_text(client, tool_node):
    reply = client.chat.completions.create(
        model=tool_node.model, messages=ASK, tools=[WEATHER_TOOL], temperature=0, max_tokens=20
    )
    assert reply.choices[0].message.content and reply.choices[0].message.tool_calls is None


def test_openai_refuses_a_tool_choice_naming_no_tool(client, tool_node):
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(
            model=tool_node.model, messages=ASK, tools=[TIME_TOOL], tool_choice=NAMED, max_tokens=20
        )


def test_openai_json_schema_response_format_validates(client, tool_node):
    schema = {**WEATHER, "properties": {**WEATHER["properties"]}}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": schema, "strict": True},
    }
    for stream in (False, True):
        reply = client.chat.completions.create(
            model=tool_node.model,
            messages=ASK,
            response_format=response_format,
            seed=11,
            max_tokens=200,
            stream=stream,
        )
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        else:
            text = reply.choices[0].message.content
        valid_weather(text)


def test_openai_json_object_is_an_object(client, tool_node):
    reply = client.chat.completions.create(
        model=tool_node.model, messages=ASK, response_format={"type": "json_object"}, seed=1, max_tokens=30
    )
    assert reply.choices[0].message.content.startswith("{")


def test_anthropic_forced_tool_use_validates_streamed_and_not(tool_node):
    tools = [{"name": "get_weather", "description": "The forecast.", "input_schema": WEATHER}]
    with anthropic.Anthropic(base_url=tool_node.url, api_key="unused", max_retries=0) as client:
        message = client.messages.create(
            model=tool_node.model,
            max_tokens=200,
            messages=ASK,
            tools=tools,
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
        valid_weather(block.input)

        with client.messages.stream(
            model=tool_node.model, max_tokens=200, messages=ASK, tools=tools, tool_choice={"type": "any"}
        ) as stream:
            final = stream.get_final_message()
        uses = [b for b in final.content if b.type == "tool_use"]
        assert final.stop_reason == "tool_use" and len(uses) == 1
        valid_weather(uses[0].input)

        follow_up = [
            *ASK,
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "fair"}],
            },
        ]
        answer = client.messages.create(model=tool_node.model, max_tokens=20, messages=follow_up, tools=tools)
        assert answer.stop_reason in ("end_turn", "max_tokens")


def test_ollama_tools_and_format(tool_node):
    client = ollama.Client(host=tool_node.url)
    reply = client.chat(
        model=tool_node.model, messages=ASK, tools=[WEATHER_TOOL], options={"num_predict": 20}
    )
    assert reply.message.content and not reply.message.tool_calls  # auto: the model answers in prose
    shaped = client.chat(
        model=tool_node.model, messages=ASK, format=WEATHER, options={"seed": 3, "num_predict": 200}
    )
    valid_weather(shaped.message.content)
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Verona"}}}],
        },
        {"role": "tool", "content": "fair", "tool_name": "get_weather"},
    ]
    assert client.chat(
        model=tool_node.model, messages=history, tools=[WEATHER_TOOL], options={"num_predict": 5}
    ).done


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_forced_call_through_the_tool_choice_extension(tool_node, stream):
    body = {
        "model": tool_node.model,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": NAMED,
        "stream": stream,
    }
    response = tool_node.http.post(
        "/api/chat", json={**body, "options": {"seed": 4, "num_predict": 200}}, timeout=120
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    calls = [call for line in lines for call in line["message"].get("tool_calls") or []]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    valid_weather(calls[0]["function"]["arguments"])
    assert lines[-1]["done"] is True


def test_langchain_bind_tools_with_a_forced_call(tool_node):
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(
        model=tool_node.model,
        base_url=f"{tool_node.url}/v1",
        api_key="unused",
        max_retries=0,
        max_tokens=200,
        seed=9,
    )
    bound = model.bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    message = bound.invoke("What weather shall we have in Verona?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    valid_weather(call["args"])
