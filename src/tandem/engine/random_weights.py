"""Random weights for a stage built on the meta device: the benchmark's shapes need no
checkpoint. Speed does not depend on the values; normal(0, 0.02) keeps activations finite."""

from __future__ import annotations

import zlib

import torch

from tandem.engine.loader import finish_loading, load_weights
from tandem.engine.models.llama import CausalLM
from tandem.engine.quant.weight import QuantizedWeight
from tandem.model.config import ModelConfig
from tandem.model.quantization import load_time_format, parse_quantization

# What `quantize="fp8"` holds: the decoder projections in FP8 blocks of 128, as DeepSeek-V3 ships.
FP8_BLOCKS = parse_quantization(
    {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}
)


class RandomCheckpoint:
    """The part of `engine.checkpoint.Checkpoint` the loader uses, over tensors drawn when read:
    normal(0, 0.02) (norm weights 1), each from a generator seeded by its name, on `device`.
    Stacked experts are listed one tensor per expert, as the Hub stores them, so quantized
    experts are drawn and quantized one at a time: no 16-bit copy of a layer's experts (nor of
    the model) is ever made. With `fp8`, the decoder projections read as an FP8 checkpoint holds
    them (`weight` and `weight_scale_inv`, blocks of 128)."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        fp8: bool,
    ) -> None:
        self.device, self.dtype, self.seed = device, dtype, seed
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.fp8_modules: set[str] = set()
        for name, shape in shapes.items():
            self.shapes[name] = shape
            if fp8 and _is_projection(name, shape):
                module = name.removesuffix(".weight")
                self.fp8_modules.add(module)
                self.shapes[f"{module}.weight_scale_inv"] = (-(-shape[0] // 128), -(-shape[1] // 128))
        self.weight_map = dict.fromkeys(self.shapes)
        self._last: tuple[str, QuantizedWeight] | None = None  # the FP8 module just drawn

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def _draw(self, name: str) -> torch.Tensor:
        tensor = torch.empty(self.shapes[name], dtype=self.dtype, device=self.device)
        if name.endswith("norm.weight"):
            return tensor.fill_(1.0)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + zlib.crc32(name.encode()))
        return tensor.normal_(0.0, 0.02, generator=generator)

    def _fp8(self, module: str) -> QuantizedWeight:
        if self._last is None or self._last[0] != module:
            from tandem.engine.quant.quantize import quantize_fp8_blocks

            self._last = (module, quantize_fp8_blocks(self._draw(f"{module}.weight")))
        return self._last[1]

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        module, _, role = name.rpartition(".")
        if module in self.fp8_modules:
            fp8 = self._fp8(module)
            tensor = fp8.data if role == "weight" else fp8.scales
        else:
            tensor = self._draw(name)
        if rows is not None:
            tensor = tensor[rows]
        return tensor if columns is None else tensor[:, columns]


def _is_projection(name: str, shape: tuple[int, ...]) -> bool:
    """A decoder-layer linear projection (what an FP8 checkpoint stores in FP8; not the router)."""
    return (
        name.startswith("model.layers.")
        and name.endswith(".weight")
        and len(shape) == 2
        and not name.endswith(".gate.weight")
    )


def checkpoint_shapes(model: CausalLM) -> dict[str, tuple[int, ...]]:
    """The tensors a checkpoint of this (meta-device) stage holds, by name and shape: its
    parameters, the stacked experts as one tensor per expert."""
    stacked = model.checkpoint_sources()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, empty in model.state_dict().items():
        if name not in stacked:
            shapes[name] = tuple(empty.shape)
            continue
        for parts in stacked[name].parts:
            rows = empty.shape[1] // len(parts)
            shapes |= {part: (rows, *empty.shape[2:]) for part in parts}
    return shapes


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
    them quantized as a checkpoint in that format would: each tensor is drawn on `device` as
    the loader reads it (`RandomCheckpoint`), quantized and freed."""
    if quantize is None:
        return fill_random(model, device, dtype, seed)
    fp8 = quantize == "fp8"
    fmt = FP8_BLOCKS if fp8 else load_time_format(quantize)
    checkpoint = RandomCheckpoint(checkpoint_shapes(model), device, dtype, seed, fp8)
    load_weights(model, config, checkpoint, device, dtype, quantization=fmt)  # type: ignore[arg-type]
    return finish_loading(model, device, dtype)
