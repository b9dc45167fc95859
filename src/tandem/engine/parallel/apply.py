"""Tensor parallelism applied to a finished single-device model, and loading a rank's shard.

The model code knows nothing of it: `apply_tensor_parallel` rewrites a model built on the meta
device with its family's plan (a `*_tp.py` beside the model), and the loader then reads only the
blocks of the checkpoint's tensors that this rank holds.

From Python, in a process group that `torch.distributed.init_process_group` started (torchrun,
or any rendezvous), every rank runs:

    group = TensorParallelGroup.from_process_group()
    model = load_tensor_parallel_stage(model_dir, None, group, torch.device(f"cuda:{rank}"), torch.bfloat16)

and then the same forward passes in the same order (each layer's collectives pair up across ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tandem.engine.affine import open_checkpoint
from tandem.engine.loader import SliceRule, TensorSlice, finish_loading, load_weights
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.engine.models.llama_tp import shard_llama
from tandem.engine.models.moe_tp import shard_mixture
from tandem.engine.parallel.group import AllReduce, TensorParallelGroup
from tandem.engine.parallel.layers import (
    QuantizedRowParallelLinear,
    QuantizedVocabParallelEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from tandem.engine.quant.loading import stage_format
from tandem.errors import UnsupportedModelError
from tandem.model.config import ModelConfig, load_model_config
from tandem.model.stage import StageSpec

# model_type -> the plan that shards a meta-device model of that family for one rank.
TENSOR_PARALLEL_PLANS: dict[str, Callable[[CausalLM, TensorParallelGroup], dict[str, TensorSlice]]] = {
    "llama": shard_llama,
    "mistral": shard_llama,
    "qwen2": shard_llama,
    "qwen3": shard_llama,
    "mixtral": shard_mixture,
    "qwen3_moe": shard_mixture,
    "deepseek_v3": shard_mixture,
    "kimi_k2": shard_mixture,
}


def apply_tensor_parallel(model: CausalLM, group: TensorParallelGroup) -> SliceRule:
    """Rewrite `model` (built on the meta device, not yet loaded) into this rank's shard; returns
    the loader's slice rule: which block of each checkpoint tensor each parameter holds."""
    plan = TENSOR_PARALLEL_PLANS.get(model.config.model_type)
    if plan is None:
        raise UnsupportedModelError(f"no tensor-parallel plan for model_type {model.config.model_type!r}")
    if any(parameter.device.type != "meta" for parameter in model.parameters()):
        raise ValueError("apply_tensor_parallel rewrites a model built on the meta device, before loading")
    slices = plan(model, group)
    return slices.get


def load_tensor_parallel_stage(
    model_dir: str | Path,
    stage: StageSpec | None,
    group: TensorParallelGroup,
    device: torch.device,
    dtype: torch.dtype,
    config: ModelConfig | None = None,
    quantize: str | None = None,
) -> CausalLM:
    """This rank's shard of layers `stage.layers` (the whole model when `stage` is None), reading
    only its blocks of the checkpoint (a quantized weight is read whole, then cut to its block).
    A group of one rank loads the plain stage."""
    config = config or load_model_config(model_dir)
    stage = stage or StageSpec.whole(config.num_layers)
    quantization = stage_format(config, quantize)
    model = build_empty_model(config, stage)
    slice_rule = apply_tensor_parallel(model, group) if group.size > 1 else None
    checkpoint = open_checkpoint(model_dir)
    try:
        load_weights(model, config, checkpoint, device, dtype, slice_rule, quantization)
    finally:
        checkpoint.close()
    return finish_loading(model, device, dtype)


def use_all_reduce(model: torch.nn.Module, all_reduce: AllReduce) -> None:
    """Make every tensor-parallel layer of a loaded shard call `all_reduce` from now on (for an
    all-reduce that needs the model's buffers to exist before it can be built)."""
    for module in model.modules():
        if isinstance(
            module,
            RowParallelLinear
            | QuantizedRowParallelLinear
            | VocabParallelEmbedding
            | QuantizedVocabParallelEmbedding,
        ):
            module.all_reduce = all_reduce
