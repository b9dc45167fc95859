"""Pipeline-parallel execution: rank 0 schedules and runs the first stage, every stage passes its
hidden states to the next, and the last stage samples and sends the chosen tokens back to rank 0.

Each step is one message around the ring of stage leaders: stage 0 → 1 → … → N-1 carries the
step plan (plus sequences that start or end, which the last stage's samplers need) and the
hidden states; the last stage's leader sends the chosen tokens to rank 0. A stage of several
ranks is a tensor-parallel group: its leader shares each step with the group (`stage_group`).

Micro-batches: rank 0 keeps up to `micro_batches` steps in flight (default: one per stage), each
of different sequences (the scheduler splits the running ones into groups), so that while a
later stage works on one group, stage 0 already computes the next. Every stage takes the steps
in the order rank 0 sent them and the last stage answers in that order, so the k-th answer rank
0 collects is its k-th oldest step's. The last stage answers without waiting for rank 0 to read
(`Wire.start_send`): rank 0 may be sending it the next step at that moment.
"""

from __future__ import annotations

from collections import deque

import torch

from tandem.engine.executor import SamplerStates
from tandem.engine.grammar import Grammars
from tandem.engine.interface import StageEngine
from tandem.errors import InvalidRequestError
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import StepPlan, TokenChoice
from tandem.protocol.codec import ProtocolError
from tandem.protocol.runner import InstanceLayout
from tandem.protocol.stages import Choices, KeepAlive, SequenceStart, Step, Stop
from tandem.runner.stage_group import StageChannel
from tandem.runner.wire import Sending, Wire


class PipelineExecutor:
    """Rank 0's executor: runs the first stage here (with its group) and the rest through the ring."""

    def __init__(
        self,
        runner: StageEngine,
        wire: Wire,
        layout: InstanceLayout,
        channel: StageChannel | None = None,
        grammars: Grammars | None = None,
        micro_batches: int | None = None,
    ) -> None:
        if layout.num_stages < 2:
            raise ValueError("a pipeline needs at least two stages; use a local executor for one")
        if micro_batches is not None and micro_batches < 1:
            raise ValueError(f"micro_batches must be 1 or more, got {micro_batches}")
        # Steps kept in flight (the engine's `PipelinedExecutor`); 1: one step at a time.
        self.micro_batches = micro_batches or layout.num_stages
        self.in_flight = 0
        self.runner = runner
        self.wire = wire
        self.channel = channel or StageChannel(None, 0, 0)
        self.next_leader = layout.leader(1)
        self.last_leader = layout.leader(layout.num_stages - 1)
        self._starts: list[SequenceStart] = []
        self._ends: list[int] = []
        self.grammars = grammars  # to refuse a constraint here that the last stage could not compile

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        if params.constraint is not None:
            if self.grammars is None:
                raise InvalidRequestError("this instance cannot constrain its output to a grammar")
            self.grammars.matcher(params.constraint)
        self._starts.append(SequenceStart(seq_id, tuple(prompt_ids), params))

    def end_sequence(self, seq_id: int) -> None:
        self._ends.append(seq_id)

    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        self.submit(plan)
        return self.collect()

    @torch.inference_mode()
    def submit(self, plan: StepPlan) -> None:
        """Run `plan` on the first stage and pass it on; its tokens come with a later `collect`."""
        step = Step(plan, tuple(self._starts), tuple(self._ends))
        self._starts, self._ends = [], []
        self.channel.share(step, None)
        hidden = self.runner.forward(plan)
        self.wire.send(step, hidden, dst=self.next_leader)
        self.in_flight += 1

    def collect(self) -> list[TokenChoice]:
        """The chosen tokens of the oldest step submitted and not yet collected."""
        if not self.in_flight:
            raise RuntimeError("no step is in flight")
        reply, _ = self.wire.recv(src=self.last_leader)
        self.in_flight -= 1
        if not isinstance(reply, Choices):
            raise ProtocolError(f"the last stage answered a step with a {type(reply).__name__} message")
        return list(reply.choices)

    def keep_alive(self) -> None:
        self.channel.share(KeepAlive(), None)
        self.wire.send(KeepAlive(), None, dst=self.next_leader)

    def shutdown(self) -> None:
        while self.in_flight:  # the last stage's answers, so that none is left unread
            self.collect()
        self.channel.share(Stop(), None)
        self.wire.send(Stop(), None, dst=self.next_leader)


@torch.inference_mode()
def serve_stage(
    runner: StageEngine,
    wire: Wire,
    layout: InstanceLayout,
    stage: int,
    channel: StageChannel | None = None,
    grammars: Grammars | None = None,
) -> None:
    """The loop of the leader of every stage but the first: receive from the previous stage,
    share with its group (`channel`; None for a stage of one rank), compute, pass on (or, on the
    last stage, sample and answer rank 0)."""
    channel = channel or StageChannel(None, layout.leader(stage), layout.leader(stage))
    is_last = stage == layout.num_stages - 1
    previous = layout.leader(stage - 1)
    following = None if is_last else layout.leader(stage + 1)
    samplers = SamplerStates(runner.config.vocab_size, runner.wire_device, grammars) if is_last else None
    answers: deque[Sending] = deque()  # the last stage's answers rank 0 has yet to take
    while True:
        header, hidden = wire.recv(src=previous)
        if not isinstance(header, Step | KeepAlive | Stop):
            raise ProtocolError(
                f"stage {stage} received a {type(header).__name__} message from stage {stage - 1}"
            )
        channel.share(header, hidden)
        if not isinstance(header, Step):
            if following is not None:
                wire.send(header, None, dst=following)
            if isinstance(header, Stop):
                return
            continue
        output = runner.forward(header.plan, hidden)
        if samplers is None:
            assert following is not None
            wire.send(header, output, dst=following)
            continue
        for start in header.starts:
            samplers.start(start.seq_id, list(start.prompt_ids), start.params)
        choices = samplers.sample(header.plan, output) if header.plan.sampled else []
        for seq_id in header.ends:
            samplers.end(seq_id)
        while answers and answers[0].done():
            answers.popleft()
        answers.append(wire.start_send(Choices(tuple(choices)), None, dst=0))
