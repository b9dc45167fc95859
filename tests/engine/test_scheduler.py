"""The scheduler's decisions, as pure functions of lengths, free blocks and budgets."""

from __future__ import annotations

import pytest

from tandem.engine.blocks import BlockPool
from tandem.engine.scheduler import Scheduler, prompts_in_one_step
from tandem.engine.sequence import Sequence
from tandem.model.sampling_params import SamplingParams


@pytest.mark.parametrize(
    ("lengths", "admissible", "budget", "count"),
    [
        ([], 4, 100, 0),  # nothing waits
        ([5, 5], 0, 100, 0),  # no blocks for any
        ([5, 9, 1, 7, 30], 4, 40, 4),  # four padded to 9 = 36; a fifth has no blocks
        ([5, 9, 1, 7, 30], 8, 40, 4),  # the fifth would make 5 x 30
        ([30, 5], 4, 40, 1),  # 2 x 30 > 40: the long one alone
        ([50, 5], 4, 40, 1),  # longer than the budget: alone, in chunks
        ([10] * 8, 8, 2048, 8),
        ([3, 3, 3], 2, 100, 2),
    ],
)
def test_how_many_prompts_one_step_computes(lengths, admissible, budget, count):
    assert prompts_in_one_step(lengths, admissible, budget) == count


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
