"""gpt-oss across a 2-stage pipeline of runner processes (gloo on loopback): each stage holds a
sliding-window and a full-attention layer with their sinks, and the greedy tokens are those of
`transformers`, prompts queued together sharing padded steps."""

from __future__ import annotations

import pytest

from runner.test_moe_pipeline import PROMPTS, reference_tokens
from runner_processes import generate_all, start_instance, stop
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Ready

NEW_TOKENS = 16


@pytest.mark.parametrize(
    ("family", "max_prefill_tokens"), [("gpt-oss-e5-top2", 5), ("gpt-oss-e7-top3-full-first", 40)]
)
def test_two_stages_decode_like_transformers(gpt_oss_checkpoint_factory, family, max_prefill_tokens):
    checkpoint = gpt_oss_checkpoint_factory(family)
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_instance(checkpoint.path, num_layers, (1, 1), max_prefill_tokens=max_prefill_tokens)
    try:
        ready = [runner.next_event(timeout=120) for runner in runners]
        assert all(isinstance(event, Ready) for event in ready), ready
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        tokens = generate_all(runners[0], PROMPTS, params)
        assert tokens == {rid: reference_tokens(checkpoint.model, ids) for rid, ids in PROMPTS.items()}
    finally:
        stop(runners)
