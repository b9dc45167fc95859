"""The paged KV cache through a 2-stage pipeline of runner processes: 32 concurrent requests with
their own settings get what they get alone, one step at a time and with two micro-batches in
flight (the default for 2 stages), and the cache counters reach the node."""

from __future__ import annotations

import pytest

from engine.test_paged_cache import alone, varied_requests
from runner_processes import generate_all, start_instance, stop
from tandem.protocol.runner import Generate, GenerateRequest, Ready, Rejected
from tandem.settings import EngineOptions


@pytest.mark.parametrize(
    ("max_prefill_tokens", "micro_batches"), [(5, None), (64, None), (5, 1), (64, 1), (64, 3)]
)
def test_32_concurrent_requests_through_a_two_stage_pipeline(
    checkpoint_factory, max_prefill_tokens, micro_batches
):
    checkpoint = checkpoint_factory("llama-gqa")
    requests = varied_requests(32, checkpoint.config["vocab_size"], seed=6)
    expected = alone(checkpoint.path, requests)
    runners = start_instance(
        checkpoint.path,
        checkpoint.config["num_hidden_layers"],
        (1, 1),
        max_prefill_tokens=max_prefill_tokens,
        options=EngineOptions(micro_batches=micro_batches),
    )
    try:
        assert all(isinstance(runner.next_event(), Ready) for runner in runners)
        driver = runners[0]
        prompts = {str(index): prompt for index, (prompt, _) in enumerate(requests)}
        settings = {str(index): params for index, (_, params) in enumerate(requests)}
        tokens = generate_all(driver, prompts, settings)
        assert [tokens[str(index)] for index in range(len(requests))] == expected
        # The counters reach the node: every block free again once the engine is idle.
        driver.send(Generate("empty", GenerateRequest(prompt_ids=())))
        assert isinstance(driver.next_event(), Rejected)  # read after the last cache report
        assert driver.cache is not None and driver.cache.blocks_free == driver.cache.blocks_total
        assert driver.cache.prefix_hits > 0
    finally:
        stop(runners)
