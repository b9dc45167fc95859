"""The compressed cache of multi-head latent attention (DeepSeek-V3, Kimi-K2).

Per layer `[blocks, block_size, kv_lora_rank + qk_rope_head_dim]`: each token keeps its
normalized key/value latent and its rotated rotary key, shared by every head, instead of every
head's keys and values (576 values a token and layer for DeepSeek-V3, against 32 768 expanded).
Blocks, block tables and the scratch block work as in `kv_cache.KVCache`; one `update` operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tandem.engine.blocks import BLOCK_SIZE, blocks_for

if TYPE_CHECKING:
    from tandem.engine.attention import AttentionBatch


class LatentCache:
    """Latents of the layers one stage owns, in `num_blocks` blocks (and the scratch)."""

    def __init__(
        self,
        layer_indices: list[int],
        num_blocks: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        shape = (num_blocks + 1, block_size, width)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0).
        self.latents = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.width = width

    @property
    def scratch_block(self) -> int:
        return self.num_blocks

    @classmethod
    def for_model(cls, model: nn.Module, num_blocks: int) -> LatentCache:
        """A cache for the latent-attention layers `model` holds."""
        layers = model.attention_layers()  # type: ignore[operator]
        first = next(iter(layers.values()))
        parameter = first.kv_a_layernorm.weight
        return cls(list(layers), num_blocks, first.latent_width, parameter.dtype, parameter.device)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents.values())

    def update(self, layer_index: int, batch: AttentionBatch, latent: torch.Tensor) -> torch.Tensor:
        """Store this step's latents ([B, T, width]) at their positions and return the latents to
        attend over: [B, kv_length, width], or every block of the table ([B, W * block_size,
        width]) when the batch reads lengths on the device (a decode step inside a CUDA graph)."""
        cache = self.latents[layer_index]
        cache[batch.write_blocks, batch.write_offsets] = latent
        table = batch.block_table
        if not batch.decode_kernels:
            table = table[:, : blocks_for(batch.kv_length, self.block_size)]
        gathered = cache[table].reshape(table.shape[0], -1, self.width)  # [B, n * block_size, width]
        return gathered if batch.decode_kernels else gathered[:, : batch.kv_length]
