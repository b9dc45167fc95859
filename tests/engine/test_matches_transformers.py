"""The engine against `transformers`, the reference: greedy tokens identical, logits within
float tolerance, for every supported family, whole and split into layer ranges."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TEST_DEVICE, TEST_DTYPE
from tandem.engine.device import DTYPES
from tandem.engine.kv_cache import KVCache
from tandem.engine.loader import load_stage, parameter_bytes
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange, StageSpec
from tandem.runner.assemble import create_local_engine

NEW_TOKENS = 40
PROMPT_LENGTHS = (1, 7, 19)  # 19 > the Mistral test window of 8
LOGIT_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.15, "float16": 0.05}  # relative to the logit scale


def reference_model(checkpoint):
    dtype = DTYPES[TEST_DTYPE]
    return checkpoint.model.to(device=TEST_DEVICE, dtype=dtype)


def prompts(vocab_size: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def reference_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt], device=TEST_DEVICE)
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return output[0, len(prompt) :].tolist()


def assert_choices_within_rounding(model, prompt: list[int], ours: list[int]) -> None:
    """Reduced precision: two correct implementations round differently, so greedy paths may part
    where the top two logits nearly tie. Teacher-force our tokens through the reference: at every
    step our choice must be the reference's best, or within rounding of it."""
    with torch.inference_mode():
        logits = (
            model(torch.tensor([prompt + ours], device=TEST_DEVICE)).logits[0, len(prompt) - 1 : -1].float()
        )
    best = logits.max(-1).values
    chosen = logits.gather(-1, torch.tensor(ours, device=TEST_DEVICE)[:, None])[:, 0]
    margin = LOGIT_TOLERANCE[TEST_DTYPE] * logits.abs().max()
    assert bool(((best - chosen) <= margin).all()), f"worst gap {(best - chosen).max():.3g} > {margin:.3g}"


def test_greedy_tokens_equal_transformers(checkpoint_factory, family):
    checkpoint = checkpoint_factory(family)
    reference = reference_model(checkpoint)
    engine = create_local_engine(checkpoint.path, device=TEST_DEVICE, dtype=TEST_DTYPE, max_prefill_tokens=6)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for prompt in prompts(checkpoint.config["vocab_size"]):
        ours = [event.token_id for event in engine.generate(prompt, params)]
        if TEST_DTYPE == "float32":
            expected = reference_greedy(reference, prompt, NEW_TOKENS)
            assert ours == expected, f"{family}: prompt of {len(prompt)} tokens diverged"
        else:
            assert_choices_within_rounding(reference, prompt, ours)


def forward_logits(model, prompt: list[int]) -> torch.Tensor:
    cache = KVCache.for_model(model, num_blocks=4)
    positions = torch.arange(len(prompt), device=TEST_DEVICE)[None]
    blocks = torch.tensor([[2, 0, 3, 1]], device=TEST_DEVICE)  # 64 positions, out of order
    batch = model.attention_batch(positions, blocks, len(prompt))
    with torch.inference_mode():
        return model(torch.tensor([prompt], device=TEST_DEVICE), batch, cache)  # [T, vocab]


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    error = (ours.float() - expected.float()).abs().max().item()
    assert error <= LOGIT_TOLERANCE[TEST_DTYPE] * scale, f"max logit error {error:.3g} at scale {scale:.3g}"


def test_last_position_logits_match(checkpoint_factory, family):
    checkpoint = checkpoint_factory(family)
    reference = reference_model(checkpoint)
    ours = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    for prompt in prompts(checkpoint.config["vocab_size"], seed=2):
        with torch.inference_mode():
            expected = reference(torch.tensor([prompt], device=TEST_DEVICE)).logits[0]
        assert_logits_close(forward_logits(ours, prompt)[-1], expected[-1])


@pytest.mark.parametrize("cuts", [(1,), (2,), (1, 3)])
def test_layer_ranges_compose_to_the_whole_model(checkpoint_factory, cuts):
    checkpoint = checkpoint_factory("qwen2.5-tied", max_shard_size="20KB")
    num_layers = checkpoint.config["num_hidden_layers"]
    device, dtype = torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE]
    whole = load_stage(checkpoint.path, None, device, dtype)
    bounds = [0, *cuts, num_layers]
    stages = [
        load_stage(checkpoint.path, StageSpec(LayerRange(a, b), num_layers), device, dtype)
        for a, b in itertools.pairwise(bounds)
    ]
    prompt = prompts(checkpoint.config["vocab_size"])[2]
    positions = torch.arange(len(prompt), device=device)[None]
    hidden = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        for stage in stages:
            cache = KVCache.for_model(stage, num_blocks=4)
            blocks = torch.arange(4, device=device)[None]
            hidden = stage(hidden, stage.attention_batch(positions, blocks, len(prompt)), cache)
    assert_logits_close(hidden, forward_logits(whole, prompt))
    # Each stage holds its own layers, plus the embedding (first) or norm and head (last); the tied
    # head is a copy of the embedding on the last stage.
    config = whole.config
    element = torch.finfo(dtype).bits // 8
    for stage in stages:
        expected = len(stage.stage.layers) * config.layer_parameter_count()
        expected += config.embedding_parameter_count() if stage.stage.is_first else 0
        expected += config.head_parameter_count() if stage.stage.is_last else 0
        assert parameter_bytes(stage) == expected * element
    assert parameter_bytes(whole) == config.total_parameter_count() * element
