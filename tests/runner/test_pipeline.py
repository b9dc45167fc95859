"""Runner processes forming a real pipeline over gloo on loopback: same tokens as one process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from tandem.engine.local import create_local_engine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.stage import split_evenly
from tandem.runner.spec import RunnerSpec


class RunnerProcess:
    def __init__(self, spec: RunnerSpec) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tandem.runner", spec.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def next_event(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, f"runner exited with {self.process.wait()}"
        assert time.monotonic() < deadline
        return json.loads(line)

    def send(self, command: dict) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]


def start_pipeline(model_dir, num_layers: int, world_size: int) -> list[RunnerProcess]:
    ranges = split_evenly(num_layers, world_size)
    base = RunnerSpec(
        instance_id="test",
        rank=0,
        world_size=world_size,
        model_dir=str(model_dir),
        layer_start=ranges[0].start,
        layer_end=ranges[0].end,
        num_layers=num_layers,
        device="cpu",
        dtype="float32",
        max_context=128,
        num_slots=4,
        max_prefill_tokens=5,
        threads=1,
    )
    driver = RunnerProcess(base)
    runners = [driver]
    if world_size > 1:
        listening = driver.next_event()
        assert listening["event"] == "listening"
        for rank in range(1, world_size):
            spec = replace(
                base,
                rank=rank,
                layer_start=ranges[rank].start,
                layer_end=ranges[rank].end,
                master_port=listening["port"],
            )
            runners.append(RunnerProcess(spec))
    return runners


def stop(runners: list[RunnerProcess]) -> None:
    runners[0].send({"op": "shutdown"})
    for runner in runners:
        try:
            runner.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.process.kill()


@pytest.mark.parametrize("world_size", [1, 3])
def test_pipeline_tokens_equal_single_process(checkpoint_factory, world_size):
    checkpoint = checkpoint_factory("llama-gqa")
    num_layers = checkpoint.config["num_hidden_layers"]
    runners = start_pipeline(checkpoint.path, num_layers, world_size)
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
        for rid, ids in prompts.items():  # concurrent requests share the pipeline
            runners[0].send(
                {"op": "generate", "request_id": rid, "prompt_ids": ids, "params": params.to_dict()}
            )
        tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
        finished = set()
        while finished != set(prompts):
            event = runners[0].next_event()
            if event["event"] == "token":
                tokens[event["request_id"]].append(event["token_id"])
                if "finish_reason" in event:
                    finished.add(event["request_id"])
            else:
                assert event["event"] == "accepted", event
        assert tokens == expected
    finally:
        stop(runners)


def test_rejected_request_and_abort(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    runners = start_pipeline(checkpoint.path, checkpoint.config["num_hidden_layers"], 2)
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
