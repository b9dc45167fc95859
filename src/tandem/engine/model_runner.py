"""Runs one stage of a model for a step plan: builds the input tensors, owns the KV cache."""

from __future__ import annotations

import torch

from tandem.engine.kv_cache import KVCache
from tandem.engine.models.llama import CausalLM
from tandem.engine.sequence import StepPlan


class ModelRunner:
    def __init__(self, model: CausalLM, num_slots: int, max_context: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.max_context = max_context
        self.kv_cache = KVCache.for_model(model, num_slots, max_context)

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

    def token_ids(self, plan: StepPlan) -> torch.Tensor:
        return torch.tensor([c.token_ids for c in plan.chunks], dtype=torch.long, device=self.device)

    def logit_rows(self, plan: StepPlan) -> torch.Tensor:
        """Flattened row of each sampled chunk's last token."""
        T = plan.tokens_per_sequence
        rows = [index * T + T - 1 for index, chunk in enumerate(plan.chunks) if chunk.sample]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def forward(self, plan: StepPlan, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """First stage: reads token ids from the plan. Later stages: take the previous stage's
        hidden states. Returns hidden states [B, T, hidden], or on the last stage logits
        [sampled chunks, vocab]."""
        positions = self.positions(plan)
        end = max(c.end for c in plan.chunks)
        if end > self.max_context:
            raise ValueError(f"step reaches position {end} but the cache holds {self.max_context}")
        batch = self.model.attention_batch(positions, [c.slot for c in plan.chunks], kv_length=end)
        inputs = self.token_ids(plan) if self.is_first_stage else hidden
        if inputs is None:
            raise ValueError("a stage after the first needs the previous stage's hidden states")
        rows = self.logit_rows(plan) if self.is_last_stage else None
        return self.model(inputs, batch, self.kv_cache, rows)
