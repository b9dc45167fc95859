"""The paged key/value cache: per layer, one pool of fixed-size blocks shared by all sequences.

A sequence's block table (from the scheduler, in the step plan) lists its blocks in position
order: position p lives at offset p % block_size of block `table[p // block_size]`. Attention
masks are derived from positions alone, so a batch may mix sequences of different lengths
without padding bookkeeping. One block past the pool is scratch: rows of a block table past a
sequence's blocks point there, so padding tokens (and the padding rows of a CUDA graph) write
somewhere no sequence reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tandem.engine.blocks import BLOCK_SIZE, blocks_for

if TYPE_CHECKING:
    from tandem.engine.attention import AttentionBatch
    from tandem.engine.latent_cache import LatentCache


class KVCache:
    """Keys and values of the layers one stage owns, in `num_blocks` blocks (and the scratch)."""

    def __init__(
        self,
        layer_indices: list[int],
        num_blocks: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        shape = (num_blocks + 1, num_kv_heads, block_size, head_dim)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0),
        # and uninitialized memory could hold NaN.
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.num_blocks = num_blocks
        self.block_size = block_size

    @property
    def scratch_block(self) -> int:
        return self.num_blocks

    @classmethod
    def for_model(cls, model: nn.Module, num_blocks: int) -> KVCache | LatentCache:
        """A cache shaped for the attention layers `model` holds (after any tensor-parallel
        split): keys and values, or the compressed latents of latent attention, which the
        attention declares with its `latent_width`."""
        layers = model.attention_layers()  # type: ignore[operator]
        first = next(iter(layers.values()))
        if getattr(first, "latent_width", None):
            from tandem.engine.latent_cache import LatentCache

            return LatentCache.for_model(model, num_blocks)
        parameter = next(model.parameters())
        return cls(
            layer_indices=list(layers),
            num_blocks=num_blocks,
            num_kv_heads=first.local_kv_heads,
            head_dim=first.head_dim,
            dtype=model.activation_dtype(),  # type: ignore[operator]
            device=parameter.device,
        )

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def update(self, layer_index: int, batch: AttentionBatch, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys and values ([B, kv_heads, T, head_dim]) at their positions."""
        blocks, offsets = batch.write_blocks, batch.write_offsets  # [B, T]
        self.keys[layer_index][blocks, :, offsets] = k.transpose(1, 2)  # [B, T, kv_heads, head_dim]
        self.values[layer_index][blocks, :, offsets] = v.transpose(1, 2)

    def read(self, layer_index: int, batch: AttentionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of positions [0, kv_length) of every sequence, gathered from its
        blocks: [B, kv_heads, kv_length, head_dim] each."""
        return (
            gather_blocks(self.keys[layer_index], batch.block_table, batch.kv_length),
            gather_blocks(self.values[layer_index], batch.block_table, batch.kv_length),
        )


def gather_blocks(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """Positions [0, length) of each row of `block_table` ([B, W]) from `cache` ([blocks, heads,
    block_size, dim]) as [B, heads, length, dim]."""
    heads, block_size, dim = cache.shape[1:]
    table = block_table[:, : blocks_for(length, block_size)]  # [B, n]
    gathered = cache[table].transpose(1, 2)  # [B, heads, n, block_size, dim]
    return gathered.reshape(table.shape[0], heads, -1, dim)[:, :, :length]
