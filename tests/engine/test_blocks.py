"""The block pool's bookkeeping and the scheduler's admission by blocks, as pure Python."""

from __future__ import annotations

from tandem.engine.blocks import BlockPool, blocks_for, pool_blocks, prefix_hashes
from tandem.engine.scheduler import Scheduler
from tandem.engine.sequence import Sequence
from tandem.model.sampling_params import SamplingParams


def test_sizes():
    assert [blocks_for(n, 16) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
    assert pool_blocks(num_slots=8, max_context=100, block_size=16) == 8 * 7


def test_hashes_chain_the_whole_prefix():
    a = prefix_hashes(list(range(40)), block_size=16)
    b = prefix_hashes([*range(16), 99, *range(17, 40)], block_size=16)
    assert len(a) == 2  # full blocks only
    assert a[0] == b[0] and a[1] != b[1]
    # the same block after a different prefix is a different block
    shifted = prefix_hashes([*range(100, 116), *range(16, 32)], block_size=16)
    assert shifted[1] != a[1]


def test_freed_blocks_stay_findable_until_handed_out_again():
    pool = BlockPool(3, block_size=4)
    hashes = prefix_hashes([1, 2, 3, 4, 5, 6, 7, 8], block_size=4)
    first, second = pool.allocate(), pool.allocate()
    pool.register(first, hashes[0])
    pool.register(second, hashes[1])
    pool.release([first, second])
    assert pool.num_free == 3
    assert pool.take_prefix(hashes, looked_up=2) == [first, second]  # shared, not recomputed
    assert pool.num_free == 1 and pool.stats().prefix_hits == 2
    assert pool.take_prefix(hashes, looked_up=2) == [first, second]  # a second holder
    pool.release([first, second])
    assert pool.num_free == 1  # still held once
    pool.release([first, second])
    # handed out again, least recently freed first (the never-used block, then the chain's tail)
    assert [pool.allocate() for _ in range(2)] == [2, second]
    assert pool.cached_prefix(hashes) == [first]
    assert pool.take_prefix(hashes, looked_up=2) == [first] and pool.stats().prefix_misses == 1


def sequence(seq_id: int, prompt: list[int]) -> Sequence:
    return Sequence(seq_id, prompt, SamplingParams(temperature=0.0))


def test_a_prompt_waits_for_blocks_and_the_newest_is_preempted_to_let_the_oldest_grow():
    scheduler = Scheduler(BlockPool(4, block_size=4), max_prefill_tokens=16)
    sequences = {
        0: sequence(0, [1, 2, 3, 4, 5, 6, 7]),
        1: sequence(1, [9, 8, 7, 6, 5]),
        2: sequence(2, [1] * 9),
    }
    for s in sequences.values():
        scheduler.add(s)
    plan = scheduler.next_plan()  # 0 and 1 together take all four blocks; 2 waits
    assert plan is not None and [c.seq_id for c in plan.chunks] == [0, 1]
    assert scheduler.pool.num_free == 0 and list(scheduler.waiting) == [sequences[2]]
    scheduler.step_done(plan, sequences)
    for s in (sequences[0], sequences[1]):
        s.output_ids.append(3)
    # 0 holds 8 positions, its ninth needs a block: 1 (the newest) gives its two back and waits
    sequences[0].output_ids.append(3)
    sequences[0].num_computed = 8
    decode = scheduler.next_plan()
    assert decode is not None and [c.seq_id for c in decode.chunks] == [0]
    assert len(decode.chunks[0].blocks) == 3 and scheduler.pool.num_free == 1
    assert list(scheduler.waiting) == [sequences[1], sequences[2]]
    assert sequences[1].blocks == [] and sequences[1].num_computed == 0
    scheduler.step_done(decode, sequences)
    # when it comes back, the preempted sequence is computed again, output included
    scheduler.remove(sequences[0])
    again = scheduler.next_plan()
    assert again is not None and again.chunks[0].seq_id == 1
    assert again.chunks[0].token_ids[-1] == 3 and again.chunks[0].sample
