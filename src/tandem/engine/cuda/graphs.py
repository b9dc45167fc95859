"""CUDA graphs of the decode step: one launch per token instead of hundreds.

A graph is captured per batch-size bucket (1, 2, 4, ...) the first time a decode step of that
size runs. Inputs (token ids, positions, block tables as wide as the context) live in static
device buffers filled by host-to-device copies per step; rows beyond the real batch point at the
scratch cache block. Attention reads sequence lengths on the device, so one graph serves every
context length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tandem.engine.kv_cache import KVCache
from tandem.engine.latent_cache import LatentCache
from tandem.engine.models.llama import CausalLM
from tandem.model.step import StepPlan

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WARMUP_RUNS = 2


def capture(forward: Callable[[], torch.Tensor], pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`forward` run a few times on a side stream (compiling and tuning its kernels), then
    captured in a graph drawing on `pool`; returns the graph and its output tensor."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_RUNS):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = forward()
    return graph, output


def bucket_for(batch: int, max_batch: int) -> int:
    """The smallest bucket that holds `batch` sequences."""
    return next((b for b in BUCKETS if b >= batch and b <= max_batch), max_batch)


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv_cache: KVCache | LatentCache, table_width: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_batch = max_batch = min(kv_cache.num_blocks, BUCKETS[-1])
        self.scratch_block = kv_cache.scratch_block
        device = next(model.parameters()).device
        # rows: token ids, positions; a pinned host copy of it (and of the block tables) feeds
        # each replay. Two copies, used in turn: while one step runs ahead on the device (see
        # engine.py), the copy from the previous step's buffer may still be queued.
        self.host_inputs = [torch.zeros(2, max_batch, dtype=torch.long).pin_memory() for _ in range(2)]
        self.host_tables = [
            torch.full((max_batch, table_width), self.scratch_block, dtype=torch.long).pin_memory()
            for _ in range(2)
        ]
        self.replays = 0
        self.inputs = torch.zeros(2, max_batch, dtype=torch.long, device=device)
        self.tables = torch.full(
            (max_batch, table_width), self.scratch_block, dtype=torch.long, device=device
        )
        self.hidden = None
        if not model.stage.is_first:
            self.hidden = torch.zeros(
                max_batch, 1, model.config.hidden_size, dtype=model.activation_dtype(), device=device
            )
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def handles(self, plan: StepPlan) -> bool:
        return plan.tokens_per_sequence == 1 and len(plan.chunks) <= self.max_batch

    def _forward(self, bucket: int) -> torch.Tensor:
        positions = self.inputs[1, :bucket].view(bucket, 1)
        batch = self.model.attention_batch(positions, self.tables[:bucket], kv_length=0)
        inputs = self.inputs[0, :bucket].view(bucket, 1) if self.hidden is None else self.hidden[:bucket]
        return self.model(inputs, batch, self.kv_cache)

    def _capture(self, bucket: int) -> None:
        self.tables.fill_(self.scratch_block)  # warm-up writes go to the scratch block
        self.graphs[bucket] = capture(lambda: self._forward(bucket), self.pool)

    @torch.inference_mode()
    def run(
        self, plan: StepPlan, hidden: torch.Tensor | None, feed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Replay the graph for `plan`; token ids from `feed` (on the device) where given."""
        batch = len(plan.chunks)
        bucket = bucket_for(batch, self.max_batch)
        if bucket not in self.graphs:
            self._capture(bucket)
        staged, tables = self.host_inputs[self.replays % 2], self.host_tables[self.replays % 2]
        self.replays += 1
        staged[0, :batch] = torch.tensor([c.token_ids[0] for c in plan.chunks])
        staged[1, :batch] = torch.tensor([c.start for c in plan.chunks])
        staged[1, batch:bucket] = 0
        # Entries past a sequence's blocks may hold another step's: nothing reads past a length.
        for row, chunk in enumerate(plan.chunks):
            tables[row, : len(chunk.blocks)] = torch.tensor(chunk.blocks)
        tables[batch:bucket, 0] = self.scratch_block
        self.inputs[:, :bucket].copy_(staged[:, :bucket], non_blocking=True)
        self.tables[:bucket].copy_(tables[:bucket], non_blocking=True)
        if feed is not None:
            self.inputs[0, :batch].copy_(feed)
        if self.hidden is not None:
            assert hidden is not None
            self.hidden[:batch].copy_(hidden.reshape(batch, 1, -1))
        graph, output = self.graphs[bucket]
        graph.replay()
        return output[:batch]
