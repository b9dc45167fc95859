"""Running one decode step ahead changes no token: sequences that end by length, by a stop
token or by abort in the middle of a batch, and requests that arrive while others decode, get
exactly what the engine gives them step by step."""

from __future__ import annotations

import torch

from conftest import TEST_DEVICE, TEST_DTYPE
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine

PROMPT_LENGTHS = (3, 11, 6, 9, 2, 5)
MAX_TOKENS = (14, 5, 20, 12, 15, 9)


def greedy(max_tokens: int, stop_token_ids: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, stop_token_ids=stop_token_ids
    )


def drive(engine, prompts, params, abort_after: int) -> dict[int, list[int]]:
    """Requests 0-3 at once; 4 and 5 once request 0 has three tokens; request 3 aborted once it
    has `abort_after` tokens. Returns each request's tokens, by request index."""
    index_of = {engine.add_request(prompts[i], params[i]): i for i in range(4)}
    outputs: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    late_added = aborted = False
    while engine.has_work():
        for event in engine.step():
            outputs[index_of[event.seq_id]].append(event.token_id)
        if not late_added and len(outputs[0]) >= 3:
            index_of.update({engine.add_request(prompts[i], params[i]): i for i in (4, 5)})
            late_added = True
        if not aborted and len(outputs[3]) >= abort_after:
            engine.abort(next(seq for seq, i in index_of.items() if i == 3))
            aborted = True
    return outputs


def engine_for(checkpoint, run_ahead: bool):
    engine = create_local_engine(
        checkpoint.path, device=TEST_DEVICE, dtype=TEST_DTYPE, num_slots=4, max_prefill_tokens=4
    )
    engine.executor.run_ahead = run_ahead
    return engine


def test_running_ahead_gives_the_same_tokens(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 200, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    step_by_step = engine_for(checkpoint, run_ahead=False)
    free_run = drive(step_by_step, prompts, [greedy(n) for n in MAX_TOKENS], abort_after=99)
    # Request 2 stops at its sixth token (by id, so maybe earlier), mid-batch; 3 is aborted.
    stop = free_run[2][5]
    params = [greedy(n) for n in MAX_TOKENS]
    params[2] = greedy(MAX_TOKENS[2], stop_token_ids=(stop,))
    expected = drive(step_by_step, prompts, params, abort_after=4)
    assert expected[2] == free_run[2][: free_run[2].index(stop) + 1]
    assert len(expected[3]) == 4

    ahead = engine_for(checkpoint, run_ahead=True)
    launches = {"ahead": 0}
    launch = ahead.executor.launch

    def counting_launch(plan, after=None):
        launches["ahead"] += after is not None
        return launch(plan, after)

    ahead.executor.launch = counting_launch
    assert drive(ahead, prompts, params, abort_after=4) == expected
    assert launches["ahead"] >= 8  # the steps really ran ahead
    assert ahead.cache_stats().blocks_free == ahead.cache_stats().blocks_total
    # The engine serves the next request as before, whatever was left queued.
    launches["ahead"] = 0
    again = [e.token_id for e in ahead.generate(prompts[1], greedy(30))]
    assert again == [e.token_id for e in step_by_step.generate(prompts[1], greedy(30))]
    assert launches["ahead"] == 28  # every decode step but the first and the last ran ahead
