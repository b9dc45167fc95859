"""The compressed cache of multi-head latent attention (DeepSeek-V3, Kimi-K2).

Per layer `[slots, max_length, kv_lora_rank + qk_rope_head_dim]`: each token keeps its
normalized key/value latent and its rotated rotary key, shared by every head, instead of every
head's keys and values (576 values a token and layer for DeepSeek-V3, against 32 768 expanded).
Slots and positions work as in `kv_cache.KVCache`: one slot per running sequence, position p of
a sequence at index p, one `update` operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from tandem.engine.attention import AttentionBatch


class LatentCache:
    """Latents of the layers one stage owns, for `num_slots` sequences of `max_length` tokens."""

    def __init__(
        self,
        layer_indices: list[int],
        num_slots: int,
        max_length: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_slots, max_length, width)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0).
        self.latents = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.num_slots = num_slots
        self.max_length = max_length
        self.width = width

    @classmethod
    def for_model(cls, model: nn.Module, num_slots: int, max_length: int) -> LatentCache:
        """A cache for the latent-attention layers `model` holds."""
        layers = model.attention_layers()  # type: ignore[operator]
        first = next(iter(layers.values()))
        parameter = first.kv_a_layernorm.weight
        return cls(list(layers), num_slots, max_length, first.latent_width, parameter.dtype, parameter.device)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.latents.values())

    def update(self, layer_index: int, batch: AttentionBatch, latent: torch.Tensor) -> torch.Tensor:
        """Store this step's latents ([B, T, width]) at their positions and return the latents to
        attend over: [B, kv_length, width], or the slots' whole rows ([B, max_length, width])
        when the batch reads lengths on the device (a decode step inside a CUDA graph)."""
        cache = self.latents[layer_index]
        cache[batch.slots[:, None], batch.positions] = latent
        if batch.decode_kernels:
            return cache[batch.slots]
        if batch.contiguous_slots is not None:
            first, end = batch.contiguous_slots
            return cache[first:end, : batch.kv_length]
        return cache[batch.slots, : batch.kv_length]
