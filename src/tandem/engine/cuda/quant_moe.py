"""Quantized routed experts on CUDA at decode: fused gather kernels over the compact banks.

The quantized counterpart of `moe.fused_decode_experts`. A bank (`quant.experts.QuantizedExperts`)
holds the experts stacked in the engine's one quantized layout (`quant/weight.py`: int4 groups
with zero points, int8 rows or groups, FP8 blocks), and two kernels read only the chosen experts'
weights, found by the expert ids in a device tensor, dequantizing in registers:

- `_quant_expert_gate_up_kernel`, one program per (token, chosen expert, block of inner
  features): the expert's gate and up rows times the token's hidden state, then SiLU(gate)·up
  in the activation dtype;
- `_quant_expert_down_kernel`, one program per (token, block of hidden features): each chosen
  expert's down rows times its activations, rounded to the activation dtype, weighted by the
  routing weight (float32, or rounded first where the reference rounds it) and summed over the
  chosen experts in float32.

No host synchronization, no data-dependent shape: a decode step with quantized experts is
captured in a CUDA graph like a dense one. An expert held elsewhere (expert parallelism) has its
loads masked off: it reads nothing and adds nothing. The rows are walked by
`quant_kernels._row_sums` (CUDA cores, float32 accumulation), the dense quantized row kernel's.
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from tandem.engine.cuda.kernels import overlap, silu_times, wait_for_previous_kernel
from tandem.engine.cuda.quant_kernels import ROW_CONFIGS, _row_sums
from tandem.engine.cuda.quant_matmul import _KINDS
from tandem.engine.quant.weight import IMPLICIT_ZERO, QuantizedWeight


@triton.jit
def _quant_expert_gate_up_kernel(
    x_ptr,  # [N, K] hidden states
    data_ptr,  # [count, 2 * INNER, K (int4: bytes)] held experts' gate then up rows
    scales_ptr,  # [count, row blocks, G]
    zeros_ptr,  # [count, 2 * INNER, G] (or any tensor without zero points)
    experts_ptr,  # [N, TOP_K] global expert ids
    act_ptr,  # [N * TOP_K, INNER] out
    first, count, INNER, K, G, DATA_STRIDE, SCALE_STRIDE, ZERO_STRIDE,
    TOP_K: tl.constexpr, KIND: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OVERLAP: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(OVERLAP)
    pair = tl.program_id(0)  # token * TOP_K + chosen slot
    token = pair // TOP_K
    expert = tl.load(experts_ptr + pair).to(tl.int64) - first
    held = (expert >= 0) & (expert < count)
    expert = tl.where(held, expert, 0)
    features = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < tl.where(held, INNER, 0)  # an expert held elsewhere reads nothing
    dtype = act_ptr.dtype.element_ty
    data = data_ptr + expert * DATA_STRIDE
    scales = scales_ptr + expert * SCALE_STRIDE
    zeros = zeros_ptr + expert * ZERO_STRIDE
    x = x_ptr + token * K
    gate = _row_sums(
        x, data, scales, zeros, features, feature_ok, K, G,
        KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    up = _row_sums(
        x, data, scales, zeros, features + INNER, feature_ok, K, G,
        KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    out = silu_times(gate.to(dtype), up.to(dtype))
    tl.store(act_ptr + pair * INNER + features, out, mask=features < INNER)


@triton.jit
def _quant_expert_down_kernel(
    act_ptr,  # [N * TOP_K, INNER]
    data_ptr,  # [count, H, INNER (int4: bytes)] held experts' down rows
    scales_ptr,
    zeros_ptr,
    experts_ptr,  # [N, TOP_K]
    routing_ptr,  # [N, TOP_K] float32 weights
    out_ptr,  # [N, H]
    first, count, H, INNER, G, DATA_STRIDE, SCALE_STRIDE, ZERO_STRIDE,
    TOP_K: tl.constexpr, ROUND_WEIGHTS: tl.constexpr, KIND: tl.constexpr, HAS_ZEROS: tl.constexpr,
    GROUP: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    OVERLAP: tl.constexpr,
):  # fmt: skip
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
        y = _row_sums(
            act_ptr + pair * INNER,
            data_ptr + expert * DATA_STRIDE,
            scales_ptr + expert * SCALE_STRIDE,
            zeros_ptr + expert * ZERO_STRIDE,
            features, feature_ok, INNER, G,
            KIND, HAS_ZEROS, GROUP, BLOCK_ROWS, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        y = y.to(dtype).to(tl.float32)  # the per-expert product's rounding
        routing = tl.load(routing_ptr + pair)
        if ROUND_WEIGHTS:
            routing = routing.to(dtype).to(tl.float32)
        total += tl.where(feature_ok, y * routing, 0.0)
    tl.store(out_ptr + token * H + features, total.to(dtype), mask=features < H)


_tuned_gate_up = triton.autotune(
    configs=ROW_CONFIGS, key=["INNER", "K", "KIND", "TOP_K"], use_cuda_graph=True, cache_results=True
)(_quant_expert_gate_up_kernel)
_tuned_down = triton.autotune(
    configs=ROW_CONFIGS, key=["H", "INNER", "KIND", "TOP_K"], use_cuda_graph=True, cache_results=True
)(_quant_expert_down_kernel)


def _bank_arguments(bank: QuantizedWeight) -> tuple[list, dict]:
    """The kernels' pointer, group-count and per-expert stride arguments for a stacked bank,
    and its constants."""
    if len(bank.shape) != 3:
        raise ValueError("the fused expert kernels take a stacked bank [experts, out, in]")
    if bank.input_order is not None:
        raise ValueError("expert banks hold their inputs in order")
    if bank.kind == "int4" and bank.group_size % 2 and bank.group_size < bank.in_features:
        raise ValueError("int4 groups must hold an even number of inputs")
    assert IMPLICIT_ZERO["int4"] == 8  # the kernels' int4 default zero point
    data, scales = bank.data.contiguous(), bank.scales.contiguous()
    zeros = bank.zeros.contiguous() if bank.zeros is not None else data  # unused without zeros
    zero_stride = zeros.stride(0) if bank.zeros is not None else 0
    groups = -(-bank.in_features // bank.group_size)
    arguments = [data, scales, zeros, groups, data.stride(0), scales.stride(0), zero_stride]
    constants = dict(
        KIND=_KINDS[bank.kind],
        HAS_ZEROS=bank.zeros is not None,
        GROUP=bank.group_size,
        BLOCK_ROWS=bank.block_rows,
    )
    return arguments, constants


def fused_quantized_experts(
    x: torch.Tensor,
    gate_up: QuantizedWeight,
    down: QuantizedWeight,
    experts: torch.Tensor,
    weights: torch.Tensor,
    first: int,
    round_weights: bool,
    config: dict | None = None,
) -> torch.Tensor:
    """The weighted sum over each token's chosen experts that this process holds, read from the
    quantized banks. x: [N, hidden]; gate_up: [count, 2 × inner, hidden]; down: [count, hidden,
    inner]; experts, weights: [N, k] (global ids, float32 weights). Returns [N, hidden].
    `config` (BLOCK_N, BLOCK_K) skips autotuning: Triton's interpreter in the tests takes it."""
    N, hidden = x.shape
    count, inner = gate_up.shape[0], down.shape[2]
    if gate_up.shape != (count, 2 * inner, hidden) or down.shape != (count, hidden, inner):
        raise ValueError(f"banks {gate_up.shape} and {down.shape} do not hold the same experts")
    top_k = experts.shape[1]
    x = x.contiguous()
    experts = experts.contiguous()
    weights = weights.float().contiguous()
    act = torch.empty(N * top_k, inner, dtype=x.dtype, device=x.device)
    out = torch.empty(N, hidden, dtype=x.dtype, device=x.device)
    fixed: dict[str, Any] = dict(config or {})
    gate_up_kernel: Any = _quant_expert_gate_up_kernel if fixed else _tuned_gate_up
    down_kernel: Any = _quant_expert_down_kernel if fixed else _tuned_down
    (data, scales, zeros, groups, data_stride, scale_stride, zero_stride), constants = _bank_arguments(
        gate_up
    )
    gate_up_kernel[lambda meta: (N * top_k, triton.cdiv(inner, meta["BLOCK_N"]))](
        x, data, scales, zeros, experts, act, first, count, inner, hidden, groups,
        data_stride, scale_stride, zero_stride, TOP_K=top_k, **constants, **fixed, **overlap(),
    )  # fmt: skip
    (data, scales, zeros, groups, data_stride, scale_stride, zero_stride), constants = _bank_arguments(down)
    down_kernel[lambda meta: (N, triton.cdiv(hidden, meta["BLOCK_N"]))](
        act, data, scales, zeros, experts, weights, out, first, count, hidden, inner, groups,
        data_stride, scale_stride, zero_stride, TOP_K=top_k, ROUND_WEIGHTS=round_weights,
        **constants, **fixed, **overlap(),
    )  # fmt: skip
    return out
