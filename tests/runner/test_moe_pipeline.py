"""Mixture-of-experts families across a 3-stage pipeline of runner processes (gloo on loopback):
the greedy tokens of one process, which are those of `transformers`."""

from __future__ import annotations

import pytest
import torch

from runner_processes import generate_all, start_instance, stop
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Ready

PROMPTS = {"a": [3, 1, 4, 1, 5, 9, 2, 6], "b": [2, 7, 1, 8], "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]}
NEW_TOKENS = 16


def reference_tokens(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return output[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    ("family", "max_prefill_tokens"),
    [
        ("deepseek-v3-qlora-groups", 5),  # stage 0 dense, then sparse; latent caches per stage
        ("kimi-k2", 40),  # prompts queued together share a padded step, down the ring
        ("qwen3-moe-step2-yarn", 5),  # tied head on the last stage, embedding on the first
        ("mixtral-window-e3-top1", 5),
    ],
)
def test_three_stages_decode_like_transformers(moe_checkpoint_factory, family, max_prefill_tokens):
    checkpoint = moe_checkpoint_factory(family)
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_instance(checkpoint.path, num_layers, (1, 1, 1), max_prefill_tokens=max_prefill_tokens)
    try:
        ready = [runner.next_event(timeout=120) for runner in runners]
        assert all(isinstance(event, Ready) for event in ready), ready
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        tokens = generate_all(runners[0], PROMPTS, params)
        assert tokens == {rid: reference_tokens(checkpoint.model, ids) for rid, ids in PROMPTS.items()}
    finally:
        stop(runners)
