"""Triton kernels for the FLUX.1 transformer on CUDA: the elementwise work between its matrix
products, fused, where eager PyTorch spends a third of a step (the rotary embedding alone runs
eight float32 passes over each query and key).

- `norm_rope`: the per-head RMSNorm of queries or keys, then the rotary embedding, read straight
  from the fused projection's output and written into the joint sequence's buffer at an offset
  (text first, then image), so no concatenation follows;
- `modulate`: LayerNorm, then · (1 + scale) + shift per image;
- `attention_gelu`: the single-stream blocks' [attention | GELU(mlp)], in one pass.

Each rounds to the activation dtype where the eager code rounds, so they agree with it to the
last bit or so; float32 paths (and CPUs) use the eager code.
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _norm_rope_kernel(
    x_ptr,
    weight_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    tokens,
    x_batch_stride,
    x_token_stride,
    out_batch_stride,
    offset,
    eps,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    TOKENS_BLOCK: tl.constexpr,
):
    """One head of TOKENS_BLOCK tokens of one image: RMSNorm over the head's dimension, times
    the weight, then each (even, odd) pair rotated by its token's angle. The rows are read twice,
    in order and with each pair's two values swapped (both reads coalesced), so a value meets its
    partner without moving registers: out[d] = y[d]·cos[d] ∓ y[d^1]·sin[d] (minus for even d)."""
    block, head, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    token = block * TOKENS_BLOCK + tl.arange(0, TOKENS_BLOCK)[:, None]  # [Tb, 1]
    dims = tl.arange(0, HEAD_DIM)[None, :]  # [1, D]
    partners = dims ^ 1
    inside = token < tokens
    source = x_ptr + batch * x_batch_stride + token * x_token_stride + head * HEAD_DIM
    x = tl.load(source + dims, mask=inside, other=0.0)
    x32 = x.to(tl.float32)
    partner32 = tl.load(source + partners, mask=inside, other=0.0).to(tl.float32)
    scale = tl.rsqrt(tl.sum(x32 * x32, axis=1) / HEAD_DIM + eps)[:, None]  # [Tb, 1]
    # RMSNorm rounds its normalized value, then the weighted one, to the activation dtype
    weight = tl.load(weight_ptr + dims).to(tl.float32)
    partner_weight = tl.load(weight_ptr + partners).to(tl.float32)
    y = ((x32 * scale).to(x.dtype).to(tl.float32) * weight).to(x.dtype).to(tl.float32)
    y_partner = ((partner32 * scale).to(x.dtype).to(tl.float32) * partner_weight).to(x.dtype).to(tl.float32)
    position = offset + token
    cos = tl.load(cos_ptr + position * HEAD_DIM + dims, mask=inside, other=0.0)  # each angle twice
    sin = tl.load(sin_ptr + position * HEAD_DIM + dims, mask=inside, other=0.0)
    sign = tl.where((dims & 1) == 0, -1.0, 1.0)
    rotated = y * cos + sign * y_partner * sin
    target = out_ptr + batch * out_batch_stride + position * HEADS * HEAD_DIM + head * HEAD_DIM + dims
    tl.store(target, rotated.to(x.dtype), mask=inside)


def norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    offset: int,
) -> None:
    """out[:, offset : offset + S] = rotary(RMSNorm(x) · weight) for x [B, S, H, D] (each token's
    H·D values contiguous, as in a slice of a fused projection's output), out [B, S_all, H, D]
    contiguous, cos and sin [S_all, D] float32."""
    batch, tokens, heads, head_dim = x.shape
    assert x.stride(3) == 1 and x.stride(2) == head_dim and out.is_contiguous()
    tokens_block = 16
    _norm_rope_kernel[(triton.cdiv(tokens, tokens_block), heads, batch)](
        x,
        weight,
        cos,
        sin,
        out,
        tokens,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        offset,
        eps,
        HEADS=heads,
        HEAD_DIM=head_dim,
        TOKENS_BLOCK=tokens_block,
    )


@triton.jit
def _attention_gelu_kernel(
    attention_ptr,
    mlp_ptr,
    out_ptr,
    dim,
    mlp_width,
    mlp_row_stride,
    BLOCK: tl.constexpr,
):
    """One block of one row of [attention | tanh-GELU(mlp)], the single-stream blocks' proj_out
    input: the GELU computed in float32 and rounded once, as PyTorch's is."""
    row, block = tl.program_id(0), tl.program_id(1)
    columns = block * BLOCK + tl.arange(0, BLOCK)
    width = dim + mlp_width
    inside = columns < width
    from_attention = columns < dim
    attention = tl.load(attention_ptr + row * dim + columns, mask=inside & from_attention, other=0.0)
    mlp = tl.load(mlp_ptr + row * mlp_row_stride + columns - dim, mask=inside & ~from_attention, other=0.0)
    m = mlp.to(tl.float32)
    inner = 0.7978845608028654 * (m + 0.044715 * m * m * m)  # sqrt(2 / pi) · (x + 0.044715 x³)
    tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
    gelu = (0.5 * m * (1.0 + tanh)).to(mlp.dtype)
    tl.store(out_ptr + row * width + columns, tl.where(from_attention, attention, gelu), mask=inside)


def attention_gelu(attention: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
    """cat([attention, gelu_tanh(mlp)], -1) for attention [B, S, D] contiguous and mlp [B, S, M]
    (a slice of a fused projection: each token's M values contiguous, rows `mlp.stride(1)` apart)."""
    batch, tokens, dim = attention.shape
    mlp_width = mlp.shape[-1]
    assert attention.is_contiguous() and mlp.stride(2) == 1 and mlp.stride(0) == tokens * mlp.stride(1)
    out = attention.new_empty(batch, tokens, dim + mlp_width)
    block = 1024
    _attention_gelu_kernel[(batch * tokens, triton.cdiv(dim + mlp_width, block))](
        attention, mlp, out, dim, mlp_width, mlp.stride(1), BLOCK=block
    )
    return out


@triton.jit
def _modulate_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    out_ptr,
    tokens,
    width,
    modulation_stride,
    eps,
    BLOCK: tl.constexpr,
):
    """One token: LayerNorm (no affine), then · (1 + scale) + shift of its image."""
    row = tl.program_id(0)
    batch = row // tokens
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    x = tl.load(x_ptr + row * width + columns, mask=inside, other=0.0)
    x32 = x.to(tl.float32)
    mean = tl.sum(x32, axis=0) / width
    centered = tl.where(inside, x32 - mean, 0.0)
    variance = tl.sum(centered * centered, axis=0) / width
    normalized = (centered * tl.rsqrt(variance + eps)).to(x.dtype).to(tl.float32)
    shift = tl.load(shift_ptr + batch * modulation_stride + columns, mask=inside, other=0.0)
    scale = tl.load(scale_ptr + batch * modulation_stride + columns, mask=inside, other=0.0)
    one_plus = (1.0 + scale.to(tl.float32)).to(x.dtype).to(tl.float32)
    scaled = (normalized * one_plus).to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * width + columns, (scaled + shift.to(tl.float32)).to(x.dtype), mask=inside)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm(x) · (1 + scale) + shift for x [B, S, D] contiguous, shift and scale [B, D]
    (rows of a modulation's output: each image's D values contiguous, any stride between images)."""
    batch, tokens, width = x.shape
    assert x.is_contiguous() and shift.stride(1) == 1 and scale.stride(1) == 1
    assert shift.stride(0) == scale.stride(0)
    out = torch.empty_like(x)
    _modulate_kernel[(batch * tokens,)](
        x,
        shift,
        scale,
        out,
        tokens,
        width,
        shift.stride(0),
        eps,
        BLOCK=triton.next_power_of_2(width),
        num_warps=8,
    )
    return out
