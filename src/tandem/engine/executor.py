"""Executors run step plans and return the chosen tokens.

The engine drives an executor without knowing where the model lives: `LocalExecutor` holds the
whole model in this process; the cluster's pipeline executor sends each plan through the stages
of an instance and receives the tokens that its last stage chose.
"""

from __future__ import annotations

from typing import Protocol

import torch

from tandem.engine.model_runner import ModelRunner
from tandem.engine.sampling import SamplerState, TokenChoice, sample_batch
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import StepPlan


class Executor(Protocol):
    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None: ...

    def end_sequence(self, seq_id: int) -> None: ...

    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        """Run one step; one choice per sampled chunk, in plan order."""
        ...


class SamplerStates:
    """Per-sequence sampler state, kept wherever the logits are (the last stage)."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.states: dict[int, SamplerState] = {}

    def start(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.states[seq_id] = SamplerState.create(params, prompt_ids, self.vocab_size, self.device)

    def end(self, seq_id: int) -> None:
        self.states.pop(seq_id, None)

    def sample(self, plan: StepPlan, logits: torch.Tensor) -> list[TokenChoice]:
        return sample_batch(logits, [self.states[c.seq_id] for c in plan.sampled])


class LocalExecutor:
    """The whole model in this process."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.samplers = SamplerStates(runner.model.config.vocab_size, runner.device)

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.samplers.start(seq_id, prompt_ids, params)

    def end_sequence(self, seq_id: int) -> None:
        self.samplers.end(seq_id)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        logits = self.runner.forward(plan)
        return self.samplers.sample(plan, logits) if plan.sampled else []
