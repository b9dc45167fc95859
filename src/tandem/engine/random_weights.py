"""Random weights for a stage built on the meta device: the benchmark's shapes need no
checkpoint. Speed does not depend on the values; normal(0, 0.02) keeps activations finite."""

from __future__ import annotations

import torch

from tandem.engine.loader import finish_loading, load_weights
from tandem.engine.models.llama import CausalLM
from tandem.model.config import ModelConfig
from tandem.model.quantization import QuantFormat, load_time_format, parse_quantization

# What `quantize="fp8"` holds: the decoder projections in FP8 blocks of 128, as DeepSeek-V3 ships.
FP8_BLOCKS = parse_quantization(
    {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}
)


class MemoryCheckpoint:
    """The part of `engine.checkpoint.Checkpoint` the loader uses, over a dict of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.weight_map = dict.fromkeys(tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        tensor = self.tensors[name]
        if rows is not None:
            tensor = tensor[rows]
        return tensor if columns is None else tensor[:, columns]


def fill_random(model: CausalLM, device: torch.device, dtype: torch.dtype, seed: int) -> CausalLM:
    """Materialize a meta-device model (or a rank's shard) on `device` in `dtype` with random
    weights (unit norms), then fuse its projections, as loading a checkpoint would."""
    model = model.to(dtype).to_empty(device=device)  # in `dtype` from the start: no float32 copy
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.reset_buffers(device)
    model.fuse_projections()
    return model.eval()


def random_stage(
    model: CausalLM,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    quantize: str | None,
) -> CausalLM:
    """A meta-device stage (or shard) with random weights; `quantize` (int8, int4, fp8) holds
    them quantized as a checkpoint in that format would (the dense tensors, drawn on `device`,
    are quantized as they load and freed)."""
    if quantize is None:
        return fill_random(model, device, dtype, seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for name, empty in model.state_dict().items():
        tensor = torch.empty(tuple(empty.shape), dtype=dtype, device=device)
        tensors[name] = (
            tensor.fill_(1.0)
            if name.endswith("norm.weight")
            else tensor.normal_(0.0, 0.02, generator=generator)
        )
    fmt: QuantFormat | None
    if quantize == "fp8":
        tensors, fmt = fp8_block_weights(tensors), FP8_BLOCKS
    else:
        fmt = load_time_format(quantize)
    load_weights(model, config, MemoryCheckpoint(tensors), device, dtype, quantization=fmt)  # type: ignore[arg-type]
    del tensors
    return finish_loading(model, device, dtype)


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
