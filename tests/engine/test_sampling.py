"""The sampling chain, one pure function at a time, and seeded reproducibility end to end."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tandem.engine.sampling import (
    SamplerState,
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    sample_batch,
)
from tandem.errors import InvalidRequestError
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, value in enumerate(logits.tolist()) if math.isfinite(value)]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert kept(apply_top_k(logits, 2)) == [1, 3]
    assert kept(apply_top_k(logits, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    assert kept(apply_top_p(logits, 0.5)) == [0]
    assert kept(apply_top_p(logits, 0.79)) == [0, 1]
    assert kept(apply_top_p(logits, 0.81)) == [0, 1, 2]
    assert kept(apply_top_p(logits, 0.01)) == [0]  # the most likely token always survives


def test_min_p_is_relative_to_the_top_token():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert kept(apply_min_p(logits, 0.5)) == [0, 1]
    assert kept(apply_min_p(logits, 0.2)) == [0, 1, 2]


def test_repetition_penalty_follows_the_transformers_rule():
    logits = torch.tensor([2.0, -2.0, 1.0])
    penalized = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert penalized.tolist() == [1.0, -4.0, 1.0]


def test_presence_and_frequency_penalties_are_additive():
    logits = torch.zeros(3)
    counts = torch.tensor([0, 1, 3])
    assert apply_presence_frequency(logits, counts, 0.5, 0.25).tolist() == [0.0, -0.75, -1.25]


def test_greedy_takes_the_argmax_and_reports_logprobs():
    state = SamplerState.create(SamplingParams(temperature=0.0, logprobs=2), [], 4, torch.device("cpu"))
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    (choice,) = sample_batch(logits, [state])
    assert choice.token_id == 1
    assert choice.logprob == pytest.approx(float(logits[0].log_softmax(-1)[1]))
    assert [token for token, _ in choice.top_logprobs or []] == [1, 3]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 5e-324},  # 1 / 5e-324 overflows: such a temperature is greedy
        {"temperature": 1.0, "repetition_penalty": 0.01, "top_p": 1e-300, "min_p": 1.0},
    ],
)
def test_extreme_but_valid_settings_still_choose_a_token(settings):
    state = SamplerState.create(SamplingParams(**settings), [1, 2], 4, torch.device("cpu"))
    (choice,) = sample_batch(torch.tensor([[0.0, 30.0, -30.0, 2.0]]), [state])
    assert choice.token_id == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", 2.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 0.001),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("max_tokens", 0),
        ("seed", -1),
        ("logprobs", 21),
        ("stop", ("",)),
    ],
)
def test_invalid_sampling_values_are_rejected_by_name(field, value):
    with pytest.raises(InvalidRequestError, match=field.split("_")[0]):
        SamplingParams(**{field: value})


def test_seeded_sampling_is_reproducible_and_seed_dependent(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
    prompt = [5, 17, 42]

    def run(seed: int) -> list[int]:
        params = SamplingParams(
            max_tokens=24,
            temperature=1.0,
            top_p=0.95,
            top_k=50,
            seed=seed,
            repetition_penalty=1.1,
            presence_penalty=0.2,
            ignore_eos=True,
        )
        return [event.token_id for event in engine.generate(prompt, params)]

    first = run(seed=1234)
    assert run(seed=1234) == first
    assert run(seed=99) != first


def test_seeded_request_is_unaffected_by_its_batch_neighbours(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
    params = SamplingParams(max_tokens=16, temperature=0.8, seed=7, ignore_eos=True)
    alone = [event.token_id for event in engine.generate([1, 2, 3], params)]
    other = engine.add_request([9, 8, 7, 6], SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True))
    together = [event.token_id for event in engine.generate([1, 2, 3], params)]
    engine.abort(other)
    assert together == alone


@pytest.mark.parametrize("earlier", [1, 9])
def test_a_resumed_request_draws_what_the_undisturbed_one_drew(checkpoint_factory, earlier):
    """Resumed after `earlier` tokens (those ids after the prompt, `resumed` saying how many), a
    seeded request draws the same next tokens: each draw depends on the seed and the token's
    index, and the earlier tokens count as output for the penalties."""
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
    prompt = [5, 17, 42]
    params = SamplingParams(
        max_tokens=20,
        temperature=1.0,
        top_k=50,
        seed=31,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        ignore_eos=True,
    )
    undisturbed = [event.token_id for event in engine.generate(prompt, params)]
    resumed = replace(params, max_tokens=params.max_tokens - earlier, resumed=earlier)
    neighbour = engine.add_request(
        [9, 8, 7, 6], SamplingParams(max_tokens=40, temperature=1.0, ignore_eos=True)
    )
    rest = [event.token_id for event in engine.generate(prompt + undisturbed[:earlier], resumed)]
    engine.abort(neighbour)
    assert undisturbed[:earlier] + rest == undisturbed
