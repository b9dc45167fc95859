"""Build one stage of a FLUX.1 transformer and fill it with only the tensors that stage owns,
by name, from `transformer/diffusion_pytorch_model*.safetensors` (one file or sharded)."""

from __future__ import annotations

from pathlib import Path

import torch

from tandem.engine.checkpoint import Checkpoint
from tandem.engine.images.quantized import fill_quantized, hold_quantized
from tandem.engine.models.flux import FluxTransformerStage
from tandem.engine.models.meta import on_meta
from tandem.engine.quant.loading import prepare_quantized
from tandem.errors import ModelFormatError
from tandem.model.image_config import FluxTransformerConfig
from tandem.model.stage import StageSpec


def build_empty_stage(config: FluxTransformerConfig, stage: StageSpec) -> FluxTransformerStage:
    """The module tree of one stage with parameters on the meta device (no memory, no init)."""
    with on_meta():
        return FluxTransformerStage(config, stage)


def load_state(model: torch.nn.Module, checkpoint, device: torch.device, dtype: torch.dtype) -> None:
    """Replace every meta parameter of `model` with its tensor from `checkpoint`, by name
    (`checkpoint` reads like `engine.checkpoint.Checkpoint`)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, empty in model.state_dict().items():
        if name not in checkpoint:
            raise ModelFormatError(f"tensor {name} is missing from the transformer checkpoint")
        tensor = checkpoint.read(name)
        if tuple(tensor.shape) != tuple(empty.shape):
            raise ModelFormatError(
                f"tensor {name} has shape {tuple(tensor.shape)} in the checkpoint, "
                f"but the config implies {tuple(empty.shape)}"
            )
        tensors[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, strict=True, assign=True)


def load_transformer_stage(
    model_dir: str | Path,
    config: FluxTransformerConfig,
    stage: StageSpec | None,
    device: torch.device,
    dtype: torch.dtype,
    quantize: str | None = None,
) -> FluxTransformerStage:
    """Blocks `stage.layers` of the checkpoint's transformer (all of them when `stage` is None),
    with fused projections, ready to run. Only the stage's tensors are read from disk.
    `quantize` ("int8", "int4"; "fp8" for benchmarks) quantizes the blocks' projections as they
    are read (`engine/images/quantized.py`)."""
    stage = stage or StageSpec.whole(config.num_blocks)
    checkpoint = Checkpoint(Path(model_dir) / "transformer")
    model = fill_stage(build_empty_stage(config, stage), checkpoint, device, dtype, quantize)
    checkpoint.close()
    return model


def fill_stage(
    model: FluxTransformerStage,
    checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    quantize: str | None = None,
) -> FluxTransformerStage:
    """A built (empty) stage filled from `checkpoint` by name, its blocks' projections quantized
    as they are read where `quantize` asks, its projections fused, ready to run."""
    quantized = hold_quantized(model) if quantize else []
    load_state(model, checkpoint, device, dtype)
    if quantize:
        fill_quantized(model, quantized, checkpoint, quantize, device, dtype)
    model.fuse_projections()
    if quantize:
        prepare_quantized(model, device, dtype)  # CPUs: torch's packed int4 layout where it fits
    return model.eval()
