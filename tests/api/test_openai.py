"""The OpenAI-compatible API, driven by the official `openai` client against a real node: every
answer equals the engine's own greedy output for the same prompt."""

from __future__ import annotations

import openai
import pytest

from .api_expected import PROMPTS, greedy, user


@pytest.fixture(scope="module")
def client(demo_node):
    with openai.OpenAI(base_url=f"{demo_node.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_chat_completion_equals_greedy_output(client, demo_engine):
    messages = [{"role": "system", "content": "You are a herald."}, *user(PROMPTS[0])]
    expected = greedy(demo_engine, messages=messages)
    reply = client.chat.completions.create(
        model="demo", messages=messages, temperature=0, user="someone", metadata={"trace": "1"}
    )
    assert reply.object == "chat.completion" and reply.model == "demo"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason == "stop"
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == expected.prompt_tokens + len(expected.token_ids)


def test_streamed_chat_completion_equals_greedy_output_with_usage(client, demo_engine):
    expected = greedy(demo_engine, messages=user(PROMPTS[1]))
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=user(PROMPTS[1]),
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_token_limit_ends_with_finish_reason_length(client, demo_engine, field):
    expected = greedy(demo_engine, messages=user(PROMPTS[2]), max_tokens=4)
    reply = client.chat.completions.create(
        model="demo", messages=user(PROMPTS[2]), temperature=0, **{field: 4}
    )
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4


def test_stop_strings_cut_the_text(client, demo_engine):
    full = greedy(demo_engine, messages=user(PROMPTS[0])).text
    stop = full.split()[3]  # a word from the middle of the answer
    expected = greedy(demo_engine, messages=user(PROMPTS[0]), stop=(stop, "zzzz"))
    assert expected.text == full[: full.index(stop)]
    for value in (stop, [stop, "zzzz"]):
        reply = client.chat.completions.create(
            model="demo", messages=user(PROMPTS[0]), temperature=0, stop=value
        )
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="demo", messages=user(PROMPTS[0]), temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.text


def test_penalties_reach_the_sampler(client, demo_engine):
    settings = {"presence_penalty": 1.5, "frequency_penalty": 1.0, "max_tokens": 40}
    expected = greedy(demo_engine, messages=user(PROMPTS[3]), **settings)
    assert expected.text != greedy(demo_engine, messages=user(PROMPTS[3]), max_tokens=40).text
    reply = client.chat.completions.create(model="demo", messages=user(PROMPTS[3]), temperature=0, **settings)
    assert reply.choices[0].message.content == expected.text


def test_a_seed_makes_sampling_repeatable(client):
    def sample() -> str:
        reply = client.chat.completions.create(
            model="demo", messages=user(PROMPTS[4]), temperature=1.0, top_p=0.9, seed=1234, max_tokens=30
        )
        return reply.choices[0].message.content

    assert sample() == sample()


def test_logprobs_name_each_token_and_its_alternatives(client, demo_engine):
    expected = greedy(demo_engine, messages=user(PROMPTS[5]), max_tokens=8)
    reply = client.chat.completions.create(
        model="demo", messages=user(PROMPTS[5]), temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert [e.token for e in entries] == [demo_engine.tokenizer.decode([t]) for t in expected.token_ids]
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
    streamed = client.chat.completions.create(
        model="demo", messages=user(PROMPTS[5]), temperature=0, max_tokens=8, logprobs=True, stream=True
    )
    tokens = [
        e.token
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert tokens == [e.token for e in entries]


def test_text_completions_from_text_and_from_token_ids(client, demo_engine):
    prompt = "The king hath"
    expected = greedy(demo_engine, prompt=prompt, max_tokens=20)
    reply = client.completions.create(model="demo", prompt=prompt, temperature=0, max_tokens=20)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    ids = demo_engine.tokenizer.encode(prompt)
    by_ids = client.completions.create(model="demo", prompt=ids, temperature=0, max_tokens=20)
    assert by_ids.choices[0].text == expected.text
    streamed = client.completions.create(
        model="demo", prompt=[prompt], temperature=0, max_tokens=20, stream=True, logprobs=2
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    offsets = [
        o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset
    ]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_models_list_the_running_instance_and_the_launchable_models(client, demo_node):
    models = {m.id: m for m in client.models.list()}
    assert "demo" in models
    assert models["demo"].model_extra["instances"] == [demo_node.instance["instance_id"]]
    assert client.models.retrieve("demo").id == "demo"
    assert client.models.retrieve(demo_node.instance["instance_id"]).id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_the_instance_id_names_the_model_too(client, demo_node, demo_engine):
    expected = greedy(demo_engine, messages=user(PROMPTS[6]), max_tokens=10)
    reply = client.chat.completions.create(
        model=demo_node.instance["instance_id"], messages=user(PROMPTS[6]), temperature=0, max_tokens=10
    )
    assert reply.choices[0].message.content == expected.text


def test_bad_requests_get_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    assert unknown.value.code == "model_not_found"
    assert "no-such-model" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as two:
        client.chat.completions.create(model="demo", messages=user("hi"), n=2)
    assert two.value.param == "n"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="demo", messages=user("word " * 600))
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model="demo", messages=user("hi"), temperature=5)
    assert invalid.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo", prompt=[99999])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        )
