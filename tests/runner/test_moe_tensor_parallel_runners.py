"""Runner processes whose stages are expert-parallel groups (gloo on loopback): the greedy
tokens of one process, and every rank holding only its share of its stage."""

from __future__ import annotations

import pytest

from runner_processes import generate_all, start_instance, stop
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Ready
from tandem.runner.assemble import create_local_engine
from tandem.settings import EngineOptions

PROMPTS = {"a": [3, 1, 4, 1, 5, 9, 2, 6], "b": [2, 7, 1, 8], "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]}


@pytest.mark.parametrize(
    ("family", "stage_sizes", "run_ahead", "max_prefill_tokens"),
    [
        ("deepseek-v3-qlora-groups", (3,), False, 5),  # 8 experts over 3 ranks: 3, 3, 2
        ("kimi-k2", (2,), True, 5),  # every rank running greedy decode steps ahead
        ("qwen3-moe-e6-top3", (2, 2), False, 40),  # EP=2 × PP=2, padded prefill steps
        ("mixtral-e5-top2", (1, 3), False, 5),  # one rank, then a group of three
    ],
)
def test_expert_parallel_instance_tokens_equal_single_process(
    moe_checkpoint_factory, family, stage_sizes, run_ahead, max_prefill_tokens
):
    checkpoint = moe_checkpoint_factory(family)
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_instance(
        checkpoint.path,
        num_layers,
        stage_sizes,
        keep_alive_seconds=0.05,
        options=EngineOptions(run_ahead=run_ahead),
        max_prefill_tokens=max_prefill_tokens,
    )
    try:
        ready = [runner.next_event(timeout=120) for runner in runners]
        assert all(isinstance(event, Ready) for event in ready), ready
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        expected = {rid: [e.token_id for e in engine.generate(ids, params)] for rid, ids in PROMPTS.items()}
        assert generate_all(runners[0], PROMPTS, params) == expected
        assert generate_all(runners[0], {"d": PROMPTS["c"]}, params) == {"d": expected["c"]}
    finally:
        stop(runners)
    for runner in runners:
        assert runner.process.returncode == 0, (
            f"rank {runner.spec.rank} exited with {runner.process.returncode}"
        )
