"""A request's life in the engine. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.model.sampling_params import SamplingParams
from tandem.model.step import FinishReason


@dataclass(eq=False)  # identity: two requests with equal prompts are different sequences
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # KV-cache blocks, in position order
    block_hashes: list[bytes] = field(default_factory=list)  # of the full blocks computed so far
    num_computed: int = 0  # tokens whose keys and values are in the cache
    prefill_length: int = 0  # tokens to compute before decoding: the prompt, more after preemption
    finish_reason: FinishReason | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed >= self.prefill_length

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
