"""Runner processes forming a real pipeline over gloo on loopback: same tokens as one process."""

from __future__ import annotations

import pytest

from runner_processes import generate_all, start_instance, stop
from tandem.engine.local import create_local_engine
from tandem.model.sampling_params import SamplingParams


@pytest.mark.parametrize(
    ("world_size", "max_prefill_tokens"),
    [
        (1, 5),
        (3, 5),  # prompts in chunks of 5, one at a time
        (3, 40),  # prompts queued together share a step, padded to the longest, down the ring
    ],
)
def test_pipeline_tokens_equal_single_process(checkpoint_factory, world_size, max_prefill_tokens):
    checkpoint = checkpoint_factory("llama-gqa")
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_instance(
        checkpoint.path, num_layers, (1,) * world_size, max_prefill_tokens=max_prefill_tokens
    )
    try:
        ready = [runner.next_event() for runner in runners]
        assert all(event["event"] == "ready" for event in ready), ready
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        prompts = {
            "a": [3, 1, 4, 1, 5, 9, 2, 6],
            "b": [2, 7, 1, 8],
            "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89],
        }
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        expected = {rid: [e.token_id for e in engine.generate(ids, params)] for rid, ids in prompts.items()}
        tokens = generate_all(runners[0], prompts, params.to_dict())  # concurrent requests share it
        assert tokens == expected
    finally:
        stop(runners)


def test_rejected_request_and_abort(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    runners = start_instance(checkpoint.path, checkpoint.config["num_hidden_layers"], (1, 1))
    try:
        assert [runner.next_event()["event"] for runner in runners] == ["ready", "ready"]
        runners[0].send(
            {"op": "generate", "request_id": "long", "prompt_ids": list(range(200)), "params": {}}
        )
        event = runners[0].next_event()
        assert event["event"] == "rejected" and "context" in event["message"]
        runners[0].send({"op": "generate", "request_id": "bad", "prompt_ids": [1], "params": {"top_p": 7}})
        assert runners[0].next_event()["event"] == "rejected"
        runners[0].send(
            {
                "op": "generate",
                "request_id": "x",
                "prompt_ids": [1, 2],
                "params": {"max_tokens": 100, "ignore_eos": True},
            }
        )
        assert runners[0].next_event()["event"] == "accepted"
        runners[0].send({"op": "abort", "request_id": "x"})
        while (event := runners[0].next_event())["event"] == "token":
            pass
        assert event == {"event": "finished", "request_id": "x", "finish_reason": "abort"}
    finally:
        stop(runners)
