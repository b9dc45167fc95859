"""The engine: requests in, token events out, one `step()` at a time.

Three small objects around `step()`: the scheduler (what runs next), the executor (runs it and
chooses tokens), and per-request text streams (detokenization and stop strings).

Running ahead: while only decode steps remain to run, an executor that can (`RunAheadExecutor`)
gets the next decode step queued on the device, fed with the tokens the current step is still
choosing there, before the host waits for the current step's tokens. The device never waits for
the host between tokens. A sequence that turns out to end on the current step (an end token, a
stop string) had one more token computed for it in the queued step; that token is dropped, and
the key and value it wrote sit past the sequence's end, where nothing reads them.

Micro-batches: with an executor that keeps several steps in flight (`PipelinedExecutor`, a
pipeline of N stages), the engine submits up to N steps before it waits for the oldest, each of
sequences that no other step in flight holds; the scheduler splits the running sequences into
N groups (`Scheduler.next_plan`), so each stage works on a different group. A sequence's next
step is planned only once its token is known, so every sequence computes exactly what it would
one step at a time.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

from tandem.engine.blocks import BlockPool, CacheStats, pool_blocks
from tandem.engine.detokenize import IncrementalDetokenizer, StopMatcher
from tandem.engine.executor import Executor, PendingTokens, PipelinedExecutor, RunAheadExecutor
from tandem.engine.scheduler import Scheduler
from tandem.engine.sequence import Sequence, finish_reason_after, reaches_length
from tandem.errors import InvalidRequestError
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import FinishReason, SequenceChunk, StepPlan, TokenChoice
from tandem.model.tokenizer import Tokenizer

DEFAULT_MAX_PREFILL_TOKENS = 2048


@dataclass
class TokenEvent:
    """One generated token of one request, with the text it completed."""

    seq_id: int
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None  # the stop string that ended the request, if one did


class TextStream:
    """Text of one request as it is generated: whole characters, stop strings cut out."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams) -> None:
        decode = functools.partial(tokenizer.decode, skip_special_tokens=params.skip_special_tokens)
        self.detokenizer = IncrementalDetokenizer(decode, prompt_ids)
        self.stop = StopMatcher(params.stop)

    def push(self, token_id: int) -> str:
        return self.stop.feed(self.detokenizer.push(token_id))

    def finish(self) -> str:
        return self.stop.feed(self.detokenizer.flush()) + self.stop.flush()


class LLMEngine:
    def __init__(
        self,
        executor: Executor,
        tokenizer: Tokenizer | None,
        eos_token_ids: frozenset[int],
        max_context: int,
        num_slots: int,
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
    ) -> None:
        self.executor = executor
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_context = max_context
        # The cache of `num_slots` full-context sequences, shared out in blocks.
        self.scheduler = Scheduler(BlockPool(pool_blocks(num_slots, max_context)), max_prefill_tokens)
        self.sequences: dict[int, Sequence] = {}
        self._streams: dict[int, TextStream] = {}
        self._ids = itertools.count()
        self._ahead: PendingTokens | None = None  # a decode step queued before its inputs were known
        self._run_ahead = executor if isinstance(executor, RunAheadExecutor) else None
        self._pipelined: PipelinedExecutor | None = None
        if isinstance(executor, PipelinedExecutor) and executor.micro_batches > 1:
            self._pipelined = executor
        self._in_flight: deque[StepPlan] = deque()  # steps submitted to `_pipelined`, oldest first

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Queue a request; returns its sequence id. Raises InvalidRequestError for bad prompts."""
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the context holds {self.max_context} "
                "(prompt and reply together); shorten the prompt or raise the context size"
            )
        seq_id = next(self._ids)
        sequence = Sequence(seq_id, list(prompt_ids), params)
        self.executor.start_sequence(seq_id, sequence.prompt_ids, params)  # may refuse (a bad grammar)
        self.sequences[seq_id] = sequence
        if self.tokenizer is not None:
            self._streams[seq_id] = TextStream(self.tokenizer, sequence.prompt_ids, params)
        self.scheduler.add(sequence)
        return seq_id

    def abort(self, seq_id: int) -> None:
        sequence = self.sequences.get(seq_id)
        if sequence is not None:
            sequence.finish_reason = FinishReason.ABORT
            self._release(sequence)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._in_flight)

    def cache_stats(self) -> CacheStats:
        """Free KV-cache blocks and the prefix cache's hits and misses (in blocks)."""
        return self.scheduler.pool.stats()

    def step(self) -> list[TokenEvent]:
        """Run one forward pass; returns an event per token generated in it."""
        if self._pipelined is not None:
            return self._pipelined_step(self._pipelined)
        pending, self._ahead = self._ahead, None
        if pending is None:
            plan = self.scheduler.next_plan()
            if plan is None:
                return []
            if self._runs_ahead(plan):
                assert self._run_ahead is not None
                pending = self._run_ahead.launch(plan)
        if pending is None:
            choices = self.executor.execute(plan)
        else:
            assert self._run_ahead is not None
            following = self._following(pending.plan)
            if following is not None:
                self._ahead = self._run_ahead.launch(following, after=pending)
            plan, choices = self._living(pending.plan, self._run_ahead.collect(pending))
            if plan is None:
                return []
        self.scheduler.step_done(plan, self.sequences)
        events = []
        for chunk, choice in zip(plan.sampled, choices, strict=True):
            events.append(self._accept(self.sequences[chunk.seq_id], choice))
        return events

    def _pipelined_step(self, executor: PipelinedExecutor) -> list[TokenEvent]:
        """Fill the pipeline with steps of sequences not in flight, then take the oldest step's
        tokens (of its sequences that have not ended since: an abort)."""
        while len(self._in_flight) < executor.micro_batches:
            busy = {chunk.seq_id for plan in self._in_flight for chunk in plan.chunks}
            plan = self.scheduler.next_plan(busy, groups=executor.micro_batches)
            if plan is None:
                break
            executor.submit(plan)
            self._in_flight.append(plan)
        if not self._in_flight:
            return []
        plan = self._in_flight.popleft()
        sampled = zip(plan.sampled, executor.collect(), strict=True)
        choices = [choice for chunk, choice in sampled if chunk.seq_id in self.sequences]
        chunks = tuple(chunk for chunk in plan.chunks if chunk.seq_id in self.sequences)
        if not chunks:
            return []
        plan = plan if len(chunks) == len(plan.chunks) else StepPlan(chunks)
        self.scheduler.step_done(plan, self.sequences)
        return [
            self._accept(self.sequences[chunk.seq_id], choice)
            for chunk, choice in zip(plan.sampled, choices, strict=True)
        ]

    def _runs_ahead(self, plan: StepPlan) -> bool:
        """A decode step of sequences all decoding, on an executor that can run ahead."""
        if self._run_ahead is None:
            return False
        decoding = {id(sequence) for sequence in self.scheduler.decoding}
        return all(
            id(self.sequences[chunk.seq_id]) in decoding for chunk in plan.chunks
        ) and self._run_ahead.can_run_ahead(plan)

    def _following(self, plan: StepPlan) -> StepPlan | None:
        """The decode step after `plan` (whose tokens are not yet known), when the scheduler's
        next step will surely be one: no prompt waits for blocks, the sequences that `plan` does
        not end by length go on, and free blocks hold their next token. Token ids are
        placeholders: the device feeds them."""
        if not self.scheduler.only_decoding():
            return None
        chunks = []
        for chunk in plan.chunks:
            sequence = self.sequences.get(chunk.seq_id)
            if sequence is None or sequence.finished:
                continue
            if reaches_length(sequence, self.max_context, pending=1):  # `plan`'s token ends it
                continue
            if not self.scheduler.grow_for_run_ahead(sequence, chunk.end + 1):
                return None
            chunks.append(SequenceChunk(chunk.seq_id, tuple(sequence.blocks), chunk.end, (0,), sample=True))
        if not chunks:
            return None
        following = StepPlan(tuple(chunks))
        return following if self._runs_ahead(following) else None

    def _living(
        self, plan: StepPlan, choices: list[TokenChoice]
    ) -> tuple[StepPlan | None, list[TokenChoice]]:
        """The part of a step that ran ahead whose sequences have not ended since it was queued."""
        kept = [
            (chunk, choice)
            for chunk, choice in zip(plan.chunks, choices, strict=True)
            if chunk.seq_id in self.sequences and not self.sequences[chunk.seq_id].finished
        ]
        if not kept:
            return None, []
        if len(kept) < len(plan.chunks):
            plan = StepPlan(tuple(chunk for chunk, _ in kept))
        return plan, [choice for _, choice in kept]

    def _accept(self, sequence: Sequence, choice: TokenChoice) -> TokenEvent:
        sequence.output_ids.append(choice.token_id)
        stream = self._streams.get(sequence.seq_id)
        reason = finish_reason_after(sequence, choice.token_id, self.eos_token_ids, self.max_context)
        # An end token is not part of the answer, also where special tokens' text is kept.
        ends_here = reason is FinishReason.STOP and not sequence.params.skip_special_tokens
        text = stream.push(choice.token_id) if stream and not ends_here else ""
        stop_sequence = None
        if stream is not None and stream.stop.stopped:
            reason, stop_sequence = FinishReason.STOP, stream.stop.matched
        if reason is not None:
            if stream is not None:
                text += stream.finish()
            sequence.finish_reason = reason
            self._release(sequence)
        return TokenEvent(
            seq_id=sequence.seq_id,
            token_id=choice.token_id,
            text=text,
            logprob=choice.logprob,
            top_logprobs=choice.top_logprobs,
            finish_reason=reason,
            stop_sequence=stop_sequence,
        )

    def _release(self, sequence: Sequence) -> None:
        self.scheduler.remove(sequence)
        self.executor.end_sequence(sequence.seq_id)
        self.sequences.pop(sequence.seq_id, None)
        self._streams.pop(sequence.seq_id, None)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generator[TokenEvent, None, None]:
        """Run one request to completion (other queued requests advance too)."""
        seq_id = self.add_request(prompt_ids, params)
        try:
            while True:
                for event in self.step():
                    if event.seq_id == seq_id:
                        yield event
                        if event.finish_reason is not None:
                            return
        finally:
            self.abort(seq_id)  # a no-op once finished; frees the blocks if the caller stopped early
