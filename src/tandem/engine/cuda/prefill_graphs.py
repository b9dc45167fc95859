"""CUDA graphs of short prompts: a prompt of up to 512 tokens from position 0, computed by one
graph launch instead of the eager forward's hundreds of operations, each dispatched by the host
(a 128-token prompt of the Llama-3-8B shape on an H200: 6.5 ms of GPU work, 30 ms of host
dispatch, docs/results.md).

A graph is captured per token bucket (16, 32, ..., 512) the first time a prompt of that size
comes, for a stage that holds the whole model (token ids in, logits out) without a
tensor-parallel group. The prompt is padded on the right to its bucket: the padding's keys and
values land past the prompt (in its own unfilled block, or the scratch block past its blocks),
where the causal mask hides them from the prompt's tokens and the sequence's next tokens
overwrite them before anything reads them. The logits are those of the prompt's last token.
"""

from __future__ import annotations

import torch

from tandem.engine.blocks import BLOCK_SIZE
from tandem.engine.cuda.graphs import capture
from tandem.engine.kv_cache import KVCache
from tandem.engine.models.llama import CausalLM
from tandem.engine.parallel.group import AllReduce
from tandem.engine.quant.linear import QuantizedEmbedding, QuantizedLinear
from tandem.model.step import StepPlan

PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)


def prefill_bucket(tokens: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket that holds a prompt of `tokens` tokens; None past the largest."""
    return next((bucket for bucket in buckets if bucket >= tokens), None)


def prefill_graphs_fit(model: CausalLM) -> bool:
    """Whether this stage's prompts can be captured: the whole model on one device (no
    all-reduce inside), 16-bit dense layers (a mixture's routing sizes its work on the host;
    quantized products choose their kernel by timing), and the decode kernels' support (the
    same head sizes, Triton present)."""
    whole = model.stage.is_first and model.stage.is_last
    modules = list(model.modules())
    grouped = any(isinstance(value, AllReduce) for module in modules for value in vars(module).values())
    quantized = any(isinstance(module, QuantizedLinear | QuantizedEmbedding) for module in modules)
    return whole and not grouped and not quantized and model.supports_prefill_graphs()


class PrefillGraphs:
    def __init__(self, model: CausalLM, kv_cache: KVCache, table_width: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.scratch_block = kv_cache.scratch_block
        self.buckets = tuple(b for b in PREFILL_BUCKETS if b <= table_width * BLOCK_SIZE)
        longest = self.buckets[-1] if self.buckets else 0
        device = next(model.parameters()).device
        self.positions = torch.arange(longest, dtype=torch.long, device=device).view(1, longest)
        self.tokens = torch.zeros(1, longest, dtype=torch.long, device=device)
        self.table = torch.full((1, table_width), self.scratch_block, dtype=torch.long, device=device)
        self.row = torch.zeros(1, dtype=torch.long, device=device)
        # pinned host copies, two used in turn so a queued copy never reads a refilled buffer
        self.host = [
            (
                torch.zeros(longest, dtype=torch.long).pin_memory(),
                torch.full((table_width,), self.scratch_block, dtype=torch.long).pin_memory(),
                torch.zeros(1, dtype=torch.long).pin_memory(),
            )
            for _ in range(2)
        ]
        self.replays = 0
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def handles(self, plan: StepPlan) -> bool:
        """One whole prompt of 2 to the largest bucket's tokens, its next token chosen."""
        if len(plan.chunks) != 1:
            return False
        chunk = plan.chunks[0]
        fits = prefill_bucket(len(chunk.token_ids), self.buckets) is not None
        return chunk.start == 0 and chunk.sample and len(chunk.token_ids) > 1 and fits

    def _forward(self, bucket: int) -> torch.Tensor:
        positions = self.positions[:, :bucket]
        batch = self.model.attention_batch(positions, self.table, kv_length=bucket, prompt_from_start=True)
        return self.model(self.tokens[:, :bucket], batch, self.kv_cache, self.row)

    def _capture(self, bucket: int) -> None:
        self.table.fill_(self.scratch_block)  # warm-up writes go to the scratch block
        self.row.zero_()
        self.graphs[bucket] = capture(lambda: self._forward(bucket), self.pool)

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor:
        """The logits [1, vocab] of the prompt's last token, its keys and values cached."""
        chunk = plan.chunks[0]
        length = len(chunk.token_ids)
        bucket = prefill_bucket(length, self.buckets)
        assert bucket is not None
        if bucket not in self.graphs:
            self._capture(bucket)
        tokens, table, row = self.host[self.replays % 2]
        self.replays += 1
        tokens[:length] = torch.tensor(chunk.token_ids)
        tokens[length:bucket] = 0
        table.fill_(self.scratch_block)
        table[: len(chunk.blocks)] = torch.tensor(chunk.blocks)
        row[0] = length - 1
        self.tokens[0, :bucket].copy_(tokens[:bucket], non_blocking=True)
        self.table[0].copy_(table, non_blocking=True)
        self.row.copy_(row, non_blocking=True)
        graph, output = self.graphs[bucket]
        graph.replay()
        return output
