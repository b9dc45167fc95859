"""MLX's affine-quantized checkpoints, read with torch and numpy alone (no mlx import).

What `mlx_lm.convert(..., quantize=True, q_bits=b, q_group_size=g)` writes, and Mac users
download: for each quantized Linear or Embedding `name`,
- `name.weight`: uint32 [rows, columns * b / 32], the b-bit codes of each row as one
  little-endian bit stream (code i occupies stream bits [i*b, (i+1)*b); for b in 2, 4, 8 that is
  32/b codes per word, lowest bits first);
- `name.scales`, `name.biases`: [rows, columns / g] in the model's float dtype;
- weight[r, c] = scales[r, c // g] * code[r, c] + biases[r, c // g], rounded to that dtype
  after the product and again after the sum (as MLX computes it, so the values agree bit for bit).
`config.json` holds `"quantization": {"group_size": g, "bits": b, "mode": "affine"}`, plus
per-module entries (a dict of other settings, or false for a module kept in float) where a
recipe mixes them.

`DequantizingCheckpoint` serves such a checkpoint to the PyTorch loader as plain float tensors
(dequantized on reading): `open_checkpoint` is how every PyTorch load opens a directory, so one
download serves a Mac's MLX stage and an NVIDIA node's PyTorch stage. (A compact PyTorch form
that keeps `unpack_codes` and the scales instead is left for later.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tandem.engine.checkpoint import Checkpoint
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import read_config_json

AFFINE_BITS = (2, 3, 4, 5, 6, 8)
WORD_BITS = 32


@dataclass(frozen=True)
class AffineParams:
    """How one tensor is quantized: `bits` per code, one scale and bias per `group_size` columns."""

    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in AFFINE_BITS:
            raise UnsupportedModelError(
                f"quantization bits {self.bits} are not supported; supported: "
                f"{', '.join(map(str, AFFINE_BITS))}"
            )
        if self.group_size < 1:
            raise ModelFormatError(f"quantization group_size must be positive, got {self.group_size}")


@dataclass(frozen=True)
class AffineScheme:
    """The `quantization` entry of a checkpoint's config.json."""

    default: AffineParams
    # module name (e.g. "model.layers.0.mlp.down_proj") -> its own params, or None: kept in float
    modules: dict[str, AffineParams | None] = field(default_factory=dict)

    def params_for(self, module: str) -> AffineParams | None:
        """The params a module's weight was quantized with, by the config (None: not listed as
        float). Whether it is quantized at all is whether the checkpoint holds its scales."""
        return self.modules.get(module, self.default)


def _params(entry: Any, where: str) -> AffineParams:
    mode = entry.get("mode", "affine")
    if mode != "affine":
        raise UnsupportedModelError(
            f"quantization mode {mode!r} ({where}) is not supported; supported: affine"
        )
    try:
        return AffineParams(bits=int(entry["bits"]), group_size=int(entry["group_size"]))
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(
            f"config.json quantization ({where}) needs integer bits and group_size"
        ) from None


def read_affine_scheme(raw: dict[str, Any]) -> AffineScheme | None:
    """The affine quantization a raw config.json describes, or None for a float checkpoint."""
    entry = raw.get("quantization")
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ModelFormatError("config.json quantization must be an object")
    default = _params(entry, "default")
    modules: dict[str, AffineParams | None] = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            modules[key] = _params(value, key)
        elif value is False:
            modules[key] = None
    return AffineScheme(default, modules)


def unpack_codes(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """uint8 codes [rows, columns] from packed uint32 words [rows, columns * bits / 32]."""
    rows, words = packed.shape
    if words * WORD_BITS != columns * bits:
        raise ModelFormatError(f"a packed row of {words} words does not hold {columns} codes of {bits} bits")
    as_int = packed.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # [rows, words], unsigned
    if WORD_BITS % bits == 0:
        shifts = torch.arange(0, WORD_BITS, bits, dtype=torch.int64)  # [codes per word]
        codes = (as_int[:, :, None] >> shifts) & ((1 << bits) - 1)  # [rows, words, per word]
        return codes.reshape(rows, columns).to(torch.uint8)
    # 3, 5 and 6 bits cross word boundaries: read the row as one little-endian bit stream.
    byte_shifts = torch.arange(0, WORD_BITS, 8, dtype=torch.int64)
    row_bytes = ((as_int[:, :, None] >> byte_shifts) & 0xFF).reshape(rows, -1)  # [rows, bytes]
    stream = (row_bytes[:, :, None] >> torch.arange(8, dtype=torch.int64)) & 1  # [rows, bytes, 8]
    code_bits = stream.reshape(rows, columns, bits)  # [rows, columns, bits], lowest bit first
    weights = 1 << torch.arange(bits, dtype=torch.int64)
    return (code_bits * weights).sum(-1).to(torch.uint8)


def dequantize(
    packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, params: AffineParams
) -> torch.Tensor:
    """The float weight [rows, columns] (in the scales' dtype) of one affine-quantized tensor."""
    rows, groups = scales.shape
    columns = groups * params.group_size
    if biases.shape != scales.shape or packed.shape[0] != rows:
        raise ModelFormatError(
            f"quantized weight rows {packed.shape[0]}, scales {tuple(scales.shape)} and biases "
            f"{tuple(biases.shape)} do not match"
        )
    if packed.shape[1] * WORD_BITS != columns * params.bits:
        raise ModelFormatError(
            f"{packed.shape[1]} words of {params.bits}-bit codes per row do not match {groups} "
            f"groups of {params.group_size} columns"
        )
    codes = unpack_codes(packed, params.bits, columns).to(scales.dtype)
    grouped = codes.view(rows, groups, params.group_size)  # [rows, groups, group_size]
    # Two roundings, product then sum, as MLX computes it (exact in float32, and in 16-bit dtypes).
    weight = grouped * scales[:, :, None] + biases[:, :, None]
    return weight.view(rows, columns)


class DequantizingCheckpoint(Checkpoint):
    """A checkpoint whose affine-quantized weights read as float tensors of their logical shape;
    everything else reads as stored. Their `.scales` and `.biases` stay behind it (a stage's
    download asks for them beside the weight: `has_companion_tensors`)."""

    has_companion_tensors = True

    def __init__(self, model_dir: str | Path, scheme: AffineScheme) -> None:
        super().__init__(model_dir)
        self.scheme = scheme

    def _quantized(self, name: str) -> AffineParams | None:
        module, _, leaf = name.rpartition(".")
        if leaf != "weight" or f"{module}.scales" not in self.weight_map:
            return None
        params = self.scheme.params_for(module)
        if params is None:
            raise ModelFormatError(f"{module} has scales, but config.json lists it as not quantized")
        return params

    def shape(self, name: str) -> tuple[int, ...]:
        params = self._quantized(name)
        if params is None:
            return super().shape(name)
        rows, words = super().shape(name)
        return rows, words * WORD_BITS // params.bits

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        params = self._quantized(name)
        if params is None:
            return super().read(name, rows, columns)
        module = name.rpartition(".")[0]
        # A block of rows needs only those rows of the codes, scales and biases.
        weight = dequantize(
            super().read(name, rows),
            super().read(f"{module}.scales", rows),
            super().read(f"{module}.biases", rows),
            params,
        )
        return weight if columns is None else weight[:, columns]


def open_checkpoint(model_dir: str | Path) -> Checkpoint:
    """The PyTorch engine's view of a checkpoint directory: an MLX affine checkpoint's weights
    dequantized as they are read, any other checkpoint as stored."""
    scheme = read_affine_scheme(read_config_json(Path(model_dir) / "config.json"))
    return Checkpoint(model_dir) if scheme is None else DequantizingCheckpoint(model_dir, scheme)
