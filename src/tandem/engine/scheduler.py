"""Which sequences run in the next step. Pure Python.

Prompts are computed in chunks of at most `max_prefill_tokens`: a long prompt one chunk a step,
short waiting prompts several in one step (padded to the longest, so within the same budget of
computed tokens). Every sequence past its prompt advances by one token per decode step. When both
kinds of work wait, steps alternate, so a long prompt neither stalls running streams nor waits
behind them.
"""

from __future__ import annotations

from collections import deque

from tandem.engine.sequence import Sequence
from tandem.model.step import SequenceChunk, StepPlan


def prompts_in_one_step(lengths: list[int], free_slots: int, budget: int) -> int:
    """How many of the waiting prompts (in order) one step computes whole: as many as have a
    slot while all of them, padded to the longest, fit in `budget` tokens. At least one when
    any waits and a slot is free (a prompt longer than the budget then goes in chunks)."""
    count, width = 0, 0
    for length in lengths[:free_slots]:
        width = max(width, length)
        if (count + 1) * width > budget:
            break
        count += 1
    return max(count, 1) if lengths and free_slots else 0


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int) -> None:
        if num_slots < 1 or max_prefill_tokens < 1:
            raise ValueError("the scheduler needs at least one slot and one prefill token per step")
        self.free_slots: list[int] = list(range(num_slots - 1, -1, -1))  # pop() gives slot 0 first
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.decoding: list[Sequence] = []
        self.starting: list[Sequence] = []  # whole prompts computed in the step under way
        self._last_was_prefill = False

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.starting or self.decoding)

    def _can_prefill(self) -> bool:
        return self.prefilling is not None or bool(self.waiting and self.free_slots)

    def only_decoding(self) -> bool:
        """Whether the next plan will be a decode step of the sequences decoding now: nothing to
        prefill, or no free slot for it."""
        return bool(self.decoding) and not self._can_prefill()

    def next_plan(self) -> StepPlan | None:
        can_prefill = self._can_prefill()
        prefer_decode = self.decoding and (self._last_was_prefill or not can_prefill)
        if prefer_decode:
            self._last_was_prefill = False
            return self._decode_plan()
        if can_prefill:
            self._last_was_prefill = True
            return self._prefill_plan()
        return None

    def _prefill_plan(self) -> StepPlan:
        if self.prefilling is None:
            lengths = [len(sequence.prompt_ids) for sequence in self.waiting]
            count = prompts_in_one_step(lengths, len(self.free_slots), self.max_prefill_tokens)
            if count > 1:
                return self._whole_prompts_plan(count)
            sequence = self.waiting.popleft()
            sequence.slot = self.free_slots.pop()
            self.prefilling = sequence
        sequence = self.prefilling
        start = sequence.num_computed
        end = min(len(sequence.prompt_ids), start + self.max_prefill_tokens)
        assert sequence.slot is not None
        chunk = SequenceChunk(
            seq_id=sequence.seq_id,
            slot=sequence.slot,
            start=start,
            token_ids=tuple(sequence.prompt_ids[start:end]),
            sample=end == len(sequence.prompt_ids),
        )
        return StepPlan((chunk,))

    def _whole_prompts_plan(self, count: int) -> StepPlan:
        chunks = []
        for _ in range(count):
            sequence = self.waiting.popleft()
            sequence.slot = self.free_slots.pop()
            self.starting.append(sequence)
            chunks.append(SequenceChunk(sequence.seq_id, sequence.slot, 0, tuple(sequence.prompt_ids), True))
        return StepPlan(tuple(chunks))

    def _decode_plan(self) -> StepPlan:
        chunks = []
        for sequence in self.decoding:
            assert sequence.slot is not None
            chunks.append(
                SequenceChunk(
                    seq_id=sequence.seq_id,
                    slot=sequence.slot,
                    start=sequence.num_tokens - 1,
                    token_ids=(sequence.output_ids[-1],),
                    sample=True,
                )
            )
        return StepPlan(tuple(chunks))

    def step_done(self, plan: StepPlan, sequences: dict[int, Sequence]) -> None:
        """Record that `plan` ran: its tokens are now in the cache."""
        for chunk in plan.chunks:
            sequence = sequences[chunk.seq_id]
            sequence.num_computed = chunk.end
            if sequence is self.prefilling and sequence.is_prefilled:
                self.prefilling = None
                self.decoding.append(sequence)
            elif sequence in self.starting:
                self.starting.remove(sequence)
                self.decoding.append(sequence)

    def remove(self, sequence: Sequence) -> None:
        """Take a finished or aborted sequence out and free its slot."""
        if sequence in self.waiting:
            self.waiting.remove(sequence)
        if sequence is self.prefilling:
            self.prefilling = None
        if sequence in self.starting:
            self.starting.remove(sequence)
        if sequence in self.decoding:
            self.decoding.remove(sequence)
        if sequence.slot is not None:
            self.free_slots.append(sequence.slot)
            sequence.slot = None
