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
from tandem.engine.grammar import Grammars
from tandem.engine.interface import StageEngine
from tandem.model.step import StepPlan, TokenChoice
from tandem.protocol.codec import ProtocolError
from tandem.protocol.runner import RunnerSpec
from tandem.protocol.stages import KeepAlive, StageHeader, StageMessage, Step, Stop
from tandem.runner.wire import Wire


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

    def share(self, header: StageHeader, hidden: torch.Tensor | None) -> None:
        """Leader: send the step (only what followers need: the plan) or the stop to the group."""
        if self.wire is not None:
            shared = header.for_followers() if isinstance(header, Step) else header
            self.wire.broadcast(shared, hidden, src=self.leader)

    def receive(self) -> tuple[StageMessage, torch.Tensor | None]:
        assert self.wire is not None, "a stage of one rank has no leader to follow"
        return self.wire.receive_broadcast(src=self.leader)


class TensorParallelExecutor(LocalExecutor):
    """Rank 0 of an instance of one stage split over a tensor-parallel group: it runs the whole
    model with its group and samples here, like a local executor."""

    def __init__(self, runner: StageEngine, channel: StageChannel, grammars: Grammars | None = None) -> None:
        super().__init__(runner, grammars=grammars)
        self.channel = channel

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        self.channel.share(Step(plan), None)
        return super().execute(plan)

    @torch.inference_mode()
    def launch(self, plan: StepPlan, after: PendingTokens | None = None) -> PendingTokens:
        """Running ahead: every rank has the same gathered logits, so each follower keeps its own
        greedy tokens of a launched step and feeds them to the next, as the leader does."""
        self.channel.share(Step(plan, keep=True, feed=after is not None), None)
        return super().launch(plan, after)

    def keep_alive(self) -> None:
        self.channel.share(KeepAlive(), None)

    def shutdown(self) -> None:
        self.channel.share(Stop(), None)


@torch.inference_mode()
def follow_leader(runner: StageEngine, channel: StageChannel) -> None:
    """The loop of a rank that is not its stage's leader: run every step the leader shares.
    A step the leader launched to run ahead is marked `keep` (keep its greedy tokens), the one
    after it `feed` (take its token ids from them)."""
    kept: tuple[StepPlan, torch.Tensor] | None = None
    while True:
        header, hidden = channel.receive()
        if isinstance(header, Stop):
            return
        if isinstance(header, KeepAlive):
            continue
        if not isinstance(header, Step):
            raise ProtocolError(f"a follower received a {type(header).__name__} message from its leader")
        feed = None
        if header.feed:
            assert kept is not None, "the leader fed a step from tokens this rank did not keep"
            feed = tokens_for(header.plan, *kept)
        output = runner.forward(header.plan, hidden, feed=feed)
        kept = None
        if header.keep:
            kept = (header.plan, output.argmax(-1))
