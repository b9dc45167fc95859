"""Build one stage of a model and fill it with only the tensors that stage owns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tandem.engine.affine import open_checkpoint
from tandem.engine.checkpoint import Checkpoint, StackedSource
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.engine.quant.linear import QuantizedEmbedding, QuantizedLinear
from tandem.engine.quant.loading import load_quantized, prepare_quantized, quantize_modules, stage_format
from tandem.errors import ModelFormatError
from tandem.model.config import ModelConfig, load_model_config
from tandem.model.quantization import QuantFormat
from tandem.model.stage import StageSpec

TIED_HEAD = ("lm_head.weight", "model.embed_tokens.weight")


@dataclass(frozen=True)
class TensorSlice:
    """Which block of a checkpoint tensor a parameter holds (tensor parallelism reads blocks).

    `rows` may be several row blocks, read one after another and stacked (a tensor-parallel rank
    that must repeat a key/value head reads its rows twice)."""

    rows: slice | tuple[slice, ...] | None = None
    columns: slice | None = None

    def read(self, checkpoint: Checkpoint, name: str) -> torch.Tensor:
        if not isinstance(self.rows, tuple):
            return checkpoint.read(name, self.rows, self.columns)
        return torch.cat([checkpoint.read(name, rows, self.columns) for rows in self.rows])


# Maps a parameter name to the block of its checkpoint tensor it holds; None: the whole tensor.
SliceRule = Callable[[str], TensorSlice | None]


# The model's `checkpoint_sources()`: parameter name -> how to assemble it.
StackedSources = dict[str, StackedSource]


def checkpoint_name(name: str, config: ModelConfig, checkpoint: Checkpoint) -> str:
    """The checkpoint tensor that fills parameter `name`: a tied head reads the embedding, and a
    checkpoint saved from the bare decoder (sentence-transformers saves embedding models such as
    Qwen3-Embedding that way) names its tensors without the `model.` prefix."""
    if name in checkpoint:
        return name
    if name == TIED_HEAD[0] and config.tie_word_embeddings:
        return checkpoint_name(TIED_HEAD[1], config, checkpoint)
    bare = name.removeprefix("model.")
    return bare if bare != name and bare in checkpoint else name


def _sources(model: torch.nn.Module) -> StackedSources:
    method = getattr(model, "checkpoint_sources", None)
    return method() if method is not None else {}


def stage_tensor_names(model: torch.nn.Module, config: ModelConfig, checkpoint: Checkpoint) -> list[str]:
    """The checkpoint tensors a built (empty) stage needs; a quantized module's several tensors
    (packed values, scales, zero points) are found under its name."""
    stacked = _sources(model)
    names: set[str] = set()
    for name in model.state_dict():
        if name in stacked and name not in checkpoint:
            names.update(part for entry in stacked[name].parts for part in entry)
        else:
            names.add(checkpoint_name(name, config, checkpoint))
    if config.quantization is not None or checkpoint.has_companion_tensors:
        modules = {name.rsplit(".", 1)[0] for name in names}
        names |= {name for name in checkpoint.weight_map if name.rsplit(".", 1)[0] in modules}
    return sorted(names)


def _read_stacked(
    checkpoint: Checkpoint,
    name: str,
    source: StackedSource,
    empty: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Parameter `name` filled entry by entry, straight into its place on `device` (a stage's
    experts never sit whole in host memory as well)."""
    entries = source.parts
    if len(entries) != empty.shape[0]:
        raise ModelFormatError(f"{name}: {len(entries)} entries for a first dimension of {empty.shape[0]}")
    out = torch.empty(tuple(empty.shape), device=device, dtype=dtype)
    for index, parts in enumerate(entries):
        row = 0
        for part in parts:
            tensor = checkpoint.read(part)
            rows = tensor.shape[0] if tensor.dim() else 0
            if tensor.dim() != empty.dim() - 1 or tuple(tensor.shape[1:]) != tuple(empty.shape[2:]):
                raise ModelFormatError(
                    f"tensor {part} has shape {tuple(tensor.shape)} in the checkpoint, but the config "
                    f"implies rows of {tuple(empty.shape[2:])}"
                )
            out[index, row : row + rows].copy_(tensor)
            row += rows
        if row != empty.shape[1]:
            raise ModelFormatError(
                f"tensors {', '.join(parts)} hold {row} rows in the checkpoint, but the config implies {empty.shape[1]}"
            )
    return out


def load_weights(
    model: torch.nn.Module,
    config: ModelConfig,
    checkpoint: Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    slice_rule: SliceRule | None = None,
    quantization: QuantFormat | None = None,
) -> None:
    """Replace every meta parameter of `model` with its tensor from the checkpoint; with
    `quantization`, its quantized modules first take the place of the dense ones."""
    quantized = quantize_modules(model, quantization, checkpoint, dtype) if quantization else []
    stacked = _sources(model)
    keep_float32 = getattr(model, "float32_parameters", set)()
    tensors: dict[str, torch.Tensor] = {}
    for name, empty in model.state_dict().items():
        target = torch.float32 if name in keep_float32 else dtype
        if name in stacked and name not in checkpoint:
            tensors[name] = _read_stacked(checkpoint, name, stacked[name], empty, device, target)
            continue
        source = checkpoint_name(name, config, checkpoint)
        block = TensorSlice(rows=stacked[name].rows) if name in stacked else None
        block = slice_rule(name) if slice_rule and block is None else block
        full_shape = checkpoint.shape(source)
        tensor = block.read(checkpoint, source) if block else checkpoint.read(source)
        if tuple(tensor.shape) != tuple(empty.shape):
            detail = f" (a block of {full_shape})" if block else ""
            raise ModelFormatError(
                f"tensor {source} has shape {tuple(tensor.shape)}{detail} in the checkpoint, "
                f"but the config implies {tuple(empty.shape)}"
            )
        held = tensor.to(device=device, dtype=target)
        if (
            quantized
            and quantization is not None
            and quantization.is_load_time
            and held.data_ptr() == tensor.data_ptr()
        ):
            # Read straight from the file's memory map, it would keep every page of the 16-bit
            # file that quantizing touched counted in the process's memory: hold a copy instead.
            held = held.clone()
        tensors[name] = held
    model.load_state_dict(tensors, strict=True, assign=True)
    if quantization is not None and quantized:
        load_quantized(model, quantized, quantization, checkpoint, device, dtype, config, slice_rule)
    embedding, head = getattr(model.model, "embed_tokens", None), getattr(model, "lm_head", None)
    dense_ends = not isinstance(embedding, QuantizedEmbedding) and not isinstance(head, QuantizedLinear)
    if config.tie_word_embeddings and embedding is not None and head is not None and dense_ends:
        head.weight = embedding.weight  # one copy when a stage holds both ends of a tied model


def load_stage(
    model_dir: str | Path,
    stage: StageSpec | None,
    device: torch.device,
    dtype: torch.dtype,
    config: ModelConfig | None = None,
    quantize: str | None = None,
) -> CausalLM:
    """Load layers `stage.layers` (plus embedding and/or head for end stages); the whole model when
    `stage` is None. Only the owned tensors are read from disk. Quantized checkpoints keep their
    compact weights; `quantize` ("int8", "int4") quantizes a 16/32-bit checkpoint as it loads."""
    config = config or load_model_config(model_dir)
    stage = stage or StageSpec.whole(config.num_layers)
    quantization = stage_format(config, quantize)
    checkpoint = open_checkpoint(model_dir)
    model = build_empty_model(config, stage)
    try:
        load_weights(model, config, checkpoint, device, dtype, quantization=quantization)
    finally:
        checkpoint.close()
    return finish_loading(model, device, dtype)


def finish_loading(model: CausalLM, device: torch.device, dtype: torch.dtype) -> CausalLM:
    """After the weights: buffers, fused projections, quantized weights in their kernels' form."""
    model.reset_buffers(device)
    model.fuse_projections()
    prepare_quantized(model, device, dtype)
    return model.eval()


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters a process holds (what placement predicted for its share)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
