"""The MLX engine's paged key/value cache: fixed-size blocks from one pool, numbered like the
PyTorch engine's (`engine/kv_cache.py`), so the shared scheduler's plans and block tables apply
unchanged.

Position p of a sequence lives at offset p % block_size of block `blocks[p // block_size]`; one
block past the pool is scratch, where the padding of a step writes. Masks come from positions
alone, so one step may mix sequences of different lengths (decode), continue a prompt in chunks,
or hold several whole prompts padded on the right.

mlx-lm's attention layers take a `cache` argument with an `offset` (the rotary position of the
step's first token, one per sequence) and `update_and_fetch(keys, values)`; `LayerCache` is that
view of one layer of this cache for one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from tandem.engine.blocks import BLOCK_SIZE, blocks_for
from tandem.model.step import StepPlan

# Passed as the attention mask where queries see only their own step's keys, causally.
CAUSAL = "causal"


@dataclass(frozen=True)
class StepBatch:
    """Where one step's tokens sit: what every attention layer needs, built once per step."""

    offsets: mx.array  # [B] int32 position of each sequence's first token in this step
    positions: mx.array  # [B, T] int32 position of every token
    write_blocks: mx.array  # [B, T] int32 the block each token's keys and values go to
    write_offsets: mx.array  # [B, T] int32 and where in that block
    read_table: mx.array  # [B, blocks of kv_length] int32 the blocks attention reads
    kv_length: int  # cache positions [0, kv_length) are attended
    prompt_from_start: bool  # every chunk starts at position 0 and is more than one token

    @classmethod
    def for_plan(cls, plan: StepPlan, scratch_block: int, block_size: int = BLOCK_SIZE) -> StepBatch:
        T = plan.tokens_per_sequence
        starts = [chunk.start for chunk in plan.chunks]
        kv_length = max(chunk.end for chunk in plan.chunks)
        width = max(blocks_for(max(starts) + T, block_size), *(len(c.blocks) for c in plan.chunks))
        table = [list(c.blocks) + [scratch_block] * (width - len(c.blocks)) for c in plan.chunks]
        places = [[start + t for t in range(T)] for start in starts]
        offsets = mx.array(starts, dtype=mx.int32)
        return cls(
            offsets=offsets,
            positions=mx.array(places, dtype=mx.int32),
            write_blocks=mx.array(
                [[row[p // block_size] for p in ps] for row, ps in zip(table, places, strict=True)],
                dtype=mx.int32,
            ),
            write_offsets=mx.array([[p % block_size for p in ps] for ps in places], dtype=mx.int32),
            read_table=mx.array([row[: blocks_for(kv_length, block_size)] for row in table], dtype=mx.int32),
            kv_length=kv_length,
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


class PagedCache:
    """Keys and values of the layers one stage owns, in `num_blocks` blocks (and the scratch)."""

    def __init__(
        self,
        layer_indices: list[int],
        num_blocks: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: mx.Dtype,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        shape = (num_blocks + 1, num_kv_heads, block_size, head_dim)
        # Zeros, not empty: masked positions still enter the attention product (with weight 0).
        self.keys = {i: mx.zeros(shape, dtype=dtype) for i in layer_indices}
        self.values = {i: mx.zeros(shape, dtype=dtype) for i in layer_indices}
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks
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
        blocks, offsets = batch.write_blocks, batch.write_offsets  # [B, T]
        # Indexed by [B, T] blocks and offsets around a slice: the update is [B, T, heads, hd].
        self.keys[layer_index][blocks, :, offsets] = keys.transpose(0, 2, 1, 3)
        self.values[layer_index][blocks, :, offsets] = values.transpose(0, 2, 1, 3)
        if batch.attends_own_keys(window):
            return keys, values
        return self._gather(self.keys[layer_index], batch), self._gather(self.values[layer_index], batch)

    def _gather(self, cache: mx.array, batch: StepBatch) -> mx.array:
        """[B, kv_heads, kv_length, head_dim] from the blocks of the batch's read table."""
        table = batch.read_table  # [B, n]
        gathered = cache[table].transpose(0, 2, 1, 3, 4)  # [B, heads, n, block_size, hd]
        B, heads, n, size, head_dim = gathered.shape
        return gathered.reshape(B, heads, n * size, head_dim)[:, :, : batch.kv_length]


class LayerCache:
    """One layer of the cache for one step, in the shape mlx-lm's attention calls it."""

    def __init__(self, cache: PagedCache, layer_index: int, batch: StepBatch, window: int | None) -> None:
        self.cache = cache
        self.layer_index = layer_index
        self.batch = batch
        self.window = window
        self.offset = batch.offsets  # rotary offset per sequence ([B]; mx.fast.rope takes a vector)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return self.cache.update(self.layer_index, self.batch, keys, values, self.window)
