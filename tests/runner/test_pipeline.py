"""Runner processes forming a real pipeline over gloo on loopback: same tokens as one process."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runner_processes import generate_all, start_instance, stop
from tandem.model.output_constraint import OutputConstraint
from tandem.model.sampling_params import SamplingParams
from tandem.model.tokenizer import Tokenizer
from tandem.protocol.runner import (
    Abort,
    Accepted,
    Finished,
    Generate,
    GenerateRequest,
    Ready,
    Rejected,
    Token,
)
from tandem.runner.assemble import create_local_engine
from tandem.store.resolve import DEMO_MODEL_DIR


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
        assert all(isinstance(event, Ready) for event in ready), ready
        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        prompts = {
            "a": [3, 1, 4, 1, 5, 9, 2, 6],
            "b": [2, 7, 1, 8],
            "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89],
        }
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        expected = {rid: [e.token_id for e in engine.generate(ids, params)] for rid, ids in prompts.items()}
        tokens = generate_all(runners[0], prompts, params)  # concurrent requests share it
        assert tokens == expected
    finally:
        stop(runners)


def test_rejected_request_and_abort(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    runners = start_instance(checkpoint.path, checkpoint.config["num_hidden_layers"], (1, 1))
    try:
        assert all(isinstance(runner.next_event(), Ready) for runner in runners)
        runners[0].send(Generate("long", GenerateRequest(prompt_ids=tuple(range(200)))))
        event = runners[0].next_event()
        assert isinstance(event, Rejected) and "context" in event.message
        bad = '{"type": "generate", "request_id": "bad", "request": {"prompt_ids": [1], "params": {"top_p": 7}}}'
        runners[0].send_line(bad)
        event = runners[0].next_event()
        assert isinstance(event, Rejected) and event.request_id == "bad" and "top_p" in event.message
        runners[0].send_line(
            '{"type": "launch-missiles"}'
        )  # unknown: logged and ignored, the runner lives on
        params = SamplingParams(max_tokens=100, ignore_eos=True)
        runners[0].send(Generate("x", GenerateRequest(prompt_ids=(1, 2), params=params)))
        assert isinstance(runners[0].next_event(), Accepted)
        runners[0].send(Abort("x"))
        while isinstance(event := runners[0].next_event(), Token):
            pass
        assert event == Finished("x", "abort")
    finally:
        stop(runners)


def test_constrained_output_through_a_pipeline(tmp_path):
    """The last stage compiles and applies the grammar; rank 0 refuses one that does not compile
    before it reaches the ring, and the instance goes on."""
    schema = {
        "type": "object",
        "properties": {
            "verse": {"type": "string", "maxLength": 8},
            "act": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["verse", "act"],
        "additionalProperties": False,
    }
    runners = start_instance(DEMO_MODEL_DIR, 6, (1, 1))
    try:
        assert all(isinstance(runner.next_event(), Ready) for runner in runners)
        broken = SamplingParams(
            constraint=OutputConstraint.json_schema({"type": "integer", "minimum": 5, "maximum": 1})
        )
        runners[0].send(Generate("broken", GenerateRequest(prompt_ids=(1, 2), params=broken)))
        event = runners[0].next_event()
        assert isinstance(event, Rejected) and "minimum greater than maximum" in event.message
        tokenizer = Tokenizer(DEMO_MODEL_DIR)
        prompt = tokenizer.encode("Speak, herald:")
        shaped = SamplingParams(max_tokens=100, seed=2, constraint=OutputConstraint.json_schema(schema))
        plain = SamplingParams(max_tokens=10, temperature=0.0)
        prompts = {"first": prompt, "second": tokenizer.encode("Hark, who goes there?")}
        for ids in generate_all(runners[0], prompts, shaped).values():  # both in one batch
            jsonschema.validate(json.loads(tokenizer.decode(ids)), schema)
        engine = create_local_engine(DEMO_MODEL_DIR, device="cpu", dtype="float32", max_context=128)
        expected = [e.token_id for e in engine.generate(prompt, plain)]
        assert generate_all(runners[0], {"plain": prompt}, plain)["plain"] == expected
    finally:
        stop(runners)
