"""32 concurrent streaming clients on the CPU demo model: no error, and every stream carries
exactly the engine's greedy text and token count (nothing lost, nothing duplicated). The
throughput and latency it measured are printed (run with -s); docs/api.md records them."""

from __future__ import annotations

import asyncio

from .api_expected import PROMPTS, greedy, user
from .api_load import run_load

CLIENTS = 32  # the demo instance has 8 slots: 24 requests wait, within the default queue limit
ROUNDS = 2
MAX_TOKENS = 48


def test_32_concurrent_streams_are_exact(demo_node, demo_engine):
    """In float32: in bfloat16 a near-tie may flip with the batch (tests/api/conftest.py)."""
    expected = {p: greedy(demo_engine, messages=user(p), max_tokens=MAX_TOKENS) for p in PROMPTS}
    model = demo_node.instance["instance_id"]
    report = asyncio.run(run_load(demo_node.url, model, PROMPTS, CLIENTS, ROUNDS, MAX_TOKENS))
    print(f"\n{report.summary(CLIENTS)}")
    assert len(report.results) == CLIENTS * ROUNDS
    for result in report.results:
        assert result.text == expected[result.prompt].text, result.prompt
        assert result.completion_tokens == len(expected[result.prompt].token_ids)
