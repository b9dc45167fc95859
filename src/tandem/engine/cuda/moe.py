"""Routed experts on CUDA: fused gather kernels for decode, grouped products for prefill.

Decode (a few tokens; always inside a CUDA graph capture): two Triton kernels read only the
chosen experts' weights, with no host synchronization (routing stays on the device):

- `_expert_gate_up_kernel`, one program per (token, chosen expert, block of inner features):
  the expert's gate and up rows times the token's hidden state, then SiLU(gate)·up, rounded as
  the eager product and `ops.silu_mul` round;
- `_expert_down_kernel`, one program per (token, block of hidden features): each chosen
  expert's down rows times its activations, rounded as the eager product, weighted by the
  routing weight (float32) and summed over the chosen experts in float32.

An expert held elsewhere (expert parallelism) has its loads masked off: it reads nothing and
adds nothing. Both kernels walk the input dimension like `gemv._row_sums` (CUDA cores, float32
accumulation, so float32 weights are not rounded to tf32).

Prefill (many tokens): the (token, expert) pairs are sorted by expert and each expert's rows
multiply its weights in one grouped product (`torch._grouped_mm`, bf16 on recent GPUs), else
one product per expert that got tokens (as the CPU path).
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

from tandem.engine import ops
from tandem.engine.cuda.gemv import _row_sums
from tandem.engine.cuda.kernels import overlap, silu_times, wait_for_previous_kernel

# Tokens up to which the fused decode kernels run (a decode graph's largest bucket); more go
# through the grouped products. During a graph capture the kernels always run: no host sync.
DECODE_ROWS = 64

_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for n, k, w, s in [(4, 512, 4, 4), (8, 512, 4, 4), (16, 256, 4, 4), (8, 1024, 8, 3), (32, 256, 8, 3)]
]
_INTERPRETED_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 64}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _expert_gate_up_kernel(
    x_ptr,  # [N, K] hidden states
    w_ptr,  # [count, 2 * INNER, K] held experts' gate then up rows
    experts_ptr,  # [N, TOP_K] global expert ids
    act_ptr,  # [N * TOP_K, INNER] out
    first,
    count,
    INNER,
    K,
    TOP_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    pair = tl.program_id(0)  # token * TOP_K + chosen slot
    token = pair // TOP_K
    expert = tl.load(experts_ptr + pair).to(tl.int64) - first
    held = (expert >= 0) & (expert < count)
    expert = tl.where(held, expert, 0)
    features = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < tl.where(held, INNER, 0)  # an expert held elsewhere reads nothing
    dtype = act_ptr.dtype.element_ty
    weights = w_ptr + expert * 2 * INNER * K
    gate = _row_sums(x_ptr + token * K, weights, weights, features, feature_ok, K, False, BLOCK_N, BLOCK_K)
    up = _row_sums(
        x_ptr + token * K, weights + INNER * K, weights, features, feature_ok, K, False, BLOCK_N, BLOCK_K
    )
    out = silu_times(gate.to(dtype), up.to(dtype))
    tl.store(act_ptr + pair * INNER + features, out, mask=features < INNER)


@triton.jit
def _expert_down_kernel(
    act_ptr,  # [N * TOP_K, INNER]
    w_ptr,  # [count, H, INNER] held experts' down rows
    experts_ptr,  # [N, TOP_K]
    routing_ptr,  # [N, TOP_K] float32 weights
    out_ptr,  # [N, H]
    first,
    count,
    H,
    INNER,
    TOP_K: tl.constexpr,
    ROUND_WEIGHTS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    token = tl.program_id(0)
    features = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dtype = out_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_N], tl.float32)
    for slot in tl.static_range(TOP_K):
        pair = token * TOP_K + slot
        expert = tl.load(experts_ptr + pair).to(tl.int64) - first
        held = (expert >= 0) & (expert < count)
        expert = tl.where(held, expert, 0)
        feature_ok = features < tl.where(held, H, 0)
        weights = w_ptr + expert * H * INNER
        y = _row_sums(
            act_ptr + pair * INNER, weights, weights, features, feature_ok, INNER, False, BLOCK_N, BLOCK_K
        )
        y = y.to(dtype).to(tl.float32)  # the eager product's rounding
        routing = tl.load(routing_ptr + pair)
        if ROUND_WEIGHTS:
            routing = routing.to(dtype).to(tl.float32)
        total += tl.where(feature_ok, y * routing, 0.0)
    tl.store(out_ptr + token * H + features, total.to(dtype), mask=features < H)


_tuned_gate_up = triton.autotune(
    configs=_CONFIGS, key=["INNER", "K"], use_cuda_graph=True, cache_results=True
)(_expert_gate_up_kernel)
_tuned_down = triton.autotune(configs=_CONFIGS, key=["H", "INNER"], use_cuda_graph=True, cache_results=True)(
    _expert_down_kernel
)


def fused_decode_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    first: int,
    round_weights: bool,
) -> torch.Tensor:
    """The weighted sum over each token's chosen experts that this process holds.

    x: [N, hidden]; gate_up: [count, 2 × inner, hidden]; down: [count, hidden, inner];
    experts, weights: [N, k] (global ids, float32 weights). Returns [N, hidden]."""
    N, hidden = x.shape
    count, inner = gate_up.shape[0], down.shape[2]
    top_k = experts.shape[1]
    x = x.contiguous()
    experts = experts.contiguous()
    weights = weights.float().contiguous()
    act = torch.empty(N * top_k, inner, dtype=x.dtype, device=x.device)
    out = torch.empty(N, hidden, dtype=x.dtype, device=x.device)
    # The interpreter runs one fixed configuration (autotuning there would time nothing real).
    fixed: dict[str, Any] = dict(_INTERPRETED_CONFIG) if _interpreted() else {}
    gate_up_kernel: Any = _expert_gate_up_kernel if fixed else _tuned_gate_up
    down_kernel: Any = _expert_down_kernel if fixed else _tuned_down
    gate_up_kernel[lambda meta: (N * top_k, triton.cdiv(inner, meta["BLOCK_N"]))](
        x, gate_up, experts, act, first, count, inner, hidden, TOP_K=top_k, **fixed, **overlap()
    )
    down_kernel[lambda meta: (N, triton.cdiv(hidden, meta["BLOCK_N"]))](
        act,
        down,
        experts,
        weights,
        out,
        first,
        count,
        hidden,
        inner,
        TOP_K=top_k,
        ROUND_WEIGHTS=round_weights,
        **fixed,
        **overlap(),
    )
    return out


@functools.cache
def _grouped_product_works(dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` runs here for `dtype` (bf16 on Hopper and later)."""
    grouped = getattr(torch, "_grouped_mm", None)
    if grouped is None or dtype != torch.bfloat16:
        return False
    try:
        a = torch.zeros(16, 32, dtype=dtype, device="cuda")
        b = torch.zeros(2, 64, 32, dtype=dtype, device="cuda")
        grouped(a, b.transpose(1, 2), offs=torch.tensor([8, 16], dtype=torch.int32, device="cuda"))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def grouped_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    first: int,
    round_weights: bool,
) -> torch.Tensor:
    """As `fused_decode_experts`, for many tokens: (token, expert) pairs sorted by expert, one
    grouped product for all the held experts' rows, weighted as the eager path weighs."""
    from tandem.engine.models.moe import weigh

    k = experts.shape[1]
    count = gate_up.shape[0]
    local = (experts - first).flatten()  # [N * k]
    held = (local >= 0) & (local < count)
    bucket = torch.where(held, local, count)  # pairs held elsewhere sort last
    order = torch.argsort(bucket, stable=True)
    per_expert = torch.bincount(bucket, minlength=count + 1)[:count]
    offsets = per_expert.cumsum(0).to(torch.int32)
    pairs = order[: int(offsets[-1])]  # the one host sync: how many pairs are held here
    tokens = pairs // k
    rows = x[tokens]  # [pairs, hidden], grouped by expert
    grouped = torch._grouped_mm  # type: ignore[attr-defined]
    product = grouped(rows, gate_up.transpose(1, 2), offs=offsets)  # [pairs, 2 × inner]
    y = grouped(ops.silu_mul(product), down.transpose(1, 2), offs=offsets)  # [pairs, hidden]
    out = torch.zeros_like(x)
    out.index_add_(0, tokens, weigh(y, weights.flatten()[pairs, None], round_weights))
    return out


def fused_experts(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    experts: torch.Tensor,
    weights: torch.Tensor,
    first: int,
    round_weights: bool,
) -> torch.Tensor | None:
    """The held experts' weighted outputs on CUDA: the fused decode kernels for a few tokens (and
    always inside a graph capture), grouped products for many; None where neither applies (the
    caller loops over the experts)."""
    if x.shape[0] <= DECODE_ROWS or torch.cuda.is_current_stream_capturing():
        return fused_decode_experts(x, gate_up, down, experts, weights, first, round_weights)
    if _grouped_product_works(x.dtype):
        return grouped_experts(x, gate_up, down, experts, weights, first, round_weights)
    return None
