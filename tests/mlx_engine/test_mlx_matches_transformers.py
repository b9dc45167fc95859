"""The MLX engine (on MLX's CPU backend, float32) against `transformers`: greedy tokens
identical and logits within float tolerance, for every supported family; stages that load only
their own tensors; several prompts at once getting what each gets alone."""

from __future__ import annotations

import itertools

import pytest
from mlx_support import (
    assert_logits_close,
    random_prompts,
    reference_greedy,
    reference_logits,
    require_mlx,
)

require_mlx()

from tandem.engine.blocks import BLOCK_SIZE  # noqa: E402
from tandem.errors import UnsupportedModelError  # noqa: E402
from tandem.mlx.engine import MLXStageEngine  # noqa: E402
from tandem.model.config import load_model_config  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.model.stage import LayerRange, StageSpec  # noqa: E402
from tandem.model.step import SequenceChunk, StepPlan  # noqa: E402
from tandem.runner.assemble import create_local_engine  # noqa: E402

NEW_TOKENS = 40
PROMPT_LENGTHS = (1, 7, 19)  # 19 > the Mistral test window of 8


def prompt_plan(prompt: list[int]) -> StepPlan:
    return StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(prompt), sample=True),))


def test_greedy_tokens_equal_transformers(checkpoint_factory, family):
    checkpoint = checkpoint_factory(family)
    # max_prefill_tokens=6: the 7- and 19-token prompts go in chunks, the later ones from the cache
    engine = create_local_engine(
        checkpoint.path, engine="mlx", device="cpu", dtype="float32", max_prefill_tokens=6
    )
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for prompt in random_prompts(PROMPT_LENGTHS, checkpoint.config["vocab_size"], seed=1):
        ours = [event.token_id for event in engine.generate(prompt, params)]
        assert ours == reference_greedy(checkpoint.model, prompt, NEW_TOKENS), (
            f"{family}: prompt of {len(prompt)} tokens diverged"
        )


def test_last_position_logits_match(checkpoint_factory, family):
    checkpoint = checkpoint_factory(family)
    engine = MLXStageEngine.load(checkpoint.path, None, num_slots=1, max_context=64, device="cpu")
    for prompt in random_prompts(PROMPT_LENGTHS, checkpoint.config["vocab_size"], seed=2):
        logits = engine.forward(prompt_plan(prompt))  # [1, vocab]
        assert logits.dtype.is_floating_point and tuple(logits.shape) == (1, checkpoint.config["vocab_size"])
        assert_logits_close(logits[0], reference_logits(checkpoint.model, prompt)[-1])


@pytest.mark.parametrize("cuts", [(1,), (2,), (1, 3)])
def test_stages_hold_only_their_share_and_compose(checkpoint_factory, cuts):
    checkpoint = checkpoint_factory("qwen2.5-tied", max_shard_size="20KB")
    config = load_model_config(checkpoint.path)
    bounds = [0, *cuts, config.num_layers]
    stages = [
        MLXStageEngine.load(
            checkpoint.path, StageSpec(LayerRange(a, b), config.num_layers), 1, 64, device="cpu"
        )
        for a, b in itertools.pairwise(bounds)
    ]
    prompt = random_prompts((19,), config.vocab_size, seed=3)[0]
    hidden = None
    for stage in stages:
        hidden = stage.forward(prompt_plan(prompt), hidden)
    assert_logits_close(hidden[0], reference_logits(checkpoint.model, prompt)[-1])
    # Each stage holds its layers, plus the embedding (first) or the norm and head (last; a tied
    # head is a copy of the embedding there), in float32.
    for stage in stages:
        expected = len(stage.stage.layers) * config.layer_parameter_count()
        expected += config.embedding_parameter_count() if stage.stage.is_first else 0
        expected += config.head_parameter_count() if stage.stage.is_last else 0
        report = stage.report()
        assert (report.engine, report.device) == ("mlx", "cpu")
        assert report.parameter_bytes == 4 * expected
        positions = 64 + BLOCK_SIZE  # one sequence of 64 tokens in blocks, and the scratch block
        assert (
            report.kv_cache_bytes
            == 2 * len(stage.stage.layers) * config.num_kv_heads * positions * config.head_dim * 4
        )


def test_a_stage_reads_only_the_files_it_owns(checkpoint_factory, tmp_path):
    """A middle stage needs neither the embedding's nor the head's shards: with them gone (and
    the other layers' shards), it loads and computes what the whole model computes there."""
    import shutil

    from tandem.engine.checkpoint import Checkpoint

    source = checkpoint_factory("llama-gqa", max_shard_size="20KB")
    copy = tmp_path / "middle"
    shutil.copytree(source.path, copy)
    config = load_model_config(copy)
    stage = StageSpec(LayerRange(1, 2), config.num_layers)
    checkpoint = Checkpoint(copy)
    owned = {name for name in checkpoint.weight_map if name.startswith("model.layers.1.")}
    needed = checkpoint.files_for(sorted(owned))
    removed = {path for path in checkpoint.weight_map.values() if path not in needed}
    assert removed, "the test checkpoint should have shards the middle stage does not need"
    for path in removed:
        path.unlink()
    engine = MLXStageEngine.load(copy, stage, 1, 32, device="cpu")
    assert engine.report().parameter_bytes == 4 * config.layer_parameter_count()


def test_concurrent_sequences_match_sequential_runs(checkpoint_factory):
    from mlx_support import run_together

    checkpoint = checkpoint_factory("qwen3-qknorm")
    # Three slots for five requests: later ones wait for a slot, prefill chunks interleave with
    # decode; a budget of 12 puts short prompts in one padded step and chunks the long ones.
    engine = create_local_engine(
        checkpoint.path, engine="mlx", device="cpu", num_slots=3, max_prefill_tokens=12
    )
    prompts = random_prompts((3, 11, 6, 9, 2, 25), checkpoint.config["vocab_size"], seed=4)
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    expected = [reference_greedy(checkpoint.model, prompt, 10) for prompt in prompts]
    assert run_together(engine, prompts, params) == expected
    assert engine.cache_stats().blocks_free == engine.cache_stats().blocks_total


def test_sampling_is_shared_with_the_torch_engine(checkpoint_factory):
    """Seeded sampling with penalties and log-probabilities: the same tokens as the PyTorch
    engine, since both sample (in torch) from the same logits."""

    checkpoint = checkpoint_factory("llama-gqa")
    params = SamplingParams(
        max_tokens=12, temperature=0.8, top_p=0.9, seed=7, repetition_penalty=1.2, logprobs=2, ignore_eos=True
    )
    prompt = random_prompts((5,), checkpoint.config["vocab_size"], seed=5)[0]
    events = {}
    for name in ("mlx", "torch"):
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", engine=name)
        events[name] = list(engine.generate(prompt, params))
    assert [e.token_id for e in events["mlx"]] == [e.token_id for e in events["torch"]]
    for ours, theirs in zip(events["mlx"], events["torch"], strict=True):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-4)


def test_run_ahead_feeds_tokens_on_the_first_stage(checkpoint_factory):
    """The executor's run-ahead path feeds decode steps the previous step's tokens (`feed`)."""
    from tandem.engine.engine import LLMEngine
    from tandem.engine.executor import LocalExecutor

    checkpoint = checkpoint_factory("mistral-window")
    stage = MLXStageEngine.load(checkpoint.path, None, 2, 64, device="cpu")
    engine = LLMEngine(LocalExecutor(stage, run_ahead=True), None, frozenset(), 64, 2)
    prompt = random_prompts((9,), checkpoint.config["vocab_size"], seed=6)[0]
    params = SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True)
    assert [e.token_id for e in engine.generate(prompt, params)] == reference_greedy(
        checkpoint.model, prompt, 15
    )


def test_warm_up_then_serve(checkpoint_factory):
    checkpoint = checkpoint_factory("llama3-rope")
    config = load_model_config(checkpoint.path)
    for stage in (StageSpec(LayerRange(0, 2), 4), StageSpec(LayerRange(2, 4), 4)):
        MLXStageEngine.load(checkpoint.path, stage, 2, 32, device="cpu", config=config).warm_up()
    engine = create_local_engine(checkpoint.path, engine="mlx", device="cpu", num_slots=2, max_context=32)
    engine.executor.runner.warm_up()
    prompt = random_prompts((7,), config.vocab_size, seed=8)[0]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert [e.token_id for e in engine.generate(prompt, params)] == reference_greedy(
        checkpoint.model, prompt, 8
    )


def test_unexpressible_variants_are_refused_in_one_line():
    from tandem.mlx.model import StageModel
    from tandem.model.config import parse_model_config

    raw = {
        "model_type": "qwen3",
        "vocab_size": 32,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 8,
        "attention_bias": True,
    }
    with pytest.raises(UnsupportedModelError, match="does not support qwen3 with attention_bias"):
        StageModel(parse_model_config(raw), StageSpec.whole(1))
