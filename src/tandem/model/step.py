"""The plan of one forward step, and why a request ended. Pure Python.

A `StepPlan` is plain data: a pipeline's first stage makes it and every other stage follows it
(it crosses processes in the protocol's step messages).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context is full
    ABORT = "abort"  # cancelled by the client


@dataclass(frozen=True)
class SequenceChunk:
    """Some consecutive tokens of one sequence, computed in one step, with the sequence's
    KV-cache blocks (position p lives in `blocks[p // block size]`)."""

    seq_id: int
    blocks: tuple[int, ...]
    start: int  # position of the first token
    token_ids: tuple[int, ...]
    sample: bool  # the chunk reaches the newest token, so the next one is chosen

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class StepPlan:
    """One forward pass: one new token per sequence, one chunk of one prompt, or several prompts
    (whole, or their tails past a cached prefix) with, where they fit, the decoding sequences'
    next tokens. Shorter chunks are padded on the right to the longest: a padding token's keys
    and values land past its sequence's tokens (in its own unfilled block or the scratch block),
    where no query of the step looks and the sequence's next real token overwrites them."""

    chunks: tuple[SequenceChunk, ...]

    def __post_init__(self) -> None:
        if not self.chunks:
            raise ValueError("a step plan needs at least one chunk")

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


@dataclass(frozen=True)
class TokenChoice:
    """The token a step chose for one sequence, with its log-probability and the most likely
    alternatives (token id, log-probability) when the request asked for them."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
