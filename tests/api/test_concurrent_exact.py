"""32 concurrent requests, each with its own prompt and sampling settings (greedy, penalties,
stop strings, seeded sampling; streamed and not), return exactly what each returns alone: through
one node serving a one-stage instance, and through a 2-stage pipeline over 2 node processes on
loopback. The greedy ones also equal the engine's greedy output in the test process.

The instances run the demo model in float32 (tests/api/conftest.py says why)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from nodes import launch, running_nodes, wait_for

from .api_expected import CONTEXT, PROMPTS, greedy, user

REQUESTS = 32
WORDS = ("now", "then", "again", "anon")  # with the 8 prompts: 32 different conversations


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    completion_tokens: int


def settings_of(index: int) -> dict[str, Any]:
    """Request `index`'s settings: one of four kinds, a length of its own, streamed or not."""
    kinds = [
        {"temperature": 0},
        {"temperature": 0, "frequency_penalty": 0.6, "presence_penalty": 0.4},
        {"temperature": 0.9, "top_p": 0.9, "seed": 1000 + index},
        {"temperature": 0, "stop": [","], "extra_body": {"repetition_penalty": 1.3, "top_k": 5}},
    ]
    return {**kinds[index % 4], "max_tokens": 12 + (index % 5) * 7}


def messages_of(index: int) -> Any:  # the SDK types messages as TypedDicts
    return user(f"{PROMPTS[index % len(PROMPTS)]} {WORDS[index // len(PROMPTS)]}")


async def ask(client: openai.AsyncOpenAI, model: str, index: int) -> Answer:
    settings = settings_of(index)
    if index % 2:
        reply = await client.chat.completions.create(model=model, messages=messages_of(index), **settings)
        assert reply.usage is not None
        choice = reply.choices[0]
        return Answer(choice.message.content or "", choice.finish_reason, reply.usage.completion_tokens)
    stream = await client.chat.completions.create(
        model=model,
        messages=messages_of(index),
        stream=True,
        stream_options={"include_usage": True},
        **settings,
    )
    pieces, finish, tokens = [], "", -1
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return Answer("".join(pieces), finish, tokens)


async def alone_then_together(url: str, model: str) -> tuple[list[Answer], list[Answer]]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        alone = [await ask(client, model, index) for index in range(REQUESTS)]
        together = await asyncio.gather(*(ask(client, model, index) for index in range(REQUESTS)))
    return alone, list(together)


def check(alone: list[Answer], together: list[Answer], demo_engine) -> None:
    for index, (single, concurrent) in enumerate(zip(alone, together, strict=True)):
        assert concurrent == single, (index, settings_of(index))
        assert single.completion_tokens > 0
    for index in range(0, REQUESTS, 4):  # the plainly greedy ones, against the engine itself
        expected = greedy(
            demo_engine, messages=messages_of(index), max_tokens=settings_of(index)["max_tokens"]
        )
        assert alone[index].text == expected.text, index
        assert alone[index].completion_tokens == len(expected.token_ids)


def test_32_concurrent_requests_equal_each_alone(demo_node, demo_engine):
    model = demo_node.instance["instance_id"]
    alone, together = asyncio.run(alone_then_together(demo_node.url, model))
    check(alone, together, demo_engine)


@pytest.fixture(scope="module")
def pipeline_nodes(tmp_path_factory):
    """Two node processes, the demo model split over them as 2 pipeline stages."""
    with running_nodes(tmp_path_factory.mktemp("pipeline"), 2) as nodes:
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 2 for n in nodes), what="two nodes to meet")
        devices = [f"{node.node_id}/cpu" for node in nodes]
        instance = launch(nodes[0], model="demo", context=CONTEXT, devices=devices, dtype="float32")
        assert len(instance["placement"]["stages"]) == 2
        yield nodes, instance


def test_32_concurrent_requests_equal_each_alone_through_a_2_stage_pipeline(pipeline_nodes, demo_engine):
    nodes, instance = pipeline_nodes
    taker = next(n for n in nodes if n.node_id != instance["runners"][0]["node_id"])  # tokens cross nodes
    alone, together = asyncio.run(alone_then_together(taker.url, instance["instance_id"]))
    check(alone, together, demo_engine)
