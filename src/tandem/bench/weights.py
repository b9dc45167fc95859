"""Random weights for a named shape, held in memory in Hugging Face naming, so the engine and
the `transformers` baseline can run the very same tensors without a checkpoint on disk."""

from __future__ import annotations

import torch

from tandem.engine.loader import load_weights
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.model.config import ModelConfig
from tandem.model.quantization import parse_quantization
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
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    quantize: str | None = None,
) -> CausalLM:
    """The engine's model over `weights`; `quantize`: int8 or int4 as `--quantize` loads them,
    or fp8 (the decoder projections in FP8 blocks of 128, as DeepSeek-V3 ships them)."""
    from tandem.engine.loader import finish_loading
    from tandem.engine.quant.loading import stage_format

    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    if quantize == "fp8":
        weights, quantization = fp8_block_weights(weights), FP8_BLOCKS
    else:
        quantization = stage_format(config, quantize)
    load_weights(model, config, MemoryCheckpoint(weights), device, dtype, quantization=quantization)  # type: ignore[arg-type]
    return finish_loading(model, device, dtype)


FP8_BLOCKS = parse_quantization(
    {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}
)


def fp8_block_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder layers' projections of `weights` as an FP8 checkpoint holds them (weight and
    weight_scale_inv); everything else as it is."""
    from tandem.engine.quant.quantize import quantize_fp8_blocks

    converted = {}
    for name, tensor in weights.items():
        if name.startswith("model.layers.") and tensor.dim() == 2:
            fp8 = quantize_fp8_blocks(tensor)
            module = name.removesuffix(".weight")
            converted[f"{module}.weight"], converted[f"{module}.weight_scale_inv"] = fp8.data, fp8.scales
        else:
            converted[name] = tensor
    return converted


def transformers_model(raw_config: dict, device: torch.device, dtype: torch.dtype):
    """The `transformers` model of a shape with its own random weights, and those weights by
    name (the engine then loads the very same tensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(raw_config)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    return model, dict(model.state_dict())
