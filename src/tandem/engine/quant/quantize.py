"""Load-time quantization (`--quantize int8|int4`): a checkpoint's 16- or 32-bit weight becomes a
`QuantizedWeight` as it is read, one tensor at a time.

- int8: one symmetric scale per output row, scale = max |w| / 127 (rounded to the model's
  dtype first), q = round(w / scale) in -127..127.
- int4: groups of `group_size` inputs (128 where the input size allows, see
  `tandem.model.quantization.group_size_for`), asymmetric over each group's range widened to
  include 0 (so zeros stay exact): scale = (max - min) / 15 rounded to the model's dtype,
  zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 15).
A weight dequantizes to (q - zero) × scale.
"""

from __future__ import annotations

import torch

from tandem.engine.quant.weight import QuantizedWeight, concatenate, pack_int4
from tandem.model.quantization import WeightScheme, group_size_for

CHUNK_ELEMENTS = 1 << 22  # weights quantized at a time (16 MB in fp32)
# Scales never fall below this (a row or group of zeros would otherwise divide by zero).
SMALLEST_SCALE = 1e-10


def quantize_int8_rows(weight: torch.Tensor, scale_dtype: torch.dtype) -> QuantizedWeight:
    """weight [out, in] → int8 with one symmetric scale per row."""
    w = weight.to(torch.float32)
    scale = (w.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(SMALLEST_SCALE).to(scale_dtype)  # [out, 1]
    q = torch.round(w / scale.float()).clamp(-127, 127).to(torch.int8)
    return QuantizedWeight("int8", tuple(w.shape), q, scale, w.shape[-1])


def quantize_int4_groups(weight: torch.Tensor, group_size: int, scale_dtype: torch.dtype) -> QuantizedWeight:
    """weight [out, in] → int4 in asymmetric groups of `group_size` inputs (which divide `in`)."""
    w = weight.to(torch.float32)
    out, inputs = w.shape
    groups = w.view(out, inputs // group_size, group_size)  # [out, groups, group_size]
    low = groups.amin(dim=-1).clamp(max=0)
    high = groups.amax(dim=-1).clamp(min=0)
    scale = ((high - low) / 15).clamp_min(SMALLEST_SCALE).to(scale_dtype)  # [out, groups]
    scale32 = scale.float()
    zero = torch.round(-low / scale32).clamp(0, 15)  # [out, groups]
    q = (torch.round(groups / scale32[..., None]) + zero[..., None]).clamp(0, 15)
    return QuantizedWeight(
        "int4",
        (out, inputs),
        pack_int4(q.view(out, inputs)),
        scale,
        group_size,
        zeros=zero.to(torch.uint8),
    )


FP8_LARGEST = 448.0  # the largest float8_e4m3fn


def quantize_fp8_blocks(weight: torch.Tensor, block: int = 128) -> QuantizedWeight:
    """weight [out, in] → FP8 e4m3 with one float32 scale per block × block (DeepSeek-V3's
    layout): scale = max |w| of the block / 448. For benchmarks and measurements; a checkpoint
    stored in FP8 is read as it is."""
    w = weight.to(torch.float32)
    out, inputs = w.shape
    rows, columns = -(-out // block), -(-inputs // block)
    padded = torch.nn.functional.pad(w, (0, columns * block - inputs, 0, rows * block - out))
    tiles = padded.view(rows, block, columns, block)
    scale = (tiles.abs().amax(dim=(1, 3)) / FP8_LARGEST).clamp_min(SMALLEST_SCALE)  # [rows, columns]
    expanded = scale.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inputs]
    data = (w / expanded).to(torch.float8_e4m3fn)
    return QuantizedWeight("fp8", (out, inputs), data, scale, block, block)


def quantize_weight(weight: torch.Tensor, scheme: WeightScheme, scale_dtype: torch.dtype) -> QuantizedWeight:
    """A dense weight [out, in] in the load-time `scheme` (int8 rows or int4 groups), quantized a
    chunk of rows at a time (a vocabulary-sized table would otherwise need a whole fp32 copy)."""
    if scheme.kind == "int8":
        quantize = lambda rows: quantize_int8_rows(rows, scale_dtype)  # noqa: E731
    elif scheme.kind == "int4":
        group = group_size_for(weight.shape[-1], scheme.group_size or weight.shape[-1])
        quantize = lambda rows: quantize_int4_groups(rows, group, scale_dtype)  # noqa: E731
    else:
        raise ValueError(f"load-time quantization makes int8 or int4 weights, not {scheme.kind}")
    step = max(CHUNK_ELEMENTS // max(weight.shape[-1], 1), 1)
    chunks = [quantize(weight[start : start + step]) for start in range(0, weight.shape[0], step)]
    return chunks[0] if len(chunks) == 1 else concatenate(chunks)
