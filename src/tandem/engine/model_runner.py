"""The PyTorch stage engine: runs one stage of a model for a step plan, builds the input tensors,
owns the KV cache, and on CUDA replays captured graphs for decode steps and short prompts
(`engine/interface.py` says what a runner asks of it)."""

from __future__ import annotations

import torch

from tandem import settings
from tandem.engine.blocks import blocks_for, pool_blocks
from tandem.engine.kv_cache import KVCache
from tandem.engine.models.llama import CausalLM
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec
from tandem.model.step import SequenceChunk, StepPlan
from tandem.protocol.runner import StageReport

WARM_UP_PROMPT_TOKENS = 16


class ModelRunner:
    def __init__(
        self, model: CausalLM, num_slots: int, max_context: int, use_graphs: bool | None = None
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.hidden_dtype = model.activation_dtype()  # what received hidden states are cast to
        self.max_context = max_context
        # The same pool as the engine's scheduler (`LLMEngine`), which hands out its blocks.
        self.kv_cache = KVCache.for_model(model, pool_blocks(num_slots, max_context))
        if use_graphs is None:
            # graphs need the device-side lengths of the decode kernels
            use_graphs = self.device.type == "cuda" and model.supports_decode_graphs()
        self.graphs = None
        if use_graphs:
            from tandem.engine.cuda.graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.kv_cache, blocks_for(max_context))
        self.prefill_graphs = None
        if use_graphs and settings.engine_options().prefill_graphs and isinstance(self.kv_cache, KVCache):
            from tandem.engine.cuda.prefill_graphs import PrefillGraphs, prefill_graphs_fit

            if prefill_graphs_fit(model):
                self.prefill_graphs = PrefillGraphs(model, self.kv_cache, blocks_for(max_context))

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run a short prompt and one decode step before the first request, so that kernels are
        compiled and tuned and the batch-1 decode graph captured now: on GPUs that takes up to a
        minute, and the stages of a pipeline would otherwise each take it in turn on the first
        request. Writes only into the scratch block, which no sequence reads. Every rank of a
        tensor-parallel group calls it together: it runs the group's collectives."""
        length = min(WARM_UP_PROMPT_TOKENS, self.max_context - 1)
        scratch = (self.kv_cache.scratch_block,) * blocks_for(length + 1)
        prompt = StepPlan((SequenceChunk(-1, scratch, 0, (0,) * length, sample=True),))
        decode = StepPlan((SequenceChunk(-1, scratch, length, (0,), sample=True),))
        for plan in (prompt, decode):
            hidden = None
            if not self.is_first_stage:
                shape = (1, plan.tokens_per_sequence, self.model.config.hidden_size)
                hidden = torch.zeros(shape, dtype=self.model.activation_dtype(), device=self.device)
            self.forward(plan, hidden)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def stage(self) -> StageSpec:
        return self.model.stage

    @property
    def wire_device(self) -> torch.device:
        return self.device

    @property
    def decode_graphs(self) -> bool:
        """Whether decode steps replay captured CUDA graphs (the engine then runs ahead)."""
        return self.graphs is not None

    def release(self, blocks: tuple[int, ...]) -> None:
        """Nothing to do: a block's next sequence overwrites it before reading."""

    def report(self, all_reduce: str | None = None, all_reduce_seconds: float | None = None) -> StageReport:
        from tandem.engine.loader import parameter_bytes

        return StageReport(
            engine="torch",
            device=str(self.device),
            parameter_bytes=parameter_bytes(self.model),
            kv_cache_bytes=self.kv_cache.bytes(),
            all_reduce=all_reduce,
            all_reduce_seconds=all_reduce_seconds,
        )

    @property
    def is_first_stage(self) -> bool:
        return self.model.stage.is_first

    @property
    def is_last_stage(self) -> bool:
        return self.model.stage.is_last

    def positions(self, plan: StepPlan) -> torch.Tensor:
        starts = torch.tensor([c.start for c in plan.chunks], dtype=torch.long)
        offsets = torch.arange(plan.tokens_per_sequence, dtype=torch.long)
        return (starts[:, None] + offsets[None, :]).to(self.device)  # [B, T]

    def block_table(self, plan: StepPlan) -> torch.Tensor:
        """[B, W]: each chunk's blocks, then the scratch block, wide enough for every position
        the step writes (padding tokens past a chunk's blocks write to the scratch block)."""
        width = max(blocks_for(plan.tokens_per_sequence + max(c.start for c in plan.chunks)), 1)
        width = max(width, *(len(c.blocks) for c in plan.chunks))
        scratch = self.kv_cache.scratch_block
        rows = [list(c.blocks) + [scratch] * (width - len(c.blocks)) for c in plan.chunks]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def token_ids(self, plan: StepPlan) -> torch.Tensor:
        """[B, T]; a shorter chunk is padded on the right (its padding's keys and values land past
        the prompt, in the scratch block or where decode overwrites them before reading)."""
        T = plan.tokens_per_sequence
        rows = [list(c.token_ids) + [0] * (T - len(c.token_ids)) for c in plan.chunks]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def logit_rows(self, plan: StepPlan) -> torch.Tensor:
        """Flattened row of each sampled chunk's last token."""
        T = plan.tokens_per_sequence
        rows = [
            index * T + len(chunk.token_ids) - 1 for index, chunk in enumerate(plan.chunks) if chunk.sample
        ]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def forward(
        self, plan: StepPlan, hidden: torch.Tensor | None = None, feed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """First stage: reads token ids from the plan, or for a decode step from `feed` (one id
        a chunk, on the device) where given. Later stages: take the previous stage's hidden
        states. Returns hidden states [B, T, hidden], or on the last stage logits
        [sampled chunks, vocab]."""
        end = max(c.end for c in plan.chunks)
        if end > self.max_context:
            raise ValueError(f"step reaches position {end} but the cache holds {self.max_context}")
        if not self.is_first_stage and hidden is None:
            raise ValueError("a stage after the first needs the previous stage's hidden states")
        if self.graphs is not None and self.graphs.handles(plan) and all(c.sample for c in plan.chunks):
            return self.graphs.run(plan, hidden, feed)
        if self.prefill_graphs is not None and self.prefill_graphs.handles(plan):
            return self.prefill_graphs.run(plan)
        batch = self.model.attention_batch(
            self.positions(plan),
            self.block_table(plan),
            kv_length=end,
            prompt_from_start=all(c.start == 0 for c in plan.chunks),
        )
        if not self.is_first_stage:
            assert hidden is not None
            inputs = hidden.to(self.hidden_dtype)  # from an engine of another dtype (an MLX stage)
        elif feed is not None:
            inputs = feed.view(len(plan.chunks), 1)
        else:
            inputs = self.token_ids(plan)
        rows = self.logit_rows(plan) if self.is_last_stage else None
        return self.model(inputs, batch, self.kv_cache, rows)
