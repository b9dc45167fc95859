"""Runner processes whose stages are tensor-parallel groups, over gloo on loopback (and, given two
GPUs, over NCCL and symmetric memory): the same greedy tokens as one process, and each rank
holding only its share of the stage."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import TEST_DEVICE
from runner_processes import generate_all, start_instance, stop
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Ready
from tandem.runner.assemble import create_local_engine
from tandem.settings import EngineOptions

PROMPTS = {"a": [3, 1, 4, 1, 5, 9, 2, 6], "b": [2, 7, 1, 8], "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]}


# stage sizes; whether to run greedy decode steps ahead; prompt tokens per step (40: prompts queued together share a
# step, padded to the longest)
@pytest.mark.parametrize(
    ("family", "stage_sizes", "run_ahead", "max_prefill_tokens"),
    [
        ("qwen2.5-tied", (3,), False, 5),  # one stage over 3 ranks; 2 KV heads do not divide 3 ranks
        ("qwen2.5-tied", (3,), True, 5),  # the same, every rank running greedy decode steps ahead
        ("qwen3-qknorm", (2, 2), False, 5),  # TP=2 × PP=2: 4 processes
        ("qwen3-qknorm", (2, 2), False, 40),  # the same, with padded prefill steps
        ("llama-mha-tied", (1, 2), False, 5),  # one rank, then a group that splits the tied head
    ],
)
def test_tensor_parallel_instance_tokens_equal_single_process(
    checkpoint_factory, family, stage_sizes, run_ahead, max_prefill_tokens
):
    checkpoint = checkpoint_factory(family)
    num_layers = checkpoint.config["num_hidden_layers"]
    # Frequent keep-alives: while the driver idles between rounds, many pass through every rank.
    runners = start_instance(
        checkpoint.path,
        num_layers,
        stage_sizes,
        keep_alive_seconds=0.02,
        options=EngineOptions(run_ahead=run_ahead),
        max_prefill_tokens=max_prefill_tokens,
    )
    try:
        ready = [runner.next_event() for runner in runners]
        assert all(isinstance(event, Ready) for event in ready), ready
        assert [(event.stage, event.tp_rank) for event in ready] == [
            (stage, tp_rank) for stage, size in enumerate(stage_sizes) for tp_rank in range(size)
        ]
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        expected = {rid: [e.token_id for e in engine.generate(ids, params)] for rid, ids in PROMPTS.items()}
        assert generate_all(runners[0], PROMPTS, params) == expected
        time.sleep(0.5)
        # A second round after an idle spell: freed slots, and every rank still in step.
        assert generate_all(runners[0], {"d": PROMPTS["c"]}, params) == {"d": expected["c"]}
    finally:
        stop(runners)
    for runner in runners:
        assert runner.process.returncode == 0, (
            f"rank {runner.spec.rank} exited with {runner.process.returncode}"
        )


@pytest.mark.skipif(
    TEST_DEVICE != "cuda" or torch.cuda.device_count() < 2, reason="needs two GPUs (TANDEM_TEST_DEVICE=cuda)"
)
@pytest.mark.parametrize(("stage_sizes", "run_ahead"), [((2,), False), ((2,), True), ((1, 1), False)])
def test_two_gpus_decode_the_tokens_of_one(checkpoint_factory, stage_sizes, run_ahead):
    """On two GPUs of one host (float32, CUDA graphs on both): one stage's group of both sums with
    the fused symmetric-memory all-reduce; two stages pass headers over gloo and hidden states
    over NCCL. Either way, the tokens of one GPU."""
    checkpoint = checkpoint_factory("llama-gqa")
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_instance(
        checkpoint.path,
        num_layers,
        stage_sizes,
        options=EngineOptions(run_ahead=run_ahead),
        devices=["cuda:0", "cuda:1"],
    )
    try:
        ready = [runner.next_event(timeout=180) for runner in runners]
        fused = "symmetric memory, fused with the norms" if stage_sizes == (2,) else None
        assert [event.report.all_reduce for event in ready] == [fused] * 2, ready
        engine = create_local_engine(checkpoint.path, device="cuda:0", dtype="float32")
        params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        expected = {name: [e.token_id for e in engine.generate(ids, params)] for name, ids in PROMPTS.items()}
        assert generate_all(runners[0], PROMPTS, params) == expected
    finally:
        stop(runners)
