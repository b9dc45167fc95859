"""Attention over the paged KV cache, given positions: rotary embedding, the cache write, and
the attention itself, by the fastest path the batch allows.

- decode on CUDA (one new token per sequence): a fused rotary + cache-write kernel and a
  split-K decode kernel that follow the block table and read each sequence's length on the
  device (so one CUDA graph serves every length);
- a prompt starting at position 0 with no sliding window: causal attention over the prompt's
  own keys (flash attention on CUDA), after writing them to the cache;
- anything else (prompt chunks after the first, windows, CPU decode): the cached keys, gathered
  from the sequence's blocks, with a boolean mask built from positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tandem.engine.blocks import BLOCK_SIZE
from tandem.engine.kv_cache import KVCache
from tandem.engine.rope import apply_rotary


@dataclass
class AttentionBatch:
    """What every attention layer needs to know about the tokens in one forward pass."""

    positions: torch.Tensor  # [B, T] position of each token in its sequence
    block_table: torch.Tensor  # [B, W] cache blocks of each sequence, the scratch block past them
    write_blocks: torch.Tensor  # [B, T] the block each token's keys and values go to
    write_offsets: torch.Tensor  # [B, T] and where in that block
    kv_length: int  # cache positions [0, kv_length) are attended (masked paths)
    cos: torch.Tensor  # [B, T, head_dim]
    sin: torch.Tensor  # [B, T, head_dim]
    masks: dict[int | None, torch.Tensor]  # sliding window (None: full) -> [B, 1, T, kv_length] bool
    prompt_from_start: bool = False  # every sequence's chunk starts at position 0
    decode_kernels: bool = False  # one token per sequence on CUDA: the fused kernels apply
    lengths: torch.Tensor | None = None  # [B] tokens in the cache after this step (decode kernels)


def attention_masks(
    positions: torch.Tensor, kv_length: int, windows: set[int | None]
) -> dict[int | None, torch.Tensor]:
    """Boolean masks (True = attend): key j is visible to a query at position p when j <= p,
    and, under a sliding window w, when p - j < w."""
    keys = torch.arange(kv_length, device=positions.device)  # [S]
    queries = positions[:, None, :, None]  # [B, 1, T, 1]
    causal = keys <= queries  # [B, 1, T, S]
    masks: dict[int | None, torch.Tensor] = {}
    for window in windows:
        masks[window] = causal if window is None else causal & (queries - keys < window)
    return masks


def cache_places(
    positions: torch.Tensor, block_table: torch.Tensor, block_size: int = BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block and the offset in it of each position ([B, T] each)."""
    return block_table.gather(1, positions // block_size), positions % block_size


def attend(
    layer_index: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    batch: AttentionBatch,
    kv_cache: KVCache,
    packed: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [B, T, heads, head_dim], k and v: [B, T, kv_heads, head_dim], before rotary; `packed`,
    when given, is q, k and v side by side in one tensor ([B, T, ...]), saving a copy.
    Writes k and v to the cache; returns the attention output [B, T, heads * head_dim]."""
    B, T, heads, head_dim = q.shape
    scale = head_dim**-0.5
    if batch.decode_kernels:
        from tandem.engine.cuda.kernels import decode_attention, rotary_and_cache_write

        assert batch.lengths is not None
        if packed is not None:
            qkv = packed.reshape(B, -1)
        else:
            qkv = torch.cat([q.reshape(B, -1), k.reshape(B, -1), v.reshape(B, -1)], dim=-1)
        keys, values = kv_cache.keys[layer_index], kv_cache.values[layer_index]
        rotated = rotary_and_cache_write(
            qkv,
            batch.cos.view(B, head_dim),
            batch.sin.view(B, head_dim),
            batch.block_table,
            batch.positions.view(B),
            keys,
            values,
            heads,
            k.shape[2],
        )
        out = decode_attention(
            rotated, keys, values, batch.block_table, batch.lengths, window, scale
        )  # [B, heads, hd]
        return out.view(B, 1, heads * head_dim)
    q = apply_rotary(q.transpose(1, 2), batch.cos, batch.sin)  # [B, heads, T, head_dim]
    k = apply_rotary(k.transpose(1, 2), batch.cos, batch.sin)  # [B, kv_heads, T, head_dim]
    v = v.transpose(1, 2)
    kv_cache.update(layer_index, batch, k, v)
    if batch.prompt_from_start and window is None:
        # The prompt attends only to itself: causal attention over its own keys. Key/value heads
        # are repeated for grouped queries so that CUDA takes the flash kernel, not the math one.
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        keys, values = kv_cache.read(layer_index, batch)  # [B, kv_heads, S, head_dim]
        out = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=batch.masks[window],
            scale=scale,
            enable_gqa=q.shape[1] != keys.shape[1],
        )
    return out.transpose(1, 2).reshape(B, T, heads * head_dim)
