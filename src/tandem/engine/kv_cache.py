"""The key/value cache: preallocated per layer, one row ("slot") per running sequence.

A sequence keeps its slot from prefill to its last token; position p of the sequence lives at
index p of its slot. Attention masks are derived from positions alone, so a batch may mix
sequences of different lengths without padding bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttentionBatch:
    """What every attention layer needs to know about the tokens in one forward pass."""

    positions: torch.Tensor  # [B, T] position of each token in its sequence
    slots: torch.Tensor  # [B] cache row of each sequence
    kv_length: int  # cache positions [0, kv_length) are attended
    cos: torch.Tensor  # [B, T, head_dim]
    sin: torch.Tensor  # [B, T, head_dim]
    masks: dict[int | None, torch.Tensor]  # sliding window (None: full) -> [B, 1, T, kv_length] bool
    contiguous_slots: tuple[int, int] | None = None  # (first, end) when slots are a plain range


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


def slot_range(slots: list[int]) -> tuple[int, int] | None:
    """(first, end) when `slots` is an ascending run of consecutive integers, else None."""
    if slots and slots == list(range(slots[0], slots[0] + len(slots))):
        return slots[0], slots[0] + len(slots)
    return None


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
    def for_model(cls, model: nn.Module, num_slots: int, max_length: int) -> KVCache:
        """A cache shaped for the attention layers `model` holds (after any tensor-parallel split)."""
        layers = model.attention_layers()  # type: ignore[operator]
        first = next(iter(layers.values()))
        parameter = first.k_proj.weight
        return cls(
            layer_indices=list(layers),
            num_slots=num_slots,
            max_length=max_length,
            num_kv_heads=first.k_proj.out_features // first.head_dim,
            head_dim=first.head_dim,
            dtype=parameter.dtype,
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
