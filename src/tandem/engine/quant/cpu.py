"""Products on CPUs: torch's packed int4 and int8 kernels, and fp32 products over chunks of
dequantized (or 16-bit) weights where those kernels do not apply or are slower.

Measured on this repository's 2-core AVX2 machine (docs/results.md): for a few rows (decode)
the packed kernels and bf16 products stream the compact weights fastest; for many rows
(prefill) bf16 and the packed kernels fall well behind an fp32 product, so the weights are
widened to fp32 a chunk of rows at a time (never a whole fp32 copy of a matrix).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from tandem.engine.quant.weight import QuantizedWeight

# An int8 product of at least this many rows dequantizes chunks rather than using the packed kernel.
DEQUANTIZE_ROWS = 128
# Output features widened at a time: 1024 rows of a 4096-wide weight are 16 MB in fp32.
CHUNK_ELEMENTS = 1 << 22
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
INT4_ROW_MULTIPLE = 16  # it packs outputs 16 at a time


def _chunk_rows(in_features: int, multiple: int) -> int:
    rows = max(CHUNK_ELEMENTS // max(in_features, 1), 1)
    return max(rows // multiple, 1) * multiple


def upcast_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) computed in fp32 with `weight` widened a chunk at a time;
    x [M, in], weight [out, in] in 16 bits. Returns x's dtype."""
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    x32 = x.to(torch.float32)
    step = _chunk_rows(weight.shape[1], 1)
    for start in range(0, weight.shape[0], step):
        torch.matmul(x32, weight[start : start + step].to(torch.float32).T, out=out[:, start : start + step])
    if bias is not None:
        out += bias.to(torch.float32)
    return out.to(x.dtype)


def dequantized_product(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """x [M, in] (already in the weight's held input order) times the dequantized weight,
    in fp32, a chunk of outputs at a time. Returns x's dtype, [M, out]."""
    out = torch.empty(x.shape[0], weight.out_features, dtype=torch.float32, device=x.device)
    x32 = x.to(torch.float32)
    step = _chunk_rows(weight.in_features, weight.block_rows)
    for start in range(0, weight.out_features, step):
        chunk = weight.rows(slice(start, start + step)).dequantize(torch.float32, held_order=True)
        torch.matmul(x32, chunk.T, out=out[:, start : start + step])
    return out.to(x.dtype)


def int4_kernel_fits(weight: QuantizedWeight) -> bool:
    """Whether torch's CPU int4 kernel can hold this weight (group sizes it knows, whole groups).
    (It is used beside 16-bit activations only: in float32 it is slower than dequantizing.)"""
    return (
        weight.kind == "int4"
        and len(weight.shape) == 2
        and weight.group_size in INT4_GROUP_SIZES
        and weight.in_features % weight.group_size == 0
    )


def int4_kernel_form(weight: QuantizedWeight, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed, scales_and_zeros) for `_weight_int4pack_mm_for_cpu`, which computes each weight
    as (q - 8) × scale + offset: offset = (8 - zero) × scale. Outputs are padded to a multiple of
    16 with zero weights."""
    out = weight.out_features
    padded = -(-out // INT4_ROW_MULTIPLE) * INT4_ROW_MULTIPLE
    values = weight.values().to(torch.int32)  # [out, in], 0..15
    scales = weight.scales.to(torch.float32)  # [out, groups]
    zeros = weight.zeros.to(torch.float32) if weight.zeros is not None else torch.full_like(scales, 8.0)
    if padded != out:
        values = torch.nn.functional.pad(values, (0, 0, 0, padded - out), value=8)
        scales = torch.nn.functional.pad(scales, (0, 0, 0, padded - out))
        zeros = torch.nn.functional.pad(zeros, (0, 0, 0, padded - out), value=8.0)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 1)
    scales_and_zeros = torch.stack([scales, (8 - zeros) * scales], dim=-1)  # [out, groups, 2]
    return packed, scales_and_zeros.transpose(0, 1).contiguous().to(dtype)  # [groups, out, 2]


def int4_product(
    x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor, out_features: int
) -> torch.Tensor:
    """x [M, in] in the kernel form's dtype → [M, out]."""
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), packed, group_size, scales_and_zeros)
    return y[:, :out_features]


def int8_kernel_fits(weight: QuantizedWeight) -> bool:
    """Whether `_weight_int8pack_mm` computes this weight: one symmetric scale per row."""
    return (
        weight.kind == "int8"
        and len(weight.shape) == 2
        and weight.zeros is None
        and weight.group_size >= weight.in_features
    )


def int8_product(x: torch.Tensor, data: torch.Tensor, row_scales: torch.Tensor) -> torch.Tensor:
    """x [M, in] times int8 data [out, in] scaled per row ([out], x's dtype)."""
    return torch._weight_int8pack_mm(x.contiguous(), data, row_scales)  # pyright: ignore[reportPrivateImportUsage]


@functools.cache
def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Hand memory freed on the heap back to the system (glibc's malloc_trim). Quantizing at load
    frees many large temporaries; glibc keeps them otherwise, and a 1B model's int8 load held
    2.9 GB where its weights take 1.5 GB (docs/results.md)."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)
