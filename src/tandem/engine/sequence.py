"""A request's life in the engine, and the plan of one forward step. Pure Python.

A `StepPlan` is plain data: a pipeline's first stage makes it and every other stage follows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tandem.engine.sampling_params import SamplingParams


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context is full
    ABORT = "abort"  # cancelled by the client


@dataclass(frozen=True)
class SequenceChunk:
    """Some consecutive tokens of one sequence, computed in one step."""

    seq_id: int
    slot: int
    start: int  # position of the first token
    token_ids: tuple[int, ...]
    sample: bool  # the chunk reaches the newest token, so the next one is chosen

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class StepPlan:
    """One forward pass: one new token per sequence, one chunk of one prompt, or several whole
    prompts (chunks from position 0, padded on the right to the longest)."""

    chunks: tuple[SequenceChunk, ...]

    def __post_init__(self) -> None:
        if not self.chunks:
            raise ValueError("a step plan needs at least one chunk")
        if len({len(c.token_ids) for c in self.chunks}) != 1 and any(c.start for c in self.chunks):
            raise ValueError("chunks of different lengths must be whole prompts (start at position 0)")

    @property
    def tokens_per_sequence(self) -> int:
        """The width of the step: its longest chunk (shorter ones are padded to it)."""
        return max(len(c.token_ids) for c in self.chunks)

    @property
    def padded(self) -> bool:
        return any(len(c.token_ids) != self.tokens_per_sequence for c in self.chunks)

    @property
    def num_tokens(self) -> int:
        """Tokens computed, padding included."""
        return self.tokens_per_sequence * len(self.chunks)

    @property
    def sampled(self) -> list[SequenceChunk]:
        return [c for c in self.chunks if c.sample]


@dataclass(eq=False)  # identity: two requests with equal prompts are different sequences
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    slot: int | None = None
    num_computed: int = 0  # tokens whose keys and values are in the cache
    finish_reason: FinishReason | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed >= len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def reaches_length(sequence: Sequence, max_context: int, pending: int = 0) -> bool:
    """Whether `sequence` is at its length limit (max_tokens or the context) once `pending`
    more tokens, not yet known, are appended to it."""
    return (
        len(sequence.output_ids) + pending >= sequence.params.max_tokens
        or sequence.num_tokens + pending >= max_context
    )


def finish_reason_after(
    sequence: Sequence, token_id: int, eos_token_ids: frozenset[int], max_context: int
) -> FinishReason | None:
    """Why `sequence` must stop after appending `token_id`, or None to go on."""
    params = sequence.params
    if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in eos_token_ids):
        return FinishReason.STOP
    if reaches_length(sequence, max_context):
        return FinishReason.LENGTH
    return None
