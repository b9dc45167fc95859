"""Choosing the next token: a chain of small pure functions over one sequence's logits.

Order: the grammar mask of a constrained sequence (over the whole batch at once), penalties,
temperature, top-k, top-p, min-p, then a draw from the sequence's own generator, seeded afresh
for every token from the request's seed and the token's index in the output (`draw_seed`): a
seeded request gives the same tokens whatever else shares its batch, and a request resumed
after `resumed` tokens (on another instance) draws exactly what the lost one would have drawn.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tandem.engine.grammar import Grammars, mask_logits
from tandem.errors import InvalidRequestError
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import TokenChoice

if TYPE_CHECKING:
    import xgrammar


MASK_63 = (1 << 63) - 1


def draw_seed(seed: int, index: int) -> int:
    """The generator seed of output token `index` of a request seeded `seed` (splitmix64 of the
    pair, so neighbouring indices and seeds give unrelated streams)."""
    value = (seed + (index + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 31)) & MASK_63


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens already in the sequence by `penalty`."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(-1, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen, scores)


def apply_presence_frequency(
    logits: torch.Tensor, output_counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """Subtract `presence` once and `frequency` per occurrence for tokens already generated."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    counts = output_counts.to(logits.dtype)
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least `p`."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens less likely than `min_p` times the most likely one."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    threshold = min_p * probs.max(-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


@dataclass
class SamplerState:
    """What sampling remembers about one sequence: its seed and generator, and the tokens seen
    so far (`output_tokens` starts with a resumed request's earlier output)."""

    params: SamplingParams
    seed: int
    generator: torch.Generator
    seen: torch.Tensor  # [n] unique ids of prompt and output tokens (repetition penalty)
    output_counts: torch.Tensor  # [vocab] occurrences of each generated token
    output_tokens: list[int] = field(default_factory=list)
    matcher: xgrammar.GrammarMatcher | None = None  # where the output's grammar has got to

    @classmethod
    def create(
        cls,
        params: SamplingParams,
        prompt_ids: list[int],
        vocab_size: int,
        device: torch.device,
        grammars: Grammars | None = None,
    ) -> SamplerState:
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        needs_history = params.has_penalties
        seen = torch.tensor(sorted(set(prompt_ids)) if needs_history else [], dtype=torch.long, device=device)
        counts = torch.zeros(vocab_size if needs_history else 0, dtype=torch.long, device=device)
        matcher = None
        if params.constraint is not None:
            if grammars is None:
                raise InvalidRequestError("this engine cannot constrain its output to a grammar")
            matcher = grammars.matcher(params.constraint)
        state = cls(params, seed, torch.Generator(device=device), seen, counts, matcher=matcher)
        earlier = prompt_ids[len(prompt_ids) - params.resumed :] if params.resumed else []
        for token_id in earlier:
            state.record(token_id)
        return state

    def record(self, token_id: int) -> None:
        self.output_tokens.append(token_id)
        if self.matcher is not None and not self.matcher.is_terminated():
            self.matcher.accept_token(token_id)
        if self.params.has_penalties:
            self.output_counts[token_id] += 1
            if not bool((self.seen == token_id).any()):
                self.seen = torch.cat([self.seen, self.seen.new_tensor([token_id])])


def process_logits(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """Apply the penalty and truncation chain to one sequence's logits ([vocab], float32)."""
    params = state.params
    logits = apply_repetition_penalty(logits, state.seen, params.repetition_penalty)
    logits = apply_presence_frequency(
        logits, state.output_counts, params.presence_penalty, params.frequency_penalty
    )
    if params.greedy:
        return logits
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


def choose_token(logits: torch.Tensor, state: SamplerState) -> int:
    processed = process_logits(logits, state)
    if state.params.greedy:
        return int(processed.argmax(-1))
    probs = processed.softmax(-1)
    state.generator.manual_seed(draw_seed(state.seed, len(state.output_tokens)))
    return int(torch.multinomial(probs, 1, generator=state.generator))


def plain_greedy(state: SamplerState) -> bool:
    """Greedy with nothing to apply or report but the most likely token."""
    params = state.params
    return params.greedy and not params.has_penalties and params.logprobs is None and state.matcher is None


def sample_batch(logits: torch.Tensor, states: list[SamplerState]) -> list[TokenChoice]:
    """Pick one token per row of `logits` ([B, vocab]) and record it in the row's state."""
    choices: list[TokenChoice] = []
    if any(state.matcher is not None for state in states):
        logits = mask_logits(logits, [state.matcher for state in states])
    plain_greedy = all(s.params.greedy and not s.params.has_penalties for s in states)
    fast_tokens = logits.argmax(-1).tolist() if plain_greedy else None  # one host sync for the batch
    for row, state in enumerate(states):
        token = fast_tokens[row] if fast_tokens is not None else choose_token(logits[row], state)
        choice = TokenChoice(token)
        if state.params.logprobs is not None:
            logprobs = logits[row].log_softmax(-1)
            top_logprobs = None
            if state.params.logprobs > 0:
                top = torch.topk(logprobs, state.params.logprobs)
                top_logprobs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            choice = TokenChoice(token, float(logprobs[token]), top_logprobs)
        state.record(token)
        choices.append(choice)
    return choices
