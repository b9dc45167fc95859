"""Pipeline-parallel execution: rank 0 schedules and runs the first stage, every stage passes its
hidden states to the next, and the last stage samples and sends the chosen tokens back to rank 0.

Each step is one message around the ring of stage leaders: stage 0 → 1 → … → N-1 carries the
step plan (plus sequences that start or end, which the last stage's samplers need) and the
hidden states; the last stage's leader sends the chosen tokens to rank 0. A stage of several
ranks is a tensor-parallel group: its leader shares each step with the group (`stage_group`).
"""

from __future__ import annotations

from typing import Any

import torch

from tandem.engine.executor import SamplerStates
from tandem.engine.model_runner import ModelRunner
from tandem.engine.sampling import TokenChoice
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import StepPlan
from tandem.runner.messages import choices_from_wire, choices_to_wire, plan_from_wire, plan_to_wire
from tandem.runner.spec import InstanceLayout
from tandem.runner.stage_group import KEEP_ALIVE, STOP, StageChannel
from tandem.runner.wire import Wire


class PipelineExecutor:
    """Rank 0's executor: runs the first stage here (with its group) and the rest through the ring."""

    def __init__(
        self, runner: ModelRunner, wire: Wire, layout: InstanceLayout, channel: StageChannel | None = None
    ) -> None:
        if layout.num_stages < 2:
            raise ValueError("a pipeline needs at least two stages; use a local executor for one")
        self.runner = runner
        self.wire = wire
        self.channel = channel or StageChannel(None, 0, 0)
        self.next_leader = layout.leader(1)
        self.last_leader = layout.leader(layout.num_stages - 1)
        self._starts: list[dict[str, Any]] = []
        self._ends: list[int] = []

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self._starts.append({"seq_id": seq_id, "prompt_ids": prompt_ids, "params": params.to_dict()})

    def end_sequence(self, seq_id: int) -> None:
        self._ends.append(seq_id)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        header = {"op": "step", "plan": plan_to_wire(plan), "start": self._starts, "end": self._ends}
        self._starts, self._ends = [], []
        self.channel.share(header, None)
        hidden = self.runner.forward(plan)
        self.wire.send(header, hidden, dst=self.next_leader)
        reply, _ = self.wire.recv(src=self.last_leader)
        return choices_from_wire(reply["choices"])

    def keep_alive(self) -> None:
        self.channel.share(KEEP_ALIVE, None)
        self.wire.send(KEEP_ALIVE, None, dst=self.next_leader)

    def shutdown(self) -> None:
        self.channel.share(STOP, None)
        self.wire.send(STOP, None, dst=self.next_leader)


@torch.inference_mode()
def serve_stage(
    runner: ModelRunner,
    wire: Wire,
    layout: InstanceLayout,
    stage: int,
    channel: StageChannel | None = None,
) -> None:
    """The loop of the leader of every stage but the first: receive from the previous stage,
    share with its group (`channel`; None for a stage of one rank), compute, pass on (or, on the
    last stage, sample and answer rank 0)."""
    channel = channel or StageChannel(None, layout.leader(stage), layout.leader(stage))
    is_last = stage == layout.num_stages - 1
    previous = layout.leader(stage - 1)
    following = None if is_last else layout.leader(stage + 1)
    samplers = SamplerStates(runner.config.vocab_size, runner.wire_device) if is_last else None
    while True:
        header, hidden = wire.recv(src=previous)
        channel.share(header, hidden)
        if header["op"] in (STOP["op"], KEEP_ALIVE["op"]):
            if following is not None:
                wire.send(header, None, dst=following)
            if header["op"] == STOP["op"]:
                return
            continue
        plan = plan_from_wire(header["plan"])
        output = runner.forward(plan, hidden)
        if samplers is None:
            assert following is not None
            wire.send(header, output, dst=following)
            continue
        for start in header["start"]:
            samplers.start(start["seq_id"], start["prompt_ids"], SamplingParams.from_dict(start["params"]))
        choices = samplers.sample(plan, output) if plan.sampled else []
        for seq_id in header["end"]:
            samplers.end(seq_id)
        wire.send({"choices": choices_to_wire(choices)}, None, dst=0)
