"""The key/value cache: preallocated per layer, one row ("slot") per running sequence.

A sequence keeps its slot from prefill to its last token; position p of the sequence lives at
index p of its slot. Attention masks are derived from positions alone, so a batch may mix
sequences of different lengths without padding bookkeeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from tandem.engine.attention import AttentionBatch
    from tandem.engine.latent_cache import LatentCache


class KVCache:
    """Keys and values of the layers one stage owns, for `num_slots` sequences of `max_length`."""

    def __init__(
        self,
        layer_indices: list[int],
        num_slots: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_slots, num_kv_heads, max_length, head_dim)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0),
        # and uninitialized memory could hold NaN.
        self.keys = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.values = {i: torch.zeros(shape, dtype=dtype, device=device) for i in layer_indices}
        self.num_slots = num_slots
        self.max_length = max_length

    @classmethod
    def for_model(cls, model: nn.Module, num_slots: int, max_length: int) -> KVCache | LatentCache:
        """A cache shaped for the attention layers `model` holds (after any tensor-parallel
        split): keys and values, or the compressed latents of latent attention, which the
        attention declares with its `latent_width`."""
        layers = model.attention_layers()  # type: ignore[operator]
        first = next(iter(layers.values()))
        if getattr(first, "latent_width", None):
            from tandem.engine.latent_cache import LatentCache

            return LatentCache.for_model(model, num_slots, max_length)
        parameter = next(model.parameters())
        return cls(
            layer_indices=list(layers),
            num_slots=num_slots,
            max_length=max_length,
            num_kv_heads=first.local_kv_heads,
            head_dim=first.head_dim,
            dtype=model.activation_dtype(),  # type: ignore[operator]
            device=parameter.device,
        )

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def update(
        self, layer_index: int, batch: AttentionBatch, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys and values ([B, kv_heads, T, head_dim]) at their positions and
        return the keys and values to attend over ([B, kv_heads, kv_length, head_dim])."""
        cache_k, cache_v = self.keys[layer_index], self.values[layer_index]
        rows = batch.slots[:, None]  # [B, 1]
        cache_k[rows, :, batch.positions] = k.transpose(1, 2)  # [B, T, kv_heads, head_dim]
        cache_v[rows, :, batch.positions] = v.transpose(1, 2)
        if batch.contiguous_slots is not None:
            first, end = batch.contiguous_slots
            return cache_k[first:end, :, : batch.kv_length], cache_v[first:end, :, : batch.kv_length]
        return cache_k[batch.slots, :, : batch.kv_length], cache_v[batch.slots, :, : batch.kv_length]
