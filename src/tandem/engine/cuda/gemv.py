"""Matrix-vector products for decode (a handful of rows times a weight matrix), in Triton.

At batch 1 a decode step is four weight matrices per layer streamed once from memory; the
speed of the step is the bandwidth this product reaches. Each program owns a block of output
features and walks the whole input dimension with software-pipelined loads; the rows of x
(up to 16) ride along in one tensor-core product per tile, free next to the memory traffic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 16

# (BLOCK_N, BLOCK_K, warps, stages): tried once per matrix shape, the fastest kept.
CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for n, k, w, s in [
        (16, 256, 4, 4),
        (16, 512, 4, 3),
        (32, 256, 4, 4),
        (32, 512, 8, 3),
        (64, 256, 8, 4),
        (16, 1024, 8, 3),
        (32, 128, 4, 6),
        (64, 128, 4, 5),
    ]
]


@triton.autotune(configs=CONFIGS, key=["N", "K"])
@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, ROWS)
    feature_ok = features < N
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
    tl.store(
        y_ptr + rows[:, None] * N + features[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=(rows < M)[:, None] & feature_ok[None, :],
    )


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) for x of at most 16 rows ([..., K]); weight [N, K]."""
    K = x.shape[-1]
    N = weight.shape[0]
    rows = x.reshape(-1, K)
    M = rows.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        rows.contiguous(),
        weight,
        bias if bias is not None else weight,
        out,
        M,
        N,
        K,
        HAS_BIAS=bias is not None,
        ROWS=MAX_ROWS,
    )
    return out.view(*x.shape[:-1], N)
