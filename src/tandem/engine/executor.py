"""Executors run step plans and return the chosen tokens.

The engine drives an executor without knowing where the model lives: `LocalExecutor` holds the
whole model in this process; the cluster's pipeline executor sends each plan through the stages
of an instance and receives the tokens that its last stage chose.

An executor that can also `launch` a step and `collect` its tokens later lets the engine run one
decode step ahead (see `engine.py`): the next step is queued on the device, fed with the tokens
the current one is still choosing there, before the host waits for them.

An executor that can `submit` steps and `collect` their tokens later, oldest first, keeps
several micro-batches in flight (`PipelinedExecutor`: a pipeline, whose stages then each work
on a different group of sequences; see `engine.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from tandem import settings
from tandem.engine.grammar import Grammars
from tandem.engine.interface import StageEngine
from tandem.engine.sampling import SamplerState, plain_greedy, sample_batch
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import StepPlan, TokenChoice


class Executor(Protocol):
    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None: ...

    def end_sequence(self, seq_id: int) -> None: ...

    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        """Run one step; one choice per sampled chunk, in plan order."""
        ...


@runtime_checkable
class RunAheadExecutor(Executor, Protocol):
    def can_run_ahead(self, plan: StepPlan) -> bool:
        """Whether `plan` may be launched before the tokens of the step it follows are known."""
        ...

    def launch(self, plan: StepPlan, after: PendingTokens | None = None) -> PendingTokens:
        """Queue `plan` on the device; with `after`, its token ids are `after`'s chosen tokens
        (by sequence), still on the device, and the plan's own token ids are ignored."""
        ...

    def collect(self, pending: PendingTokens) -> list[TokenChoice]:
        """Wait for a launched step's tokens; one choice per chunk, in plan order."""
        ...


@runtime_checkable
class PipelinedExecutor(Executor, Protocol):
    micro_batches: int  # steps kept in flight at most; 1: one at a time

    def submit(self, plan: StepPlan) -> None:
        """Start `plan`; its tokens come from a later `collect`."""
        ...

    def collect(self) -> list[TokenChoice]:
        """Wait for the oldest submitted step's tokens; one choice per sampled chunk, in plan order."""
        ...


@dataclass
class PendingTokens:
    """Greedy tokens of a launched step: on the device at once, on the host once `ready` fires."""

    plan: StepPlan
    on_device: torch.Tensor  # [chunks] token ids
    on_host: torch.Tensor  # the same, copied without blocking the host
    ready: torch.cuda.Event | None  # None on CPU, where the copy is done when launch returns

    def tokens(self) -> list[int]:
        if self.ready is not None:
            self.ready.synchronize()  # this step only: later queued work runs on
        return self.on_host.tolist()


def tokens_for(plan: StepPlan, previous: StepPlan, tokens: torch.Tensor) -> torch.Tensor:
    """The token ids of `plan`'s chunks, taken by sequence from the `tokens` (on the device, a
    row per chunk) that the `previous` step chose, without waiting for the device."""
    rows = {chunk.seq_id: row for row, chunk in enumerate(previous.chunks)}
    wanted = [rows[chunk.seq_id] for chunk in plan.chunks]
    if wanted == list(range(len(wanted))):
        return tokens[: len(wanted)]
    index = torch.tensor(wanted, dtype=torch.long)  # a sequence left: gather
    if tokens.is_cuda:
        index = index.pin_memory().to(tokens.device, non_blocking=True)
    return tokens[index]


class SamplerStates:
    """Per-sequence sampler state, kept wherever the logits are (the last stage); `grammars`
    compiles output constraints (None: requests with one are refused)."""

    def __init__(self, vocab_size: int, device: torch.device, grammars: Grammars | None = None) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.grammars = grammars
        self.states: dict[int, SamplerState] = {}

    def start(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.states[seq_id] = SamplerState.create(
            params, prompt_ids, self.vocab_size, self.device, self.grammars
        )

    def end(self, seq_id: int) -> None:
        self.states.pop(seq_id, None)

    def sample(self, plan: StepPlan, logits: torch.Tensor) -> list[TokenChoice]:
        return sample_batch(logits, [self.states[c.seq_id] for c in plan.sampled])


class LocalExecutor:
    """The whole model in this process."""

    def __init__(
        self, runner: StageEngine, run_ahead: bool | None = None, grammars: Grammars | None = None
    ) -> None:
        self.runner = runner
        self.samplers = SamplerStates(runner.config.vocab_size, runner.wire_device, grammars)
        # None: where decode graphs are; True/False: always/never (tests run it on the CPU)
        self.run_ahead = settings.engine_options().run_ahead if run_ahead is None else run_ahead

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.samplers.start(seq_id, prompt_ids, params)

    def end_sequence(self, seq_id: int) -> None:
        self.samplers.end(seq_id)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        logits = self.runner.forward(plan)
        return self.samplers.sample(plan, logits) if plan.sampled else []

    def can_run_ahead(self, plan: StepPlan) -> bool:
        """Decode steps replayed from CUDA graphs, for sequences that pick greedily with nothing
        to record but the token (no penalties, no log-probabilities). Elsewhere nothing would be
        gained: without graphs the host launches every kernel itself."""
        graphs = bool(getattr(self.runner, "decode_graphs", False))
        wanted = graphs if self.run_ahead is None else self.run_ahead
        return (
            wanted
            and plan.tokens_per_sequence == 1
            and all(chunk.sample for chunk in plan.chunks)
            and all(plain_greedy(self.samplers.states[chunk.seq_id]) for chunk in plan.chunks)
        )

    @torch.inference_mode()
    def launch(self, plan: StepPlan, after: PendingTokens | None = None) -> PendingTokens:
        feed = None if after is None else tokens_for(plan, after.plan, after.on_device)
        tokens = self.runner.forward(plan, feed=feed).argmax(-1)
        if not tokens.is_cuda:
            return PendingTokens(plan, tokens, tokens, None)
        on_host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        on_host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return PendingTokens(plan, tokens, on_host, ready)

    def collect(self, pending: PendingTokens) -> list[TokenChoice]:
        choices = []
        for chunk, token in zip(pending.plan.chunks, pending.tokens(), strict=True):
            state = self.samplers.states.get(chunk.seq_id)
            if state is not None:  # None: the sequence ended while this step ran
                state.record(token)
            choices.append(TokenChoice(token))
        return choices
