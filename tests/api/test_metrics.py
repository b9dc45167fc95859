"""`GET /metrics` on a live node: scraped before and after a few requests and parsed with
prometheus_client's own parser; every counter moves by exactly what the requests did."""

from __future__ import annotations

import openai
import pytest

from nodes import running_nodes

from .api_expected import PROMPTS, greedy, user
from .metrics_support import scrape, total

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def client(demo_node):
    with openai.OpenAI(base_url=f"{demo_node.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_counters_move_by_what_the_requests_did(demo_node, demo_engine, client):
    instance = demo_node.instance["instance_id"]
    node = demo_node.node_id
    mine = {"instance": instance, "model": "demo", "node": node}
    before = scrape(demo_node)
    expected = [greedy(demo_engine, messages=user(p), max_tokens=MAX_TOKENS) for p in PROMPTS[:3]]
    for prompt in PROMPTS[:2]:
        client.chat.completions.create(
            model="demo", messages=user(prompt), temperature=0, max_tokens=MAX_TOKENS
        )
    streamed = client.chat.completions.create(
        model="demo", messages=user(PROMPTS[2]), temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected[2].text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=user("word " * 600))
    after = scrape(demo_node)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **mine, **labels) - total(before, name, **mine, **labels)

    out = sum(len(e.token_ids) for e in expected)
    assert moved("tandem_requests_total", outcome="ok") == 3
    assert moved("tandem_requests_total", outcome="rejected") == 1
    assert moved("tandem_requests_total") == 4
    assert moved("tandem_prompt_tokens_total") == sum(e.prompt_tokens for e in expected)
    assert moved("tandem_completion_tokens_total") == out
    assert moved("tandem_time_to_first_token_seconds_count") == 3
    assert moved("tandem_time_to_first_token_seconds_bucket", le="+Inf") == 3
    assert moved("tandem_time_to_first_token_seconds_sum") > 0
    assert moved("tandem_inter_token_latency_seconds_count") == out - 3
    assert total(after, "tandem_requests_in_flight", **mine) == 0
    assert total(after, "tandem_requests_waiting", **mine) == 0
    assert total(after, "tandem_kv_cache_slots", **mine) == demo_node.instance["num_slots"]
    kv = total(after, "tandem_kv_cache_bytes", instance=instance, model="demo", node=node, rank="0")
    assert kv > 0


def test_metrics_need_the_api_key_when_one_is_set(tmp_path):
    with running_nodes(tmp_path, 1, api_key="sesame") as (node,):
        assert node.http.get("/metrics").status_code == 200  # its client sends the key
        assert node.http.get("/metrics", headers={"Authorization": ""}).status_code == 401
