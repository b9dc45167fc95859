"""The MLX engine's key/value cache: one row ("slot") per running sequence, like the PyTorch
engine's (`engine/kv_cache.py`), so the shared scheduler's plans apply unchanged.

A sequence keeps its slot from prefill to its last token; position p lives at index p of its
slot. Masks come from positions alone, so one step may mix sequences of different lengths
(decode), continue a prompt in chunks, or hold several whole prompts padded on the right (their
padding writes keys past each prompt's end, where decode overwrites them before anything reads).

mlx-lm's attention layers take a `cache` argument with an `offset` (the rotary position of the
step's first token, one per sequence) and `update_and_fetch(keys, values)`; `LayerCache` is that
view of one layer of this cache for one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from tandem.model.step import StepPlan

# Passed as the attention mask where queries see only their own step's keys, causally.
CAUSAL = "causal"


@dataclass(frozen=True)
class StepBatch:
    """Where one step's tokens sit: what every attention layer needs, built once per step."""

    slots: mx.array  # [B] int32 cache row of each sequence
    offsets: mx.array  # [B] int32 position of each sequence's first token in this step
    positions: mx.array  # [B, T] int32 position of every token
    kv_length: int  # cache positions [0, kv_length) are attended
    contiguous_slots: tuple[int, int] | None  # (first, end) when the slots are a plain range
    prompt_from_start: bool  # every chunk starts at position 0 and is more than one token

    @classmethod
    def for_plan(cls, plan: StepPlan) -> StepBatch:
        T = plan.tokens_per_sequence
        starts = [chunk.start for chunk in plan.chunks]
        slots = [chunk.slot for chunk in plan.chunks]
        offsets = mx.array(starts, dtype=mx.int32)
        contiguous = None
        if slots == list(range(slots[0], slots[0] + len(slots))):
            contiguous = (slots[0], slots[0] + len(slots))
        return cls(
            slots=mx.array(slots, dtype=mx.int32),
            offsets=offsets,
            positions=offsets[:, None] + mx.arange(T, dtype=mx.int32)[None, :],
            kv_length=max(chunk.end for chunk in plan.chunks),
            contiguous_slots=contiguous,
            prompt_from_start=T > 1 and not any(starts),
        )

    def attends_own_keys(self, window: int | None) -> bool:
        """A prompt from position 0 without a window sees only its own keys, causally: attention
        then reads this step's keys, not the cache (the same numbers, less work)."""
        return self.prompt_from_start and window is None

    def mask(self, window: int | None) -> mx.array | str:
        """True where a query at position p may see key j: j <= p, and p - j < window under a
        sliding window. [B, 1, T, kv_length] bool, or "causal" over the step's own keys."""
        if self.attends_own_keys(window):
            return CAUSAL
        keys = mx.arange(self.kv_length, dtype=mx.int32)  # [S]
        queries = self.positions[:, None, :, None]  # [B, 1, T, 1]
        visible = keys <= queries  # [B, 1, T, S]
        if window is not None:
            visible = visible & (queries - keys < window)
        return visible


class SlotCache:
    """Keys and values of the layers one stage owns, for `num_slots` sequences of `max_length`."""

    def __init__(
        self,
        layer_indices: list[int],
        num_slots: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: mx.Dtype,
    ) -> None:
        shape = (num_slots, num_kv_heads, max_length, head_dim)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0).
        self.keys = {i: mx.zeros(shape, dtype=dtype) for i in layer_indices}
        self.values = {i: mx.zeros(shape, dtype=dtype) for i in layer_indices}
        self.num_slots = num_slots
        self.max_length = max_length
        mx.eval(self.arrays())  # allocate now: memory is taken at load, not at the first request

    def arrays(self) -> list[mx.array]:
        return [*self.keys.values(), *self.values.values()]

    def bytes(self) -> int:
        return sum(array.nbytes for array in self.arrays())

    def update(
        self, layer_index: int, batch: StepBatch, keys: mx.array, values: mx.array, window: int | None
    ) -> tuple[mx.array, mx.array]:
        """Store this step's keys and values ([B, kv_heads, T, head_dim], after rotary) at their
        positions; return what the layer attends over: the cache's [B, kv_heads, kv_length,
        head_dim], or this step's own keys and values where `batch.attends_own_keys(window)`."""
        rows = batch.slots[:, None]  # [B, 1]
        # Indexed by [B, 1] rows and [B, T] positions around a slice: the update is [B, T, heads, hd].
        self.keys[layer_index][rows, :, batch.positions] = keys.transpose(0, 2, 1, 3)
        self.values[layer_index][rows, :, batch.positions] = values.transpose(0, 2, 1, 3)
        if batch.attends_own_keys(window):
            return keys, values
        cache_k, cache_v = self.keys[layer_index], self.values[layer_index]
        if batch.contiguous_slots is not None:
            first, end = batch.contiguous_slots
            return cache_k[first:end, :, : batch.kv_length], cache_v[first:end, :, : batch.kv_length]
        return cache_k[batch.slots, :, : batch.kv_length], cache_v[batch.slots, :, : batch.kv_length]


class LayerCache:
    """One layer of the cache for one step, in the shape mlx-lm's attention calls it."""

    def __init__(self, cache: SlotCache, layer_index: int, batch: StepBatch, window: int | None) -> None:
        self.cache = cache
        self.layer_index = layer_index
        self.batch = batch
        self.window = window
        self.offset = batch.offsets  # rotary offset per sequence ([B]; mx.fast.rope takes a vector)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return self.cache.update(self.layer_index, self.batch, keys, values, self.window)
