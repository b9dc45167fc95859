"""A pipeline stage run by a tensor-parallel group of ranks.

The stage's leader (its first rank) is the only one that talks to other stages. Each step it
broadcasts the step plan, and on later stages the hidden states it received, to the rest of its
group; then every rank of the group runs the same forward pass, whose all-reduces pair up inside
the model. The other ranks only follow (`follow_leader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tandem.engine.executor import LocalExecutor, PendingTokens, tokens_for
from tandem.engine.model_runner import ModelRunner
from tandem.engine.sampling import TokenChoice
from tandem.model.step import StepPlan
from tandem.runner.messages import plan_from_wire, plan_to_wire
from tandem.runner.spec import RunnerSpec
from tandem.runner.wire import Wire

STOP = {"op": "stop"}
KEEP_ALIVE = {"op": "keep-alive"}  # runs nothing; resets the followers' wait for the next step


@dataclass(frozen=True)
class StageGroups:
    """This rank's groups within its stage: `data` (the stage's backend) carries the model's
    collectives and the hidden states; `control` (gloo, on the CPU) carries step headers."""

    data: Any
    control: Any


def create_stage_groups(spec: RunnerSpec) -> StageGroups | None:
    """Create the groups of every tensor-parallel stage and return this rank's (None when its
    stage has one rank). Every rank creates every group, in the same order: torch requires it."""
    mine = None
    layout = spec.layout
    for stage, backend in enumerate(spec.group_backends):
        ranks = list(layout.ranks(stage))
        if len(ranks) > 1:
            groups = StageGroups(
                dist.new_group(ranks, backend=backend), dist.new_group(ranks, backend="gloo")
            )
            if spec.rank in ranks:
                mine = groups
    return mine


class StageChannel:
    """The leader's broadcasts to the other ranks of its stage; a no-op for a stage of one."""

    def __init__(self, wire: Wire | None, leader: int, rank: int) -> None:
        self.wire = wire
        self.leader = leader
        self.rank = rank

    @classmethod
    def for_spec(cls, spec: RunnerSpec, groups: StageGroups | None, device: torch.device) -> StageChannel:
        if groups is None:
            return cls(None, spec.rank, spec.rank)
        backend = spec.group_backends[spec.stage_index]
        tensor_device = device if backend == "nccl" else torch.device("cpu")
        wire = Wire(torch.device("cpu"), groups.control, tensor_device, groups.data)
        return cls(wire, spec.layout.leader(spec.stage_index), spec.rank)

    def share(self, header: dict[str, Any], hidden: torch.Tensor | None) -> None:
        """Leader: send the step (only what followers need: the plan) or the stop to the group."""
        if self.wire is not None:
            followers_header = (
                {key: header[key] for key in ("op", "plan", "keep", "feed") if key in header}
                if "plan" in header
                else header
            )
            self.wire.broadcast(followers_header, hidden, src=self.leader)

    def receive(self) -> tuple[dict[str, Any], torch.Tensor | None]:
        assert self.wire is not None, "a stage of one rank has no leader to follow"
        return self.wire.receive_broadcast(src=self.leader)


class TensorParallelExecutor(LocalExecutor):
    """Rank 0 of an instance of one stage split over a tensor-parallel group: it runs the whole
    model with its group and samples here, like a local executor."""

    def __init__(self, runner: ModelRunner, channel: StageChannel) -> None:
        super().__init__(runner)
        self.channel = channel

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        self.channel.share({"op": "step", "plan": plan_to_wire(plan)}, None)
        return super().execute(plan)

    @torch.inference_mode()
    def launch(self, plan: StepPlan, after: PendingTokens | None = None) -> PendingTokens:
        """Running ahead: every rank has the same gathered logits, so each follower keeps its own
        greedy tokens of a launched step and feeds them to the next, as the leader does."""
        self.channel.share(
            {"op": "step", "plan": plan_to_wire(plan), "keep": True, "feed": after is not None}, None
        )
        return super().launch(plan, after)

    def keep_alive(self) -> None:
        self.channel.share(KEEP_ALIVE, None)

    def shutdown(self) -> None:
        self.channel.share(STOP, None)


@torch.inference_mode()
def follow_leader(runner: ModelRunner, channel: StageChannel) -> None:
    """The loop of a rank that is not its stage's leader: run every step the leader shares.
    A step the leader launched to run ahead is marked `keep` (keep its greedy tokens), the one
    after it `feed` (take its token ids from them)."""
    kept: tuple[StepPlan, torch.Tensor] | None = None
    while True:
        header, hidden = channel.receive()
        if header["op"] == "stop":
            return
        if header["op"] == KEEP_ALIVE["op"]:
            continue
        plan = plan_from_wire(header["plan"])
        feed = None
        if header.get("feed"):
            assert kept is not None, "the leader fed a step from tokens this rank did not keep"
            feed = tokens_for(plan, *kept)
        output = runner.forward(plan, hidden, feed=feed)
        kept = None
        if header.get("keep"):
            kept = (plan, output.argmax(-1))
