"""Which sequences run in the next step, and which KV-cache blocks they hold. Pure Python.

Prompts are computed in chunks of at most `max_prefill_tokens`: a long prompt one chunk a step,
short waiting prompts several in one step (padded to the longest, so within the same budget of
computed tokens). Every sequence past its prompt advances by one token per decode step. When both
kinds of work wait, the decoding sequences join the prompts' step where all rows padded still fit
the budget (short prompts, prefix-cached tails: one read of the weights instead of two);
otherwise steps alternate, so a long prompt neither stalls running streams nor waits behind them.

A waiting sequence is admitted when the free blocks hold its prompt (less the blocks of a cached
prefix, which it shares; only the tokens past that prefix are computed); a decoding sequence takes a new block each time it fills one. When
none is free, the sequence admitted last is preempted: its blocks go back, and it waits at the
front of the queue to be computed again (prompt and generated tokens, mostly from the prefix
cache), so the oldest always progress and nothing deadlocks.

Micro-batches: where several steps are in flight at once (a pipeline's stages each on its own),
`next_plan` is told which sequences a step in flight holds (`busy`) and into how many `groups`
to split the decoding ones: it plans only sequences that are not busy, a decode step at most a
`groups`-th of all decoding sequences, and never preempts a busy one. A group of decodes joins
a prompts' step as all decodes do with one step at a time: where every row padded fits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Set

from tandem.engine.blocks import BlockPool, block_hash, blocks_for, prefix_hashes
from tandem.engine.sequence import Sequence
from tandem.model.step import SequenceChunk, StepPlan


def step_fits(rows: int, width: int, budget: int) -> bool:
    """Whether a step of `rows` chunks, each padded to `width` tokens, stays within the budget of
    computed tokens."""
    return rows * width <= budget


def group_size(decoding: int, groups: int) -> int:
    """Sequences in one decode step when `decoding` sequences run in `groups` micro-batches."""
    return -(-decoding // groups)


class Scheduler:
    def __init__(self, pool: BlockPool, max_prefill_tokens: int) -> None:
        if max_prefill_tokens < 1:
            raise ValueError("the scheduler needs at least one prefill token per step")
        self.pool = pool
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.decoding: list[Sequence] = []
        self.starting: list[Sequence] = []  # whole prompts computed in the step under way
        self._last_was_prefill = False
        self._hashes: dict[int, tuple[int, list[bytes]]] = {}  # seq_id -> (tokens, their hashes)

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.starting or self.decoding)

    # --- admission ------------------------------------------------------------------------------

    def _reusable_hashes(self, sequence: Sequence) -> list[bytes]:
        """Hashes of the full blocks a sequence may take from the prefix cache: all but its last
        token's block, since the last token is computed to choose the next. Kept while the
        sequence waits: every step asks whether the first waiting one fits."""
        known = self._hashes.get(sequence.seq_id)
        if known is not None and known[0] == sequence.num_tokens:
            return known[1]
        tokens = sequence.token_ids
        hashes = prefix_hashes(tokens[: len(tokens) - 1], self.pool.block_size)
        self._hashes[sequence.seq_id] = (sequence.num_tokens, hashes)
        return hashes

    def _free_needed(self, sequence: Sequence) -> int:
        total = blocks_for(sequence.num_tokens, self.pool.block_size)
        return self.pool.free_needed(self._reusable_hashes(sequence), total)

    def _admit(self, sequence: Sequence) -> None:
        """Blocks for all of `sequence`'s tokens, its cached prefix shared."""
        hashes = self._reusable_hashes(sequence)
        del self._hashes[sequence.seq_id]
        sequence.blocks = self.pool.take_prefix(hashes, looked_up=len(hashes))
        sequence.block_hashes = hashes[: len(sequence.blocks)]
        sequence.num_computed = len(sequence.blocks) * self.pool.block_size
        sequence.prefill_length = sequence.num_tokens
        self._grow(sequence, sequence.num_tokens)

    def _grow(self, sequence: Sequence, num_tokens: int) -> bool:
        """Give `sequence` the blocks to hold `num_tokens` tokens; False where none is free."""
        while len(sequence.blocks) < blocks_for(num_tokens, self.pool.block_size):
            if not self.pool.num_free:
                return False
            sequence.blocks.append(self.pool.allocate())
        return True

    def grow_for_run_ahead(self, sequence: Sequence, num_tokens: int) -> bool:
        """Blocks for a step queued before its inputs are known; False (and no preemption: a
        step is in flight) where none is free."""
        return self._grow(sequence, num_tokens)

    def _can_prefill(self, busy: Set[int] = frozenset()) -> bool:
        if self.prefilling is not None:
            return self.prefilling.seq_id not in busy
        return bool(self.waiting) and self._free_needed(self.waiting[0]) <= self.pool.num_free

    def only_decoding(self) -> bool:
        """Whether the next plan will be a decode step of the sequences decoding now: nothing to
        prefill, or no free blocks for it."""
        return bool(self.decoding) and not self._can_prefill()

    # --- plans ----------------------------------------------------------------------------------

    def next_plan(self, busy: Set[int] = frozenset(), groups: int = 1) -> StepPlan | None:
        """The next step, of sequences not in `busy` (held by steps in flight); a decode step
        takes at most a `groups`-th of the decoding sequences."""
        ready = [sequence for sequence in self.decoding if sequence.seq_id not in busy]
        group = ready[: group_size(len(self.decoding), groups)]
        can_prefill = self._can_prefill(busy)
        if can_prefill and self._decodes_can_join(group):
            return self._mixed_plan(group)
        prefer_decode = ready and (self._last_was_prefill or not can_prefill)
        if prefer_decode:
            self._last_was_prefill = False
            plan = self._decode_plan(group, busy)
            if plan is not None:
                return plan
            can_prefill = self._can_prefill(busy)  # every sequence of the group was preempted
        if can_prefill:
            self._last_was_prefill = True
            return self._prefill_plan()
        return None

    def _decodes_can_join(self, group: list[Sequence]) -> bool:
        """Whether the first waiting prompt's uncached tokens and the next tokens of `group` (the
        decoding sequences this step may take) fit one step, every row padded alike."""
        if self.prefilling is not None or not group:
            return False
        width = self._tokens_to_compute(self.waiting[0])
        return step_fits(1 + len(group), width, self.max_prefill_tokens)

    def _mixed_plan(self, group: list[Sequence]) -> StepPlan:
        """Waiting prompts, as many as fit beside `group`, and the group's next tokens; the
        prompts alone where the free blocks do not hold the group's tokens (then the next step
        decodes, as after any prompts' step)."""
        chunks = self._whole_prompts(rows_beside=len(group))
        joined = all(self._grow(sequence, sequence.num_tokens) for sequence in group)
        self._last_was_prefill = not joined
        if not joined:
            return StepPlan(tuple(chunks))
        return StepPlan((*chunks, *(self._decode_chunk(sequence) for sequence in group)))

    def _prefill_plan(self) -> StepPlan:
        if self.prefilling is None:
            chunks = self._whole_prompts(rows_beside=0)
            if chunks:
                return StepPlan(tuple(chunks))
            sequence = self.waiting.popleft()  # longer than the budget: in chunks
            self._admit(sequence)
            self.prefilling = sequence
        sequence = self.prefilling
        start = sequence.num_computed
        end = min(sequence.prefill_length, start + self.max_prefill_tokens)
        chunk = SequenceChunk(
            seq_id=sequence.seq_id,
            blocks=tuple(sequence.blocks),
            start=start,
            token_ids=tuple(sequence.token_ids[start:end]),
            sample=end == sequence.prefill_length,
        )
        return StepPlan((chunk,))

    def _tokens_to_compute(self, sequence: Sequence) -> int:
        """A waiting sequence's tokens past the prefix the cache holds for it now."""
        cached = self.pool.cached_prefix(self._reusable_hashes(sequence))
        return sequence.num_tokens - len(cached) * self.pool.block_size

    def _whole_prompts(self, rows_beside: int) -> list[SequenceChunk]:
        """Admit the waiting sequences, in order, whose uncached tokens one step computes whole
        beside `rows_beside` one-token rows, all padded to the longest, each
        while the free blocks hold it (checked as each is admitted: an earlier one's new blocks
        may evict a later one's cached prefix). Empty where the first is longer than the budget."""
        chunks: list[SequenceChunk] = []
        lengths: list[int] = []
        while self.waiting:
            sequence = self.waiting[0]
            if self._free_needed(sequence) > self.pool.num_free:
                break
            lengths.append(self._tokens_to_compute(sequence))
            if len(lengths) > 1 and not step_fits(
                len(lengths) + rows_beside, max(lengths), self.max_prefill_tokens
            ):
                break
            if len(lengths) == 1 and lengths[0] > self.max_prefill_tokens:
                return []
            self.waiting.popleft()
            self._admit(sequence)
            self.starting.append(sequence)
            start = sequence.num_computed
            chunks.append(
                SequenceChunk(
                    sequence.seq_id, tuple(sequence.blocks), start, tuple(sequence.token_ids[start:]), True
                )
            )
        return chunks

    def _decode_chunk(self, sequence: Sequence) -> SequenceChunk:
        return SequenceChunk(
            seq_id=sequence.seq_id,
            blocks=tuple(sequence.blocks),
            start=sequence.num_tokens - 1,
            token_ids=(sequence.output_ids[-1],),
            sample=True,
        )

    def _decode_plan(self, group: list[Sequence], busy: Set[int]) -> StepPlan | None:
        """One token for each sequence of `group`, each given a new block where it filled its
        last (preempting the latest admitted sequence not in flight where none is free); None
        where all of the group had to be preempted."""
        for sequence in list(group):
            while sequence in group and not self._grow(sequence, sequence.num_tokens):
                victim = next(s for s in reversed(self.decoding) if s.seq_id not in busy)
                self._preempt(victim)
                if victim in group:
                    group.remove(victim)
        chunks = [self._decode_chunk(sequence) for sequence in group]
        return StepPlan(tuple(chunks)) if chunks else None

    def _preempt(self, sequence: Sequence) -> None:
        """Free a decoding sequence's blocks; it waits first in line to be computed again."""
        self.decoding.remove(sequence)
        self._free_blocks(sequence)
        self.waiting.appendleft(sequence)

    # --- results --------------------------------------------------------------------------------

    def step_done(self, plan: StepPlan, sequences: dict[int, Sequence]) -> None:
        """Record that `plan` ran: its tokens are now in the cache, and the blocks it filled may
        be found by their prefix."""
        for chunk in plan.chunks:
            sequence = sequences[chunk.seq_id]
            sequence.num_computed = chunk.end
            self._name_full_blocks(sequence)
            if sequence is self.prefilling and sequence.is_prefilled:
                self.prefilling = None
                self.decoding.append(sequence)
            elif sequence in self.starting:
                self.starting.remove(sequence)
                self.decoding.append(sequence)

    def _name_full_blocks(self, sequence: Sequence) -> None:
        size = self.pool.block_size
        tokens = sequence.token_ids
        for index in range(len(sequence.block_hashes), sequence.num_computed // size):
            parent = sequence.block_hashes[-1] if sequence.block_hashes else b""
            value = block_hash(parent, tokens[index * size : (index + 1) * size])
            sequence.block_hashes.append(value)
            self.pool.register(sequence.blocks[index], value)

    def remove(self, sequence: Sequence) -> None:
        """Take a finished or aborted sequence out and free its blocks."""
        if sequence in self.waiting:
            self.waiting.remove(sequence)
        if sequence is self.prefilling:
            self.prefilling = None
        if sequence in self.starting:
            self.starting.remove(sequence)
        if sequence in self.decoding:
            self.decoding.remove(sequence)
        self._hashes.pop(sequence.seq_id, None)
        self._free_blocks(sequence)

    def _free_blocks(self, sequence: Sequence) -> None:
        self.pool.release(sequence.blocks)
        sequence.blocks, sequence.block_hashes = [], []
        sequence.num_computed = 0
