"""The scheduler's decisions, as pure functions of lengths, free blocks and budgets."""

from __future__ import annotations

import pytest

from tandem.engine.blocks import BlockPool
from tandem.engine.scheduler import Scheduler, step_fits
from tandem.engine.sequence import Sequence
from tandem.model.sampling_params import SamplingParams


@pytest.mark.parametrize(
    ("rows", "width", "budget", "fits"),
    [(4, 9, 40, True), (5, 9, 40, False), (1, 40, 40, True), (6, 2, 12, True), (6, 3, 12, False)],
)
def test_a_step_fits_when_its_padded_rows_stay_within_the_budget(rows, width, budget, fits):
    assert step_fits(rows, width, budget) == fits


def sequence(seq_id: int, length: int) -> Sequence:
    return Sequence(seq_id, list(range(1, length + 1)), SamplingParams(temperature=0.0))


def test_whole_prompts_then_a_long_one_in_chunks_alternating_with_decode():
    scheduler = Scheduler(BlockPool(6, block_size=8), max_prefill_tokens=8)
    sequences = {i: sequence(i, n) for i, n in enumerate((3, 4, 20))}
    for s in sequences.values():
        scheduler.add(s)
    plan = scheduler.next_plan()
    assert [(c.seq_id, c.start, len(c.token_ids)) for c in plan.chunks] == [(0, 0, 3), (1, 0, 4)]
    assert plan.padded and plan.tokens_per_sequence == 4 and plan.num_tokens == 8
    scheduler.step_done(plan, sequences)
    for i in (0, 1):
        sequences[i].output_ids.append(7)
    assert scheduler.decoding == [sequences[0], sequences[1]] and not scheduler.starting
    decode = scheduler.next_plan()  # decode and prefill alternate
    assert [(c.seq_id, c.start) for c in decode.chunks] == [(0, 3), (1, 4)]
    scheduler.step_done(decode, sequences)
    long = scheduler.next_plan()
    assert [(c.seq_id, c.start, len(c.token_ids)) for c in long.chunks] == [(2, 0, 8)]
    scheduler.remove(sequences[2])
    # its three blocks are free again (the first two prompts hold one each)
    assert scheduler.pool.num_free == 4 and scheduler.has_work()


def test_decoding_sequences_join_a_step_of_short_prompt_tails():
    """Prompts whose cached prefix leaves a short tail are admitted together, and the sequences
    already decoding advance in that same step where every row padded fits the budget."""
    scheduler = Scheduler(BlockPool(12, block_size=4), max_prefill_tokens=12)
    first = sequence(0, 9)
    sequences = {0: first}
    scheduler.add(first)
    plan = scheduler.next_plan()
    assert [(c.seq_id, c.start, len(c.token_ids)) for c in plan.chunks] == [(0, 0, 9)]
    scheduler.step_done(plan, sequences)
    first.output_ids.append(5)
    # two prompts sharing the first's 8-token prefix: 2 tokens each to compute
    for seq_id, extra in ((1, [30, 31]), (2, [40, 41])):
        sequences[seq_id] = Sequence(seq_id, list(range(1, 9)) + extra, SamplingParams(temperature=0.0))
        scheduler.add(sequences[seq_id])
    plan = scheduler.next_plan()
    assert [(c.seq_id, c.start, len(c.token_ids)) for c in plan.chunks] == [(1, 8, 2), (2, 8, 2), (0, 9, 1)]
    assert plan.tokens_per_sequence == 2 and scheduler.pool.prefix_hits == 4
    scheduler.step_done(plan, sequences)
    assert scheduler.decoding == [first, sequences[1], sequences[2]]


def started(scheduler: Scheduler, lengths: tuple[int, ...]) -> dict[int, Sequence]:
    """Sequences of these prompt lengths, computed in one step, each with one token chosen."""
    sequences = {i: sequence(i, n) for i, n in enumerate(lengths)}
    for s in sequences.values():
        scheduler.add(s)
    plan = scheduler.next_plan()
    assert plan is not None and len(plan.chunks) == len(lengths)
    scheduler.step_done(plan, sequences)
    for s in sequences.values():
        s.output_ids.append(7)
    return sequences


def seq_ids(plan) -> list[int]:
    return [chunk.seq_id for chunk in plan.chunks]


@pytest.mark.parametrize(
    ("decoding", "groups", "sizes"),
    [(4, 2, [2, 2]), (5, 2, [3, 2]), (1, 2, [1]), (7, 3, [3, 3, 1]), (4, 1, [4])],
)
def test_micro_batches_split_the_decoding_sequences_and_skip_those_in_flight(decoding, groups, sizes):
    scheduler = Scheduler(BlockPool(64, block_size=8), max_prefill_tokens=64)
    sequences = started(scheduler, (3,) * decoding)
    busy: set[int] = set()
    plans = []
    while (plan := scheduler.next_plan(busy, groups)) is not None:
        plans.append(plan)
        busy |= set(seq_ids(plan))
    assert [len(plan.chunks) for plan in plans] == sizes
    assert sorted(i for plan in plans for i in seq_ids(plan)) == list(range(decoding))  # each once
    # The oldest step's tokens come back: its group runs again, one position on, while the
    # others are still in flight.
    first = plans[0]
    scheduler.step_done(first, sequences)
    for i in seq_ids(first):
        sequences[i].output_ids.append(8)
    busy -= set(seq_ids(first))
    again = scheduler.next_plan(busy, groups)
    assert again is not None and seq_ids(again) == seq_ids(first)
    assert [c.start for c in again.chunks] == [c.start + 1 for c in first.chunks]


def test_preemption_spares_the_sequences_in_flight():
    scheduler = Scheduler(BlockPool(3, block_size=4), max_prefill_tokens=64)
    sequences = started(scheduler, (3, 3, 3))  # a block each, none free
    for s in sequences.values():  # position 3 computed: the next token needs a second block
        s.num_computed = 4
        s.output_ids.append(7)
    plan = scheduler.next_plan({2}, groups=1)
    # Sequence 0 takes the block of sequence 1, the latest admitted that is not in flight.
    assert plan is not None and seq_ids(plan) == [0]
    assert list(scheduler.waiting) == [sequences[1]] and not sequences[1].blocks
    assert sequences[2] in scheduler.decoding and len(sequences[2].blocks) == 1
    assert scheduler.next_plan({0, 2}, groups=1) is None  # sequence 1 waits for blocks


def test_a_prompt_in_chunks_gets_its_next_chunk_once_the_last_is_back():
    scheduler = Scheduler(BlockPool(8, block_size=4), max_prefill_tokens=4)
    long = sequence(0, 10)
    scheduler.add(long)
    plan = scheduler.next_plan(set(), groups=2)
    assert plan is not None and seq_ids(plan) == [0]
    assert scheduler.next_plan({0}, groups=2) is None
    scheduler.step_done(plan, {0: long})
    following = scheduler.next_plan(set(), groups=2)
    assert following is not None and following.chunks[0].start == 4


def test_a_group_of_decodes_joins_a_short_prompt_under_micro_batches():
    """Two micro-batches of two decoding sequences each: a short prompt arrives and the group
    not in flight advances in the prompt's step; the other group follows in its own step."""
    scheduler = Scheduler(BlockPool(64, block_size=8), max_prefill_tokens=64)
    sequences = started(scheduler, (3, 3, 3, 3))
    sequences[4] = sequence(4, 5)
    scheduler.add(sequences[4])
    mixed = scheduler.next_plan(set(), groups=2)
    assert mixed is not None
    assert [(c.seq_id, len(c.token_ids)) for c in mixed.chunks] == [(4, 5), (0, 1), (1, 1)]
    other = scheduler.next_plan(set(seq_ids(mixed)), groups=2)
    assert other is not None and seq_ids(other) == [2, 3]
    # A prompt too long to share a step with the group runs alone.
    scheduler.step_done(mixed, sequences)
    sequences[5] = sequence(5, 30)
    scheduler.add(sequences[5])
    alone = scheduler.next_plan(set(seq_ids(other)), groups=2)
    assert alone is not None and seq_ids(alone) == [5]
