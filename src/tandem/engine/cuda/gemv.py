"""Matrix-vector products for decode (a handful of rows times a weight matrix), in Triton.

At batch 1 a decode step is four weight matrices per layer streamed once from memory; the
speed of the step is the bandwidth these products reach. Two kernels:

- `_gemv_row_kernel` (one row of x): each program owns a few output features and walks the
  whole input dimension with pipelined loads, multiplying on the CUDA cores. Narrow blocks give
  many programs even for a 4096-wide output, which keeps every multiprocessor streaming.
- `_gemv_dot_kernel` (up to 16 rows): the rows ride along in one tensor-core product per tile.

Either runs gated for the MLP's fused gate_up weight: a program takes the same features of
gate and up and stores silu(gate) * up, so the activations never make a round trip through
memory for a separate SiLU·up kernel.

Both are autotuned per matrix shape (timed inside CUDA graphs, as they will run; the choice is
kept in Triton's cache directory for later processes), and for one row the faster of the two is
kept per shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing

from tandem.engine.cuda.kernels import overlap, silu_times, wait_for_previous_kernel

MAX_ROWS = 16


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in shapes]


ROW_CONFIGS = _configs(
    [
        (4, 1024, 4, 3),
        (4, 512, 4, 4),
        (8, 512, 4, 4),
        (8, 1024, 8, 3),
        (16, 256, 4, 4),
        (16, 512, 8, 3),
        (32, 256, 8, 3),
        (8, 256, 4, 5),
    ]
)
DOT_CONFIGS = _configs(
    [
        (16, 256, 4, 4),
        (16, 512, 4, 3),
        (32, 256, 4, 4),
        (32, 512, 8, 3),
        (64, 256, 8, 4),
        (16, 1024, 8, 3),
        (32, 128, 4, 6),
        (64, 128, 4, 5),
    ]
)


@triton.jit
def _row_sums(x_ptr, w_ptr, bias_ptr, features, feature_ok, K, HAS_BIAS, BLOCK_N, BLOCK_K):
    """w[features] · x (+ bias[features]) in float32, on the CUDA cores."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(
            w_ptr + features[:, None] * K + ks[None, :], mask=feature_ok[:, None] & k_ok[None, :], other=0.0
        )
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)
    return out


@triton.autotune(configs=ROW_CONFIGS, key=["N", "K", "GATED"], use_cuda_graph=True, cache_results=True)
@triton.jit
def _gemv_row_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < N
    dtype = y_ptr.dtype.element_ty
    out = _row_sums(x_ptr, w_ptr, bias_ptr, features, feature_ok, K, HAS_BIAS, BLOCK_N, BLOCK_K).to(dtype)
    if GATED:
        up = _row_sums(
            x_ptr, w_ptr + N * K, bias_ptr + N, features, feature_ok, K, HAS_BIAS, BLOCK_N, BLOCK_K
        )
        out = silu_times(out, up.to(dtype))
    tl.store(y_ptr + features, out, mask=feature_ok)


@triton.jit
def _dot_sums(x_ptr, w_ptr, bias_ptr, rows, M, features, feature_ok, K, HAS_BIAS, ROWS, BLOCK_N, BLOCK_K):
    """x[rows] · w[features]ᵀ (+ bias[features]) in float32, on the tensor cores."""
    acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(
            x_ptr + rows[:, None] * K + ks[None, :], mask=(rows < M)[:, None] & k_ok[None, :], other=0.0
        )
        w = tl.load(
            w_ptr + features[:, None] * K + ks[None, :], mask=feature_ok[:, None] & k_ok[None, :], other=0.0
        )
        acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + features, mask=feature_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.autotune(configs=DOT_CONFIGS, key=["N", "K", "GATED"], use_cuda_graph=True, cache_results=True)
@triton.jit
def _gemv_dot_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, ROWS)
    feature_ok = features < N
    dtype = y_ptr.dtype.element_ty
    out = _dot_sums(
        x_ptr, w_ptr, bias_ptr, rows, M, features, feature_ok, K, HAS_BIAS, ROWS, BLOCK_N, BLOCK_K
    ).to(dtype)
    if GATED:
        up = _dot_sums(
            x_ptr,
            w_ptr + N * K,
            bias_ptr + N,
            rows,
            M,
            features,
            feature_ok,
            K,
            HAS_BIAS,
            ROWS,
            BLOCK_N,
            BLOCK_K,
        )
        out = silu_times(out, up.to(dtype))
    tl.store(
        y_ptr + rows[:, None] * N + features[None, :], out, mask=(rows < M)[:, None] & feature_ok[None, :]
    )


def _row_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    N, K = out.shape[1], weight.shape[1]
    _gemv_row_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        N,
        K,
        HAS_BIAS=bias is not None,
        GATED=weight.shape[0] != N,
        **overlap(),
    )


def _dot_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    N, K = out.shape[1], weight.shape[1]
    _gemv_dot_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        x.shape[0],
        N,
        K,
        HAS_BIAS=bias is not None,
        GATED=weight.shape[0] != N,
        ROWS=MAX_ROWS,
        **overlap(),
    )


_ROW_KERNEL_WINS: dict[tuple[int, int, int, torch.dtype], bool] = {}


def _row_kernel_wins(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> bool:
    """For one row: whether the CUDA-core kernel beats the tensor-core one on this shape (timed once,
    inside CUDA graphs; during a graph capture, before any timing, the tensor-core kernel is used)."""
    key = (out.shape[1], weight.shape[0], weight.shape[1], weight.dtype)
    if key not in _ROW_KERNEL_WINS:
        if torch.cuda.is_current_stream_capturing():
            return False
        _row_product(x, weight, bias, out)  # autotune each kernel first
        _dot_product(x, weight, bias, out)
        row = triton.testing.do_bench_cudagraph(lambda: _row_product(x, weight, bias, out))
        dot = triton.testing.do_bench_cudagraph(lambda: _dot_product(x, weight, bias, out))
        _ROW_KERNEL_WINS[key] = float(row) < float(dot)  # type: ignore[arg-type]
    return _ROW_KERNEL_WINS[key]


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False
) -> torch.Tensor:
    """x @ weight.T (+ bias) for x of at most 16 rows ([..., K]); weight [N, K]. Gated: weight
    (and bias) hold a gate projection then an up projection of N / 2 features each, and the
    result is silu(gate) * up, rounded as the eager product then `ops.silu_mul` round."""
    K = x.shape[-1]
    N = weight.shape[0] // 2 if gated else weight.shape[0]
    rows = x.reshape(-1, K).contiguous()
    out = torch.empty(rows.shape[0], N, dtype=x.dtype, device=x.device)
    if rows.shape[0] == 1 and _row_kernel_wins(rows, weight, bias, out):
        _row_product(rows, weight, bias, out)
    else:
        _dot_product(rows, weight, bias, out)
    return out.view(*x.shape[:-1], N)
