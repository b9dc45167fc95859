"""Step plans and token choices as JSON-ready lists: the headers of the runners' messages."""

from __future__ import annotations

from typing import Any

from tandem.engine.sampling import TokenChoice
from tandem.model.step import SequenceChunk, StepPlan


def plan_to_wire(plan: StepPlan) -> list[list[Any]]:
    return [[c.seq_id, c.slot, c.start, list(c.token_ids), c.sample] for c in plan.chunks]


def plan_from_wire(rows: list[list[Any]]) -> StepPlan:
    return StepPlan(
        tuple(
            SequenceChunk(seq_id, slot, start, tuple(ids), bool(sample))
            for seq_id, slot, start, ids, sample in rows
        )
    )


def choices_to_wire(choices: list[TokenChoice]) -> list[list[Any]]:
    return [[c.token_id, c.logprob, c.top_logprobs] for c in choices]


def choices_from_wire(rows: list[list[Any]]) -> list[TokenChoice]:
    return [
        TokenChoice(token, logprob, [tuple(pair) for pair in top] if top is not None else None)
        for token, logprob, top in rows
    ]
