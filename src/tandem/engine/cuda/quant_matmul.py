"""Quantized linear products on CUDA: which Triton kernel (`quant_kernels.py`) for which shape.

- one row (decode at batch 1): the CUDA-core row kernel or the tensor-core kernel, whichever is
  faster for the shape (timed once, inside CUDA graphs, as gemv.py does);
- up to 16 rows (decode of a batch): the tensor-core kernel with 16-row tiles;
- more rows (prefill): the same kernel with larger tiles, a matrix product whose weight tiles
  are dequantized in registers (never a dequantized copy in memory). FP8 weights in blocks of
  128 inputs on GPUs with FP8 tensor cores (compute capability 8.9 and later) multiply there
  instead, their activations scaled into FP8 per row and block (`TANDEM_FP8_TENSOR_CORES=0`
  turns it off).
float32 activations take the eager product instead (Triton would round them to tf32).
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.testing

from tandem.engine.cuda import quant_kernels as kernels
from tandem.engine.cuda.kernels import overlap
from tandem.engine.quant.weight import IMPLICIT_ZERO, QuantizedWeight

MAX_DECODE_ROWS = 16
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_KINDS = {"int4": kernels.INT4, "int8": kernels.INT8, "fp8": kernels.FP8}
FP8_BLOCK = 128  # inputs per weight scale that the FP8 tensor-core path takes


@functools.cache
def fp8_tensor_cores(device_index: int) -> bool:
    """Whether this GPU multiplies FP8 on its tensor cores (Ada, Hopper and later)."""
    if os.environ.get("TANDEM_FP8_TENSOR_CORES") == "0":
        return False
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def _fp8_activations(x: torch.Tensor, weight: QuantizedWeight, config: dict | None) -> bool:
    if weight.kind != "fp8" or weight.group_size != FP8_BLOCK or x.shape[0] <= MAX_DECODE_ROWS:
        return False
    if config is not None:
        return bool(config.get("fp8_activations"))
    return x.is_cuda and fp8_tensor_cores(x.device.index or 0)


def _weight_arguments(weight: QuantizedWeight) -> tuple[list, dict]:
    if len(weight.shape) != 2:
        raise ValueError("the quantized kernels take one matrix; a stacked bank takes its experts one by one")
    if weight.kind == "int4" and weight.group_size % 2 and weight.group_size < weight.in_features:
        raise ValueError("int4 groups must hold an even number of inputs")
    zeros = weight.zeros if weight.zeros is not None else weight.data  # unused without zeros
    assert IMPLICIT_ZERO["int4"] == 8  # the kernels' int4 default zero point
    groups = -(-weight.in_features // weight.group_size)
    tensors = [weight.data, weight.scales, zeros]
    constants = dict(
        KIND=_KINDS[weight.kind],
        HAS_ZEROS=weight.zeros is not None,
        GROUP=weight.group_size,
        BLOCK_ROWS=weight.block_rows,
    )
    return [*tensors, groups], constants


def _row(
    x: torch.Tensor, weight: QuantizedWeight, out: torch.Tensor, gated: bool, config: dict | None
) -> None:
    (data, scales, zeros, groups), constants = _weight_arguments(weight)
    N, K = out.shape[1], weight.in_features
    kernel = kernels.quant_row if config is None else kernels._quant_row_kernel
    kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        x, data, scales, zeros, out, N, K, groups, GATED=gated, **constants, **overlap(), **(config or {})
    )


def _dot(
    x: torch.Tensor, weight: QuantizedWeight, out: torch.Tensor, gated: bool, config: dict | None
) -> None:
    (data, scales, zeros, groups), constants = _weight_arguments(weight)
    M, N, K = x.shape[0], out.shape[1], weight.in_features
    decode = M <= MAX_DECODE_ROWS
    fp8_activations = _fp8_activations(x, weight, config)
    if config is not None:
        kernel = kernels._quant_dot_kernel
        config = {k: v for k, v in config.items() if k != "fp8_activations"}
    elif fp8_activations:
        kernel = kernels.quant_prefill_fp8
    else:
        kernel = kernels.quant_decode if decode else kernels.quant_prefill
    bucket = MAX_DECODE_ROWS if decode else min(1 << (M - 1).bit_length(), 8192)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]))](
        x,
        data,
        scales,
        zeros,
        out,
        M,
        N,
        K,
        groups,
        x.stride(0),
        bucket,
        GATED=gated,
        PRECISION=precision,
        FP8_ACTIVATIONS=fp8_activations,
        **constants,
        **overlap(),
        **(config or {}),
    )


_ROW_KERNEL_WINS: dict[tuple, bool] = {}


def _row_kernel_wins(x: torch.Tensor, weight: QuantizedWeight, out: torch.Tensor, gated: bool) -> bool:
    """For one row: whether the CUDA-core kernel beats the tensor-core one on this shape (timed
    once, inside CUDA graphs; while a graph is being captured before any timing, the tensor-core
    kernel is used)."""
    key = (weight.kind, weight.group_size, gated, *weight.shape, x.dtype)
    if key not in _ROW_KERNEL_WINS:
        if torch.cuda.is_current_stream_capturing():
            return False
        _row(x, weight, out, gated, None)  # autotune each kernel first
        _dot(x, weight, out, gated, None)
        row = triton.testing.do_bench_cudagraph(lambda: _row(x, weight, out, gated, None))
        dot = triton.testing.do_bench_cudagraph(lambda: _dot(x, weight, out, gated, None))
        _ROW_KERNEL_WINS[key] = row < dot
    return _ROW_KERNEL_WINS[key]


def quantized_linear(
    rows: torch.Tensor, weight: QuantizedWeight, gated: bool = False, config: dict | None = None
) -> torch.Tensor:
    """rows [M, in] (in the weight's held input order) times the quantized weight [out, in]ᵀ:
    [M, out], or with `gated` silu(gate) * up of its two halves, [M, out / 2]. `config` (block
    sizes, plus "row": True for the one-row kernel or "fp8_activations": True for the FP8
    tensor-core path) skips autotuning: the tests use it."""
    if rows.dtype not in KERNEL_DTYPES and config is None:
        product = rows @ weight.dequantize(rows.dtype, held_order=True).T
        if gated:
            from tandem.engine.ops import silu_mul

            return silu_mul(product)
        return product
    rows = rows.contiguous()
    N = weight.out_features // 2 if gated else weight.out_features
    out = torch.empty(rows.shape[0], N, dtype=rows.dtype, device=rows.device)
    if config is not None:
        row_config = {k: v for k, v in config.items() if k != "row"}
        if config.get("row"):
            _row(rows, weight, out, gated, row_config)
        else:
            _dot(rows, weight, out, gated, row_config)
    elif rows.shape[0] == 1 and _row_kernel_wins(rows, weight, out, gated):
        _row(rows, weight, out, gated, None)
    else:
        _dot(rows, weight, out, gated, None)
    return out
