"""Many sequences at once: each gets exactly the tokens it would get alone."""

from __future__ import annotations

import torch

from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine


def test_concurrent_sequences_match_sequential_runs(checkpoint_factory):
    checkpoint = checkpoint_factory("qwen3-qknorm")
    engine = create_local_engine(
        checkpoint.path, device="cpu", dtype="float32", num_slots=3, max_prefill_tokens=4
    )
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 200, (n,), generator=generator).tolist() for n in (3, 11, 6, 9, 2)]
    lengths = [12, 5, 20, 8, 15]
    alone = []
    for prompt, length in zip(prompts, lengths, strict=True):
        params = SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True)
        alone.append([event.token_id for event in engine.generate(prompt, params)])

    # Five requests on three slots: later ones wait for a slot, prefill chunks interleave with decode.
    ids = [
        engine.add_request(prompt, SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True))
        for prompt, length in zip(prompts, lengths, strict=True)
    ]
    together: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    finished = set()
    while engine.has_work():
        for event in engine.step():
            together[event.seq_id].append(event.token_id)
            if event.finish_reason is not None:
                finished.add(event.seq_id)
    assert finished == set(ids)
    assert [together[seq_id] for seq_id in ids] == alone
    assert engine.cache_stats().blocks_free == engine.cache_stats().blocks_total


def test_finish_reasons_length_and_context(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_context=12)
    events = list(engine.generate([1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)))
    assert len(events) == 4 and events[-1].finish_reason == "length"
    events = list(
        engine.generate([1, 2, 3], SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True))
    )
    assert len(events) == 12 - 3 and events[-1].finish_reason == "length"


def test_stop_token_ids_and_eos_end_a_sequence(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
    greedy = [e.token_id for e in engine.generate([4, 5], SamplingParams(max_tokens=10, temperature=0.0))]
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    events = list(
        engine.generate([4, 5], SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=(stop_at,)))
    )
    assert [e.token_id for e in events] == greedy[: first + 1]
    assert events[-1].finish_reason == "stop"


def test_short_prompts_share_a_step_and_get_what_they_get_alone(checkpoint_factory):
    checkpoint = checkpoint_factory("mistral-window")
    engine = create_local_engine(
        checkpoint.path, device="cpu", dtype="float32", num_slots=4, max_prefill_tokens=40
    )
    generator = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 200, (n,), generator=generator).tolist() for n in (5, 9, 1, 7, 30, 12)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    alone = [[event.token_id for event in engine.generate(prompt, params)] for prompt in prompts]

    widths = []
    forward = engine.executor.runner.forward

    def recording_forward(plan, *args, **kwargs):
        widths.append([len(chunk.token_ids) for chunk in plan.chunks])
        return forward(plan, *args, **kwargs)

    engine.executor.runner.forward = recording_forward
    ids = [engine.add_request(prompt, params) for prompt in prompts]
    together: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    while engine.has_work():
        for event in engine.step():
            together[event.seq_id].append(event.token_id)
    assert [together[seq_id] for seq_id in ids] == alone
    # The first four prompts (padded to 9: 36 tokens) went in one step. The 30-token one, computed
    # alone before, found its first block in the prefix cache: only its last 14 tokens ran, in
    # one step with the 12-token prompt (padded to 14: 28 tokens).
    assert widths[0] == [5, 9, 1, 7]
    assert [5, 9, 1, 7] not in widths[1:] and [14, 12] in widths
    assert [30] not in widths and engine.cache_stats().prefix_hits == 1
    assert engine.cache_stats().blocks_free == engine.cache_stats().blocks_total
