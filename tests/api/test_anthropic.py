"""The Anthropic-compatible API, driven by the official `anthropic` client against a real node:
answers equal the engine's greedy output, and streams follow Anthropic's event sequence."""

from __future__ import annotations

import json

import anthropic
import pytest

from .api_expected import PROMPTS, greedy, user

# This client version no longer has sampling arguments; the API still takes `temperature`.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(demo_node):
    with anthropic.Anthropic(base_url=demo_node.url, api_key="unused", max_retries=0) as client:
        yield client


def test_message_equals_greedy_output(client, demo_engine):
    system = "You are a herald."
    expected = greedy(demo_engine, messages=[{"role": "system", "content": system}, *user(PROMPTS[0])])
    for system_value in (system, [{"type": "text", "text": system}]):
        message = client.messages.create(
            model="demo",
            max_tokens=1000,
            system=system_value,
            messages=user(PROMPTS[0]),
            extra_body=GREEDY,
            metadata={"user_id": "someone"},
        )
        assert message.type == "message" and message.role == "assistant" and message.model == "demo"
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == expected.text
        assert message.stop_reason == "end_turn" and message.stop_sequence is None
        assert message.usage.input_tokens == expected.prompt_tokens
        assert message.usage.output_tokens == len(expected.token_ids)


def test_streamed_message_equals_greedy_output(client, demo_engine):
    conversation = [
        *user(PROMPTS[1]),
        {"role": "assistant", "content": "Ay?"},
        *user([{"type": "text", "text": "Well?"}]),
    ]
    expected = greedy(
        demo_engine,
        messages=[*user(PROMPTS[1]), {"role": "assistant", "content": "Ay?"}, *user("Well?")],
    )
    with client.messages.stream(
        model="demo", max_tokens=1000, messages=conversation, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected.text == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(expected.token_ids)
    assert final.usage.input_tokens == expected.prompt_tokens


def test_max_tokens_ends_with_stop_reason_max_tokens(client, demo_engine):
    expected = greedy(demo_engine, messages=user(PROMPTS[2]), max_tokens=5)
    message = client.messages.create(model="demo", max_tokens=5, messages=user(PROMPTS[2]), extra_body=GREEDY)
    assert message.content[0].text == expected.text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5


def test_a_stop_sequence_is_reported(client, demo_engine):
    full = greedy(demo_engine, messages=user(PROMPTS[0])).text
    stop = full.split()[3]
    expected = greedy(demo_engine, messages=user(PROMPTS[0]), stop=("zzzz", stop))
    assert expected.stop_sequence == stop
    message = client.messages.create(
        model="demo",
        max_tokens=200,
        messages=user(PROMPTS[0]),
        extra_body=GREEDY,
        stop_sequences=["zzzz", stop],
    )
    assert message.content[0].text == expected.text
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    with client.messages.stream(
        model="demo", max_tokens=200, messages=user(PROMPTS[0]), extra_body=GREEDY, stop_sequences=[stop]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == expected.text
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_the_stream_is_in_anthropics_event_format(demo_node, demo_engine):
    expected = greedy(demo_engine, messages=user(PROMPTS[3]), max_tokens=6)
    body = {"model": "demo", "max_tokens": 6, "messages": user(PROMPTS[3]), "temperature": 0, "stream": True}
    with demo_node.http.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for block in raw.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append(data)
    names = [e["type"] for e in events]
    deltas = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] == expected.prompt_tokens
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == expected.text
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"] == {"output_tokens": 6}


def test_bad_requests_get_anthropic_errors(client, demo_node):
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="no-such-model", max_tokens=5, messages=user("hi"))
    assert unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as long:
        client.messages.create(model="demo", max_tokens=5, messages=user("word " * 600))
    assert "context" in long.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="demo", max_tokens=5, messages=user("hi"), extra_body={"temperature": 1.5}
        )
    response = demo_node.http.post("/v1/messages", json={"model": "demo", "messages": user("hi")})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    listed = demo_node.http.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert "demo" in [model["id"] for model in listed["data"]]
    assert client.models.retrieve("demo").id == "demo"
