"""Random weights for a named shape, held in memory in Hugging Face naming, so the engine and
the `transformers` baseline can run the very same tensors without a checkpoint on disk."""

from __future__ import annotations

import torch

from tandem.engine.loader import load_weights
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec


class MemoryCheckpoint:
    """The part of `engine.checkpoint.Checkpoint` the loader uses, over a dict of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        tensor = self.tensors[name]
        if rows is not None:
            tensor = tensor[rows]
        return tensor if columns is None else tensor[:, columns]


def random_weights(
    config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Every tensor of the whole model: normal(0, 0.02) matrices, unit norms (speed does not
    depend on the values; wide values would only overflow)."""
    names = build_empty_model(config, StageSpec.whole(config.num_layers)).state_dict()
    generator = torch.Generator(device=device).manual_seed(seed)
    weights = {}
    for name, empty in names.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensor = torch.empty(empty.shape, dtype=dtype, device=device)
        if name.endswith("norm.weight"):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        weights[name] = tensor
    return weights


def engine_model(
    config: ModelConfig, weights: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> CausalLM:
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    load_weights(model, config, MemoryCheckpoint(weights), device, dtype)  # type: ignore[arg-type]
    model.reset_buffers(device)
    model.fuse_projections()
    return model.eval()


def transformers_model(raw_config: dict, device: torch.device, dtype: torch.dtype):
    """The `transformers` model of a shape with its own random weights, and those weights by
    name (the engine then loads the very same tensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(raw_config)
    model_type = config.pop("model_type")
    # transformers knows Kimi-K2 by its architecture, DeepSeek-V3's.
    hf_config = AutoConfig.for_model("deepseek_v3" if model_type == "kimi_k2" else model_type, **config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    return model, dict(model.state_dict())
