"""Pipeline-parallel execution: rank 0 schedules and runs the first stage, every rank passes its
hidden states to the next, and the last rank samples and sends the chosen tokens back to rank 0.

Each step is one message around the ring: rank 0 → 1 → … → N-1 carries the step plan (plus
sequences that start or end, which the last rank's samplers need) and the hidden states;
N-1 → 0 carries the chosen tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from tandem.engine.executor import SamplerStates
from tandem.engine.model_runner import ModelRunner
from tandem.engine.sampling import TokenChoice
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import SequenceChunk, StepPlan
from tandem.runner.wire import Wire


def plan_to_wire(plan: StepPlan) -> list[list[Any]]:
    return [[c.seq_id, c.slot, c.start, list(c.token_ids), c.sample] for c in plan.chunks]


def plan_from_wire(rows: list[list[Any]]) -> StepPlan:
    return StepPlan(
        tuple(
            SequenceChunk(seq_id, slot, start, tuple(ids), bool(sample))
            for seq_id, slot, start, ids, sample in rows
        )
    )


def choices_to_wire(choices: list[TokenChoice]) -> list[list[Any]]:
    return [[c.token_id, c.logprob, c.top_logprobs] for c in choices]


def choices_from_wire(rows: list[list[Any]]) -> list[TokenChoice]:
    return [
        TokenChoice(token, logprob, [tuple(pair) for pair in top] if top is not None else None)
        for token, logprob, top in rows
    ]


class PipelineExecutor:
    """Rank 0's executor: runs the first stage here and the rest through the ring."""

    def __init__(self, runner: ModelRunner, wire: Wire, world_size: int) -> None:
        if world_size < 2:
            raise ValueError("a pipeline needs at least two ranks; use LocalExecutor for one")
        self.runner = runner
        self.wire = wire
        self.last_rank = world_size - 1
        self._starts: list[dict[str, Any]] = []
        self._ends: list[int] = []

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self._starts.append({"seq_id": seq_id, "prompt_ids": prompt_ids, "params": params.to_dict()})

    def end_sequence(self, seq_id: int) -> None:
        self._ends.append(seq_id)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        hidden = self.runner.forward(plan)
        header = {"op": "step", "plan": plan_to_wire(plan), "start": self._starts, "end": self._ends}
        self._starts, self._ends = [], []
        self.wire.send(header, hidden, dst=1)
        reply, _ = self.wire.recv(src=self.last_rank)
        return choices_from_wire(reply["choices"])

    def shutdown(self) -> None:
        self.wire.send({"op": "stop"}, None, dst=1)


@torch.inference_mode()
def serve_stage(runner: ModelRunner, wire: Wire, rank: int, world_size: int) -> None:
    """The loop of every rank but 0: receive, compute, pass on (or sample and answer rank 0)."""
    is_last = rank == world_size - 1
    samplers = SamplerStates(runner.model.config.vocab_size, runner.device) if is_last else None
    while True:
        header, hidden = wire.recv(src=rank - 1)
        if header["op"] == "stop":
            if not is_last:
                wire.send(header, None, dst=rank + 1)
            return
        plan = plan_from_wire(header["plan"])
        output = runner.forward(plan, hidden)
        if samplers is None:
            wire.send(header, output, dst=rank + 1)
            continue
        for start in header["start"]:
            samplers.start(start["seq_id"], start["prompt_ids"], SamplingParams.from_dict(start["params"]))
        choices = samplers.sample(plan, output) if plan.sampled else []
        for seq_id in header["end"]:
            samplers.end(seq_id)
        wire.send({"choices": choices_to_wire(choices)}, None, dst=0)
