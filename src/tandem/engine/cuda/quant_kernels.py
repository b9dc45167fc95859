"""Triton products with quantized weights (int4, int8, FP8), reading the engine's one layout
(`tandem.engine.quant.weight`): the weight tiles are dequantized in registers, never in memory.

- `_quant_row_kernel` (one row of x, decode at batch 1): each program owns a few output
  features and walks the inputs, multiplying on the CUDA cores.
- `_quant_dot_kernel` (any number of rows): a tile of rows times a tile of features on the
  tensor cores, the weight tile dequantized to the activation dtype first. With BLOCK_M 16 and
  one row-tile it is the decode kernel for up to 16 rows; with larger BLOCK_M the prefill matmul.

int4 bytes hold two inputs (the even one in the low nibble): a tile of bytes is split into the
even and the odd inputs' weights, and each meets the even or odd inputs of x. Scales are read
per (block of `BLOCK_ROWS` outputs, group of `GROUP` inputs); zero points per (output, group).
Either kernel runs gated for a fused gate_up weight (silu(gate) * up stored, as in gemv.py).
Everything is asynchronous and shape-static: the kernels run inside CUDA graphs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from tandem.engine.cuda.kernels import silu_times, wait_for_previous_kernel

INT4, INT8, FP8 = 4, 8, 80  # KIND


@triton.jit
def _scale_and_zero(
    scales_ptr,
    zeros_ptr,
    features,
    feature_ok,
    columns,
    column_ok,
    G,
    HAS_ZEROS,
    IMPLICIT_ZERO,
    GROUP,
    BLOCK_ROWS,
):
    """Scales and zero points [features, columns] for input columns `columns` (float32)."""
    groups = columns // GROUP
    ok = feature_ok[:, None] & column_ok[None, :]
    scale = tl.load(scales_ptr + (features // BLOCK_ROWS)[:, None] * G + groups[None, :], mask=ok, other=0.0)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + features[:, None] * G + groups[None, :], mask=ok, other=0).to(tl.float32)
    else:
        zero = IMPLICIT_ZERO
    return scale.to(tl.float32), zero


@triton.jit
def _int4_tiles(
    data_ptr, scales_ptr, zeros_ptr, features, feature_ok, byte_columns, K, G, HAS_ZEROS, GROUP, BLOCK_ROWS
):
    """The weights of even and odd inputs of byte columns `byte_columns`: two float32 tiles
    [features, bytes], and whether each input exists."""
    row_bytes = (K + 1) // 2
    even_ok = 2 * byte_columns < K
    odd_ok = 2 * byte_columns + 1 < K
    packed = tl.load(
        data_ptr + features[:, None] * row_bytes + byte_columns[None, :],
        mask=feature_ok[:, None] & even_ok[None, :],
        other=0,
    )
    # GROUP is even, so both inputs of a byte share one scale and zero point
    scale, zero = _scale_and_zero(
        scales_ptr,
        zeros_ptr,
        features,
        feature_ok,
        2 * byte_columns,
        even_ok,
        G,
        HAS_ZEROS,
        8.0,
        GROUP,
        BLOCK_ROWS,
    )
    low = ((packed & 15).to(tl.float32) - zero) * scale
    high = ((packed >> 4).to(tl.float32) - zero) * scale
    return low, high, even_ok, odd_ok


@triton.jit
def _byte_tile(
    data_ptr, scales_ptr, zeros_ptr, features, feature_ok, columns, K, G, KIND, HAS_ZEROS, GROUP, BLOCK_ROWS
):
    """Dequantized int8 or FP8 weights [features, columns] in float32."""
    column_ok = columns < K
    inside = feature_ok[:, None] & column_ok[None, :]
    # no `other`: a masked FP8 load has no zero literal of its type; zero them after widening
    values = tl.load(data_ptr + features[:, None] * K + columns[None, :], mask=inside).to(tl.float32)
    values = tl.where(inside, values, 0.0)
    scale, zero = _scale_and_zero(
        scales_ptr, zeros_ptr, features, feature_ok, columns, column_ok, G, HAS_ZEROS, 0.0, GROUP, BLOCK_ROWS
    )
    if KIND == 8:
        values = values - zero
    return values * scale


@triton.jit
def _row_sums(
    x_ptr, data_ptr, scales_ptr, zeros_ptr, features, feature_ok, K, G,
    KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
):  # fmt: skip
    """w[features] · x for one row x, in float32."""
    if KIND == 4:
        acc = tl.zeros([BLOCK_N, BLOCK_K // 2], tl.float32)
        for start in range(0, (K + 1) // 2, BLOCK_K // 2):
            byte_columns = start + tl.arange(0, BLOCK_K // 2)
            low, high, even_ok, odd_ok = _int4_tiles(
                data_ptr,
                scales_ptr,
                zeros_ptr,
                features,
                feature_ok,
                byte_columns,
                K,
                G,
                HAS_ZEROS,
                GROUP,
                BLOCK_ROWS,
            )
            x_even = tl.load(x_ptr + 2 * byte_columns, mask=even_ok, other=0.0).to(tl.float32)
            x_odd = tl.load(x_ptr + 2 * byte_columns + 1, mask=odd_ok, other=0.0).to(tl.float32)
            acc += low * x_even[None, :] + high * x_odd[None, :]
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for start in range(0, K, BLOCK_K):
            columns = start + tl.arange(0, BLOCK_K)
            w = _byte_tile(
                data_ptr,
                scales_ptr,
                zeros_ptr,
                features,
                feature_ok,
                columns,
                K,
                G,
                KIND,
                HAS_ZEROS,
                GROUP,
                BLOCK_ROWS,
            )
            x = tl.load(x_ptr + columns, mask=columns < K, other=0.0).to(tl.float32)
            acc += w * x[None, :]
    return tl.sum(acc, axis=1)


@triton.jit
def _quant_row_kernel(
    x_ptr, data_ptr, scales_ptr, zeros_ptr, y_ptr, N, K, G,
    KIND: tl.constexpr, HAS_ZEROS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OVERLAP: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(OVERLAP)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < N
    dtype = y_ptr.dtype.element_ty
    out = _row_sums(
        x_ptr, data_ptr, scales_ptr, zeros_ptr, features, feature_ok, K, G,
        KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
    ).to(dtype)  # fmt: skip
    if GATED:  # the up projection's features follow the gate's N
        up = _row_sums(
            x_ptr, data_ptr, scales_ptr, zeros_ptr, features + N, feature_ok, K, G,
            KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        out = silu_times(out, up.to(dtype))
    tl.store(y_ptr + features, out, mask=feature_ok)


@triton.jit
def _dot_sums(
    x_ptr, data_ptr, scales_ptr, zeros_ptr, rows, row_ok, stride_x, features, feature_ok, K, G,
    KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
):  # fmt: skip
    """x[rows] · w[features]ᵀ in float32, on the tensor cores."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    dtype = x_ptr.dtype.element_ty
    if KIND == 4:
        for start in range(0, (K + 1) // 2, BLOCK_K // 2):
            byte_columns = start + tl.arange(0, BLOCK_K // 2)
            low, high, even_ok, odd_ok = _int4_tiles(
                data_ptr,
                scales_ptr,
                zeros_ptr,
                features,
                feature_ok,
                byte_columns,
                K,
                G,
                HAS_ZEROS,
                GROUP,
                BLOCK_ROWS,
            )
            x_rows = x_ptr + rows[:, None] * stride_x + 2 * byte_columns[None, :]
            x_even = tl.load(x_rows, mask=row_ok[:, None] & even_ok[None, :], other=0.0)
            x_odd = tl.load(x_rows + 1, mask=row_ok[:, None] & odd_ok[None, :], other=0.0)
            acc = tl.dot(x_even, tl.trans(low.to(dtype)), acc, input_precision=PRECISION)
            acc = tl.dot(x_odd, tl.trans(high.to(dtype)), acc, input_precision=PRECISION)
    else:
        for start in range(0, K, BLOCK_K):
            columns = start + tl.arange(0, BLOCK_K)
            w = _byte_tile(
                data_ptr,
                scales_ptr,
                zeros_ptr,
                features,
                feature_ok,
                columns,
                K,
                G,
                KIND,
                HAS_ZEROS,
                GROUP,
                BLOCK_ROWS,
            )
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + columns[None, :],
                mask=row_ok[:, None] & (columns < K)[None, :],
                other=0.0,
            )
            acc = tl.dot(x, tl.trans(w.to(dtype)), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _fp8_dot_sums(
    x_ptr, data_ptr, scales_ptr, rows, row_ok, stride_x, features, feature_ok, K, G,
    BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K,
):  # fmt: skip
    """x[rows] · w[features]ᵀ on FP8 tensor cores: each row's BLOCK_K inputs (one weight block
    wide) are scaled into FP8 by their largest magnitude, as DeepSeek-V3's dynamic activation
    scheme does, and each block's product is scaled back by both scales."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, K, BLOCK_K):
        columns = start + tl.arange(0, BLOCK_K)
        column_ok = columns < K
        inside = feature_ok[:, None] & column_ok[None, :]
        w = tl.load(data_ptr + features[:, None] * K + columns[None, :], mask=inside)
        w = tl.where(inside, w.to(tl.float32), 0.0).to(tl.float8e4nv)
        w_scale = tl.load(
            scales_ptr + (features // BLOCK_ROWS) * G + start // BLOCK_K, mask=feature_ok, other=0.0
        )
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + columns[None, :],
            mask=row_ok[:, None] & column_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        x_scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 448.0  # [BLOCK_M]
        x8 = (x / x_scale[:, None]).to(tl.float8e4nv)
        block = tl.dot(x8, tl.trans(w), out_dtype=tl.float32)
        acc += block * x_scale[:, None] * w_scale.to(tl.float32)[None, :]
    return acc


@triton.jit
def _quant_dot_kernel(
    x_ptr, data_ptr, scales_ptr, zeros_ptr, y_ptr, M, N, K, G, stride_x, M_BUCKET,
    KIND: tl.constexpr, HAS_ZEROS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, PRECISION: tl.constexpr, FP8_ACTIVATIONS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OVERLAP: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(OVERLAP)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, feature_ok = rows < M, features < N
    dtype = y_ptr.dtype.element_ty
    if FP8_ACTIVATIONS:  # FP8 weights in blocks of BLOCK_K inputs, on FP8 tensor cores
        out = _fp8_dot_sums(
            x_ptr, data_ptr, scales_ptr, rows, row_ok, stride_x, features, feature_ok, K, G,
            BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K,
        ).to(dtype)  # fmt: skip
        if GATED:
            up = _fp8_dot_sums(
                x_ptr, data_ptr, scales_ptr, rows, row_ok, stride_x, features + N, feature_ok, K, G,
                BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
            out = silu_times(out, up.to(dtype))
    else:
        out = _dot_sums(
            x_ptr, data_ptr, scales_ptr, zeros_ptr, rows, row_ok, stride_x, features, feature_ok, K, G,
            KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
        ).to(dtype)  # fmt: skip
        if GATED:
            up = _dot_sums(
                x_ptr, data_ptr, scales_ptr, zeros_ptr, rows, row_ok, stride_x, features + N, feature_ok, K, G,
                KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
            )  # fmt: skip
            out = silu_times(out, up.to(dtype))
    tl.store(y_ptr + rows[:, None] * N + features[None, :], out, mask=row_ok[:, None] & feature_ok[None, :])


def _configs(shapes: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in shapes
    ]


ROW_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for n, k, w, s in [
        (4, 512, 4, 3),
        (8, 256, 4, 4),
        (8, 512, 4, 3),
        (16, 256, 4, 4),
        (16, 512, 8, 3),
        (32, 128, 4, 4),
    ]
]
DECODE_CONFIGS = _configs(
    [(16, 32, 128, 4, 4), (16, 64, 128, 4, 4), (16, 32, 256, 4, 3), (16, 64, 256, 8, 3), (16, 128, 128, 8, 3)]
)
PREFILL_CONFIGS = _configs(
    [(64, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 256, 64, 8, 3)]
)

quant_row = triton.autotune(
    configs=ROW_CONFIGS, key=["N", "K", "KIND", "GATED"], use_cuda_graph=True, cache_results=True
)(_quant_row_kernel)
quant_decode = triton.autotune(
    configs=DECODE_CONFIGS, key=["N", "K", "KIND", "GATED"], use_cuda_graph=True, cache_results=True
)(_quant_dot_kernel)
# Prefill lengths vary: the tuning is keyed on the rows' power of two (M_BUCKET) as well.
quant_prefill = triton.autotune(
    configs=PREFILL_CONFIGS, key=["N", "K", "KIND", "GATED", "M_BUCKET"], cache_results=True
)(_quant_dot_kernel)
# FP8 tensor cores take a whole weight block of inputs per step (BLOCK_K = 128).
FP8_PREFILL_CONFIGS = _configs(
    [(64, 64, 128, 4, 4), (64, 128, 128, 4, 3), (128, 128, 128, 8, 3), (128, 64, 128, 4, 3)]
)
quant_prefill_fp8 = triton.autotune(
    configs=FP8_PREFILL_CONFIGS, key=["N", "K", "GATED", "M_BUCKET"], cache_results=True
)(_quant_dot_kernel)
