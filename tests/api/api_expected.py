"""What the demo model generates, computed in the test process with the local engine: the
reference the API's answers must equal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tandem.engine.engine import LLMEngine
from tandem.model.sampling_params import SamplingParams

CONTEXT = 512  # the demo instance's context in these tests

PROMPTS = [
    "What news, my lord?",
    "Tell me of the king.",
    "Where is the duke?",
    "Speak, what say you?",
    "Good morrow, sweet lady.",
    "How fares the queen?",
    "Who comes here?",
    "Is the battle won?",
]


@dataclass(frozen=True)
class Expected:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    stop_sequence: str | None


def greedy(
    engine: LLMEngine,
    messages: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    prompt_ids: list[int] | None = None,
    **settings: Any,
) -> Expected:
    """The engine's greedy answer to a conversation, a text prompt, or token ids."""
    assert engine.tokenizer is not None
    if messages is not None:
        ids = engine.tokenizer.encode_chat(messages)
    elif prompt is not None:
        ids = engine.tokenizer.encode(prompt)
    else:
        ids = list(prompt_ids or [])
    params = SamplingParams(**{"max_tokens": CONTEXT, "temperature": 0.0, **settings})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy machine: more threads only wait on each other
    try:
        events = list(engine.generate(ids, params))
    finally:
        torch.set_num_threads(threads)
    return Expected(
        text="".join(event.text for event in events),
        token_ids=[event.token_id for event in events],
        prompt_tokens=len(ids),
        finish_reason=str(events[-1].finish_reason),
        stop_sequence=events[-1].stop_sequence,
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
