"""Pipelines mixing engines in one process: MLX → MLX, PyTorch → MLX, MLX → PyTorch (and three
stages alternating), hidden states crossing as plain torch CPU tensors. Each decodes exactly
like `transformers`, concurrent batches of several prompts included."""

from __future__ import annotations

import itertools

import pytest
import torch
from mlx_support import (
    ChainedStages,
    assert_logits_close,
    chained_engine,
    load_stage_engine,
    random_prompts,
    reference_greedy,
    reference_logits,
    require_mlx,
    run_together,
)

require_mlx()

from tandem.model.config import load_model_config  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.model.stage import LayerRange, StageSpec  # noqa: E402
from tandem.model.step import SequenceChunk, StepPlan  # noqa: E402

PIPELINES = {
    "mlx-mlx": (("mlx", "mlx"), (2,)),
    "torch-mlx": (("torch", "mlx"), (1,)),
    "mlx-torch": (("mlx", "torch"), (3,)),
    "mlx-torch-mlx": (("mlx", "torch", "mlx"), (1, 2)),
}
MAX_CONTEXT = 64


def load_pipeline(model_dir, engines, cuts, num_slots):
    num_layers = load_model_config(model_dir).num_layers
    bounds = [0, *cuts, num_layers]
    return [
        load_stage_engine(engine, model_dir, StageSpec(LayerRange(a, b), num_layers), num_slots, MAX_CONTEXT)
        for engine, (a, b) in zip(engines, itertools.pairwise(bounds), strict=True)
    ]


@pytest.mark.parametrize("family", ["qwen2.5-tied", "mistral-window", "qwen3-qknorm"])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_mixed_pipeline_decodes_like_transformers(checkpoint_factory, family, pipeline):
    checkpoint = checkpoint_factory(family)
    engines, cuts = PIPELINES[pipeline]
    stages = load_pipeline(checkpoint.path, engines, cuts, num_slots=4)
    # Six requests on four slots with a budget of 20 tokens a prefill step: short prompts go
    # several in one padded step, the 30-token one in chunks, decode steps mix lengths (past
    # Mistral's window of 8), and finished sequences' slots are reused.
    engine = chained_engine(stages, num_slots=4, max_context=MAX_CONTEXT, max_prefill_tokens=20)
    prompts = random_prompts((5, 9, 1, 7, 30, 12), checkpoint.config["vocab_size"], seed=11)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    expected = [reference_greedy(checkpoint.model, prompt, 12) for prompt in prompts]
    assert run_together(engine, prompts, params) == expected
    # What crossed between stages: plain float32 CPU tensors [B, T, hidden].
    executor = engine.executor
    assert isinstance(executor, ChainedStages)
    crossed = executor.hidden_seen
    assert crossed and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in crossed)
    assert {t.shape[-1] for t in crossed} == {checkpoint.config["hidden_size"]}
    assert any(t.shape[0] > 1 and t.shape[1] > 1 for t in crossed), "no step held several prompts"


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_mixed_pipeline_logits_match(checkpoint_factory, pipeline):
    checkpoint = checkpoint_factory("llama3-rope")
    engines, cuts = PIPELINES[pipeline]
    stages = load_pipeline(checkpoint.path, engines, cuts, num_slots=1)
    prompt = random_prompts((19,), checkpoint.config["vocab_size"], seed=12)[0]
    plan = StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(prompt), sample=True),))
    hidden = None
    with torch.inference_mode():
        for stage in stages:
            hidden = stage.forward(plan, hidden)
    assert hidden is not None
    assert_logits_close(hidden[0], reference_logits(checkpoint.model, prompt)[-1])


def test_bfloat16_hidden_states_cross_as_their_bits(checkpoint_factory):
    """In bfloat16 (no numpy dtype) an MLX stage hands a PyTorch stage bfloat16 tensors, and
    the pipeline's tokens agree with each engine's own whole-model decode up to rounding."""
    checkpoint = checkpoint_factory("llama-gqa")
    num_layers = checkpoint.config["num_hidden_layers"]
    from tandem.engine.loader import load_stage
    from tandem.engine.model_runner import ModelRunner
    from tandem.mlx.engine import MLXStageEngine

    first = MLXStageEngine.load(
        checkpoint.path, StageSpec(LayerRange(0, 2), num_layers), 1, MAX_CONTEXT, "cpu", "bfloat16"
    )
    second = ModelRunner(
        load_stage(
            checkpoint.path, StageSpec(LayerRange(2, 4), num_layers), torch.device("cpu"), torch.bfloat16
        ),
        1,
        MAX_CONTEXT,
        use_graphs=False,
    )
    prompt = random_prompts((7,), checkpoint.config["vocab_size"], seed=13)[0]
    plan = StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(prompt), sample=True),))
    hidden = first.forward(plan)
    assert hidden.dtype == torch.bfloat16 and tuple(hidden.shape) == (1, 7, checkpoint.config["hidden_size"])
    with torch.inference_mode():
        logits = second.forward(plan, hidden)
    assert_logits_close(logits[0], reference_logits(checkpoint.model, prompt)[-1], tolerance=0.15)


def test_a_pytorch_stage_takes_an_mlx_stage_of_another_dtype(checkpoint_factory):
    """Each engine casts the hidden states it receives to its own dtype: MLX's CPU default is
    float32, a PyTorch CPU stage of a 16-bit checkpoint computes in bfloat16."""
    checkpoint = checkpoint_factory("llama-gqa")
    num_layers = checkpoint.config["num_hidden_layers"]
    from tandem.engine.loader import load_stage
    from tandem.engine.model_runner import ModelRunner
    from tandem.mlx.engine import MLXStageEngine

    first = MLXStageEngine.load(
        checkpoint.path, StageSpec(LayerRange(0, 2), num_layers), 1, MAX_CONTEXT, "cpu"
    )
    second = ModelRunner(
        load_stage(
            checkpoint.path, StageSpec(LayerRange(2, 4), num_layers), torch.device("cpu"), torch.bfloat16
        ),
        1,
        MAX_CONTEXT,
        use_graphs=False,
    )
    prompt = random_prompts((7,), checkpoint.config["vocab_size"], seed=17)[0]
    plan = StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(prompt), sample=True),))
    hidden = first.forward(plan)
    assert hidden.dtype == torch.float32
    with torch.inference_mode():
        logits = second.forward(plan, hidden)
    assert_logits_close(logits[0], reference_logits(checkpoint.model, prompt)[-1], tolerance=0.15)
