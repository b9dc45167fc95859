"""The paged KV cache through the whole engine: many requests at once get what they get alone,
a repeated prefix is served from the cache, blocks come back when requests end or are aborted,
and requests beyond the free blocks wait (or are preempted and recomputed) and finish."""

from __future__ import annotations

import random

import torch

from tandem.engine.blocks import BLOCK_SIZE
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine

MAX_CONTEXT = 128  # as the runner processes of `start_instance`


def varied_requests(count: int, vocab_size: int, seed: int) -> list[tuple[list[int], SamplingParams]]:
    """Prompts of 1 to 45 tokens, some sharing a 20-token start, each with its own settings:
    lengths, stop tokens, penalties, log-probabilities, top-k (all greedy)."""
    generator = random.Random(seed)
    shared = [generator.randrange(vocab_size) for _ in range(20)]
    requests = []
    for index in range(count):
        length = generator.randint(1, 45)
        prompt = [generator.randrange(vocab_size) for _ in range(length)]
        if index % 4 == 0:
            prompt = shared + prompt[:25]
        params = SamplingParams(
            max_tokens=generator.randint(1, 24),
            temperature=0.0,
            ignore_eos=True,
            stop_token_ids=(generator.randrange(vocab_size),) if index % 3 == 0 else (),
            repetition_penalty=1.3 if index % 5 == 0 else 1.0,
            frequency_penalty=0.5 if index % 7 == 0 else 0.0,
            logprobs=2 if index % 6 == 0 else None,
            top_k=5 if index % 2 else 0,
        )
        requests.append((prompt, params))
    return requests


def alone(model_dir, requests) -> list[list[int]]:
    """Each request's tokens, from an engine that serves it by itself."""
    engine = create_local_engine(
        model_dir, device="cpu", dtype="float32", num_slots=1, max_context=MAX_CONTEXT
    )
    return [[event.token_id for event in engine.generate(prompt, params)] for prompt, params in requests]


def run_all(engine, requests) -> list[list[int]]:
    ids = [engine.add_request(prompt, params) for prompt, params in requests]
    tokens: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    while engine.has_work():
        for event in engine.step():
            tokens[event.seq_id].append(event.token_id)
    return [tokens[seq_id] for seq_id in ids]


def test_32_concurrent_requests_each_get_what_they_get_alone(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    requests = varied_requests(32, checkpoint.config["vocab_size"], seed=5)
    # 2 sequences of the full context: 16 blocks for 32 requests of up to 5 blocks each.
    engine = create_local_engine(
        checkpoint.path, device="cpu", dtype="float32", num_slots=2, max_context=MAX_CONTEXT
    )
    decoding_at_once = []
    step = engine.step

    def counting_step():
        decoding_at_once.append(len(engine.scheduler.decoding))
        return step()

    engine.step = counting_step
    assert run_all(engine, requests) == alone(checkpoint.path, requests)
    stats = engine.cache_stats()
    assert stats.blocks_free == stats.blocks_total == 2 * MAX_CONTEXT // BLOCK_SIZE
    assert max(decoding_at_once) > 2  # more sequences ran at once than the two "slots"
    assert stats.prefix_hits > 0  # the shared 20-token start (its first block)


def test_a_repeated_prefix_is_served_from_the_cache(checkpoint_factory):
    checkpoint = checkpoint_factory("qwen2.5-tied")
    engine = create_local_engine(
        checkpoint.path, device="cpu", dtype="float32", num_slots=2, max_context=MAX_CONTEXT
    )
    generator = torch.Generator().manual_seed(8)
    system = torch.randint(0, checkpoint.config["vocab_size"], (40,), generator=generator).tolist()
    question = torch.randint(0, checkpoint.config["vocab_size"], (7,), generator=generator).tolist()
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    first = [event.token_id for event in engine.generate(system + question, params)]
    assert engine.cache_stats().prefix_hits == 0
    misses = engine.cache_stats().prefix_misses
    again = [event.token_id for event in engine.generate(system + question, params)]
    assert again == first
    assert engine.cache_stats().prefix_hits == 2  # 47 tokens: both full blocks of the 40 shared
    assert engine.cache_stats().prefix_misses == misses
    # A prompt of exactly two blocks, both cached: its last token is still computed, for logits.
    exact = system[:32]
    reference = alone(checkpoint.path, [(exact, params), (system + question[:3], params)])
    assert [event.token_id for event in engine.generate(exact, params)] == reference[0]
    assert engine.cache_stats().prefix_hits == 3
    # Another question after the same system prompt: the two blocks shared, the output its own.
    assert [event.token_id for event in engine.generate(system + question[:3], params)] == reference[1]
    assert engine.cache_stats().prefix_hits == 5
    stats = engine.cache_stats()
    assert stats.blocks_free == stats.blocks_total


def test_an_aborted_request_gives_its_blocks_back(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    engine = create_local_engine(
        checkpoint.path, device="cpu", dtype="float32", num_slots=2, max_context=MAX_CONTEXT
    )
    total = engine.cache_stats().blocks_total
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    long = engine.add_request(list(range(1, 38)), params)  # 37 tokens: 3 blocks
    short = engine.add_request([5, 6, 7], params)
    for _ in range(6):
        engine.step()
    held = total - engine.cache_stats().blocks_free
    assert held == 4  # 3 + 1: blocks as the sequences need them, not a context each
    engine.abort(long)
    assert engine.cache_stats().blocks_free == total - 1  # at once, not when the step ends
    # A client that stops reading (the generator closed) frees its blocks too.
    stream = engine.generate([9, 9, 9], params)
    next(stream)
    stream.close()
    engine.abort(short)
    assert engine.cache_stats().blocks_free == total and not engine.has_work()


def test_more_requests_than_blocks_wait_and_all_finish(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    requests = varied_requests(10, checkpoint.config["vocab_size"], seed=9)
    requests = [
        (prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)) for prompt, _ in requests
    ]
    # one sequence of 64 tokens: 4 blocks, for ten requests that end up needing 3 to 6 each
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", num_slots=1, max_context=64)
    requests = [(prompt[:20], params) for prompt, params in requests]
    expected = [[event.token_id for event in engine.generate(prompt, params)] for prompt, params in requests]
    assert run_all(engine, requests) == expected
    stats = engine.cache_stats()
    assert stats.blocks_free == stats.blocks_total == 4
