"""Triton kernels for the CUDA decode path: fewer, fused launches where batch-1 decode is
dominated by many tiny kernels rather than by bytes.

Each kernel rounds exactly where the eager PyTorch code it replaces rounds (to the activation
dtype after each elementwise operation), so the fast path and the reference agree to the bit on
elementwise work; only attention sums in a different order.
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from tandem import settings

# --- Overlapped launches (programmatic dependent launch, Hopper and later) ----------------------


@triton.jit
def wait_for_previous_kernel(OVERLAP: tl.constexpr):
    """The first thing every decode kernel does. With overlapped launches, a kernel may start
    while the one before it is still finishing: this lets the next kernel start as soon as all
    of this one's programs run, then waits until the previous kernel has finished and its
    writes are visible, before anything is read or written."""
    if OVERLAP:
        gdc_launch_dependents()
        gdc_wait()


def _overlapping() -> bool:
    return settings.engine_options().overlap_launches and _can_overlap()


@functools.cache
def _can_overlap() -> bool:
    if settings.triton_interpreter():
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def overlap() -> dict[str, bool]:
    """Launch options for a kernel that starts with `wait_for_previous_kernel`: on GPUs that
    can, it is launched to overlap the end of the kernel before it (a decode step is ~300 small
    kernels, and each start costs a microsecond or two)."""
    return {"OVERLAP": True, "launch_pdl": True} if _overlapping() else {"OVERLAP": False}


# --- RMSNorm, optionally fused with the residual add before it ---------------------------------


@triton.jit
def add_rounded(x, residual_ptr, columns, inside):
    """`x + residual` for one row, rounded to the activation dtype as the eager `x + residual` is."""
    residual = tl.load(residual_ptr + columns, mask=inside, other=0.0)
    return (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)


@triton.jit
def store_rms_norm(x, weight_ptr, out_ptr, columns, inside, width, eps):
    """Store RMSNorm(x) * weight for one row `x`, rounded where the eager code rounds."""
    x32 = x.to(tl.float32)
    variance = tl.sum(x32 * x32, axis=0) / width
    normalized = (x32 * tl.rsqrt(variance + eps)).to(x.dtype)
    weight = tl.load(weight_ptr + columns, mask=inside, other=0.0)
    tl.store(out_ptr + columns, (normalized.to(tl.float32) * weight.to(tl.float32)).to(x.dtype), mask=inside)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    width,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    row = tl.program_id(0)
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    x = tl.load(x_ptr + row * width + columns, mask=inside, other=0.0)
    if HAS_RESIDUAL:
        x = add_rounded(x, residual_ptr + row * width, columns, inside)
        tl.store(residual_out_ptr + row * width + columns, x, mask=inside)
    store_rms_norm(x, weight_ptr, out_ptr + row * width, columns, inside, width, eps)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of `x` (plus `residual` first, when given) over its last dimension.

    Returns (normalized, x + residual) — the second is None without a residual."""
    width = x.shape[-1]
    rows = x.numel() // width
    x = x.contiguous()
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else None
    block = triton.next_power_of_2(width)
    _rms_norm_kernel[(rows,)](
        x,
        residual.contiguous() if residual is not None else x,
        weight,
        out,
        summed if summed is not None else out,
        width,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=8 if block >= 4096 else 4,
        **overlap(),
    )
    return out, summed


# --- SiLU(gate) * up over a fused gate_up projection --------------------------------------------


@triton.jit
def silu_times(gate, up):
    """silu(gate) * up for gate and up in the activation dtype, rounded to it after the silu and
    after the product, as the eager `F.silu(gate) * up` rounds."""
    g32 = gate.to(tl.float32)
    activated = (g32 / (1.0 + tl.exp(-g32))).to(gate.dtype)
    return (activated.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, inner, BLOCK: tl.constexpr, OVERLAP: tl.constexpr):
    wait_for_previous_kernel(OVERLAP)
    row = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = columns < inner
    gate = tl.load(gate_up_ptr + row * 2 * inner + columns, mask=inside, other=0.0)
    up = tl.load(gate_up_ptr + row * 2 * inner + inner + columns, mask=inside, other=0.0)
    tl.store(out_ptr + row * inner + columns, silu_times(gate, up), mask=inside)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for `gate_up` = [..., 2 * inner] holding gate then up."""
    inner = gate_up.shape[-1] // 2
    rows = gate_up.numel() // (2 * inner)
    out = torch.empty(*gate_up.shape[:-1], inner, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(inner, block))](
        gate_up.contiguous(), out, inner, BLOCK=block, **overlap()
    )
    return out


# --- Rotary embedding of q and k, and the key/value cache write, for one new token ---------------


@triton.jit
def _rotary_cache_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    table_ptr,
    positions_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    num_heads,
    num_kv_heads,
    table_stride,
    qkv_stride,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    # One program per (sequence, head), heads counted over q then k then v.
    sequence = tl.program_id(0)
    head = tl.program_id(1)
    half = HEAD_DIM // 2
    offsets = tl.arange(0, HEAD_DIM)
    rotated_offsets = tl.where(offsets < half, offsets + half, offsets - half)
    sign = tl.where(offsets < half, -1.0, 1.0)
    base = qkv_ptr + sequence * qkv_stride + head * HEAD_DIM
    x = tl.load(base + offsets)
    position = tl.load(positions_ptr + sequence)
    block = tl.load(table_ptr + sequence * table_stride + position // BLOCK_SIZE)
    place = position % BLOCK_SIZE
    if head < num_heads + num_kv_heads:
        cos = tl.load(cos_ptr + sequence * HEAD_DIM + offsets).to(tl.float32)
        sin = tl.load(sin_ptr + sequence * HEAD_DIM + offsets).to(tl.float32)
        partner = tl.load(base + rotated_offsets).to(tl.float32) * sign
        # eager: (x * cos) + (rotate_half(x) * sin), each product rounded, then the sum
        first = (x.to(tl.float32) * cos).to(x.dtype).to(tl.float32)
        second = (partner.to(x.dtype).to(tl.float32) * sin).to(x.dtype).to(tl.float32)
        rotated = (first + second).to(x.dtype)
        if head < num_heads:
            tl.store(q_out_ptr + (sequence * num_heads + head) * HEAD_DIM + offsets, rotated)
        else:
            kv_head = head - num_heads
            row = ((block * num_kv_heads + kv_head) * BLOCK_SIZE + place) * HEAD_DIM
            tl.store(k_cache_ptr + row + offsets, rotated)
    else:
        kv_head = head - num_heads - num_kv_heads
        row = ((block * num_kv_heads + kv_head) * BLOCK_SIZE + place) * HEAD_DIM
        tl.store(v_cache_ptr + row + offsets, x)


def rotary_and_cache_write(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    block_table: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> torch.Tensor:
    """For one token per sequence: rotate q and k, store k and v at each sequence's position in
    the cache block its table names, and return the rotated q ([B, heads, head_dim]).

    qkv: [B, (heads + 2 kv_heads) * head_dim] (q heads, then k, then v); cos/sin: [B, head_dim];
    block_table: [B, W] int64; positions: [B] int64; caches: [blocks, kv_heads, block_size,
    head_dim]."""
    batch = qkv.shape[0]
    head_dim = k_cache.shape[-1]
    q_out = torch.empty(batch, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rotary_cache_kernel[(batch, num_heads + 2 * num_kv_heads)](
        qkv,
        cos,
        sin,
        block_table,
        positions,
        q_out,
        k_cache,
        v_cache,
        num_heads,
        num_kv_heads,
        block_table.stride(0),
        qkv.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=k_cache.shape[2],
        **overlap(),
    )
    return q_out


# --- Decode attention: split-K ("flash decoding") over the cached keys --------------------------

PARTITION = 128  # keys per program; a short context keeps few programs busy, a long one many


@triton.jit
def _decode_partial_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    table_ptr,
    lengths_ptr,
    max_ptr,
    sum_ptr,
    acc_ptr,
    num_heads,
    num_kv_heads,
    table_stride,
    num_partitions,
    window,
    scale,
    CACHE_BLOCK: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PARTITION_SIZE: tl.constexpr,
    IEEE: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    sequence = tl.program_id(0)
    kv_head = tl.program_id(1)
    partition = tl.program_id(2)
    length = tl.load(lengths_ptr + sequence)
    first_key = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    start = partition * PARTITION_SIZE
    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_inside = rows < GROUP
    out_index = (sequence * num_heads + heads) * num_partitions + partition
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + (sequence * num_heads + heads[:, None]) * HEAD_DIM + dims[None, :],
        mask=row_inside[:, None],
        other=0.0,
    )
    table = table_ptr + sequence * table_stride
    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for block in tl.static_range(PARTITION_SIZE // BLOCK_N):
        # Masked loads of keys past the length (or before the window) read no memory.
        keys = start + block * BLOCK_N + tl.arange(0, BLOCK_N)
        valid = (keys < length) & (keys >= first_key)
        blocks = tl.load(table + keys // CACHE_BLOCK, mask=valid, other=0)  # the block table's entries
        cache_rows = (blocks * num_kv_heads + kv_head) * CACHE_BLOCK + keys % CACHE_BLOCK
        offsets = cache_rows[:, None] * HEAD_DIM + dims[None, :]
        k = tl.load(k_cache_ptr + offsets, mask=valid[:, None], other=0.0)
        v = tl.load(v_cache_ptr + offsets, mask=valid[:, None], other=0.0)
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        else:
            scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        block_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # While no key has been visible the maximum is -inf, and -inf - -inf would be NaN.
        nothing_yet = block_max == float("-inf")
        correction = tl.where(nothing_yet, 1.0, tl.exp(running_max - block_max))
        p = tl.where(valid[None, :], tl.exp(scores - tl.where(nothing_yet, 0.0, block_max)[:, None]), 0.0)
        running_sum = running_sum * correction + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * correction[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
        running_max = block_max
    tl.store(max_ptr + out_index, running_max, mask=row_inside)
    tl.store(sum_ptr + out_index, running_sum, mask=row_inside)
    tl.store(acc_ptr + out_index[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_inside[:, None])


@triton.jit
def _decode_reduce_kernel(
    max_ptr,
    sum_ptr,
    acc_ptr,
    lengths_ptr,
    out_ptr,
    num_heads,
    num_partitions,
    HEAD_DIM: tl.constexpr,
    PARTITION_SIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PARTITION_BLOCKS: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    wait_for_previous_kernel(OVERLAP)
    sequence = tl.program_id(0)
    head = tl.program_id(1)
    length = tl.load(lengths_ptr + sequence)
    used = tl.cdiv(length, PARTITION_SIZE)
    base = (sequence * num_heads + head) * num_partitions
    total_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    for block in tl.static_range(PARTITION_BLOCKS):
        parts = block * BLOCK_P + tl.arange(0, BLOCK_P)
        total_max = tl.maximum(
            total_max, tl.load(max_ptr + base + parts, mask=parts < used, other=float("-inf"))
        )
    overall = tl.max(total_max, axis=0)
    dims = tl.arange(0, HEAD_DIM)
    numerator = tl.zeros([HEAD_DIM], tl.float32)
    denominator = tl.zeros([BLOCK_P], tl.float32)
    for block in tl.static_range(PARTITION_BLOCKS):
        parts = block * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = parts < used
        # partitions that saw no visible key hold -inf: their weight is exp(-inf) = 0
        weights = tl.where(
            inside, tl.exp(tl.load(max_ptr + base + parts, mask=inside, other=0.0) - overall), 0.0
        )
        denominator += weights * tl.load(sum_ptr + base + parts, mask=inside, other=0.0)
        acc = tl.load(
            acc_ptr + (base + parts[:, None]) * HEAD_DIM + dims[None, :], mask=inside[:, None], other=0.0
        )
        numerator += tl.sum(acc * weights[:, None], axis=0)
    out = numerator / tl.sum(denominator, axis=0)
    tl.store(out_ptr + (sequence * num_heads + head) * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Attention of one new query per sequence over its cached keys [0, length) (the last
    `window` of them under a sliding window), found through its row of `block_table` ([B, W]).
    q: [B, heads, head_dim]; caches: [blocks, kv_heads, block_size, head_dim]; returns q's shape.

    Lengths are read on the device, so one CUDA graph serves every context length."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    max_length = block_table.shape[1] * block_size
    group = num_heads // num_kv_heads
    num_partitions = triton.cdiv(max_length, PARTITION)
    maxima = torch.empty(batch, num_heads, num_partitions, dtype=torch.float32, device=q.device)
    sums = torch.empty_like(maxima)
    acc = torch.empty(batch, num_heads, num_partitions, head_dim, dtype=torch.float32, device=q.device)
    ieee = q.dtype == torch.float32
    _decode_partial_kernel[(batch, num_kv_heads, num_partitions)](
        q,
        k_cache,
        v_cache,
        block_table,
        lengths,
        maxima,
        sums,
        acc,
        num_heads,
        num_kv_heads,
        block_table.stride(0),
        num_partitions,
        window or 0,
        scale,
        CACHE_BLOCK=block_size,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_N=32 if ieee else 64,
        PARTITION_SIZE=PARTITION,
        IEEE=ieee,
        num_warps=4,
        **overlap(),
    )
    out = torch.empty_like(q)
    _decode_reduce_kernel[(batch, num_heads)](
        maxima,
        sums,
        acc,
        lengths,
        out,
        num_heads,
        num_partitions,
        HEAD_DIM=head_dim,
        PARTITION_SIZE=PARTITION,
        BLOCK_P=16,
        PARTITION_BLOCKS=triton.cdiv(num_partitions, 16),
        **overlap(),
    )
    return out
