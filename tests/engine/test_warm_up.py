"""A runner warmed up before its first request gives every request the tokens it gets cold."""

from __future__ import annotations

from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine


def test_warm_up_leaves_no_trace_in_later_requests(checkpoint_factory):
    checkpoint = checkpoint_factory("mistral-window")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6], [2]]

    def tokens(warm: bool) -> list[list[int]]:
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", num_slots=2)
        if warm:
            engine.executor.runner.warm_up()
        return [[event.token_id for event in engine.generate(prompt, params)] for prompt in prompts]

    assert tokens(warm=True) == tokens(warm=False)
