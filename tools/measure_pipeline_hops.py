"""Per-hop overhead of a pipeline decode step on loopback (CPU, gloo).

Runs the demo model as 1, 2, 3 and 4 pipeline stages (runner processes on this machine, one
thread each) and times greedy decoding. The stages together do the same arithmetic whatever the
split, so the extra time per token over one stage, divided by the number of hops a token makes
(N stages: N-1 hidden-state sends plus the token back to rank 0), is the cost of one hop.

    python tools/measure_pipeline_hops.py [--tokens 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from tandem.model.config import load_model_config
from tandem.model.stage import split_evenly
from tandem.runner.spec import RunnerSpec
from tandem.store.resolve import resolve_model_dir


def start(spec: RunnerSpec) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tandem.runner", spec.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read(process: subprocess.Popen) -> dict:
    return json.loads(process.stdout.readline())  # type: ignore[union-attr]


def seconds_per_token(model_dir: str, num_layers: int, stages: int, tokens: int) -> float:
    ranges = split_evenly(num_layers, stages)
    base = RunnerSpec(
        instance_id="hops",
        rank=0,
        world_size=stages,
        model_dir=model_dir,
        layer_start=0,
        layer_end=ranges[0].end,
        num_layers=num_layers,
        device="cpu",
        dtype="float32",
        max_context=1024,
        num_slots=1,
        max_prefill_tokens=512,
        threads=1,
    )
    processes = [start(base)]
    if stages > 1:
        port = read(processes[0])["port"]
        for rank in range(1, stages):
            processes.append(
                start(
                    replace(
                        base,
                        rank=rank,
                        layer_start=ranges[rank].start,
                        layer_end=ranges[rank].end,
                        master_port=port,
                    )
                )
            )
    try:
        for process in processes:
            assert read(process)["event"] == "ready"
        samples = []
        for trial in range(3):
            command = {
                "op": "generate",
                "request_id": str(trial),
                "prompt_ids": [1, 2, 3],
                "params": {"max_tokens": tokens, "temperature": 0, "ignore_eos": True},
            }
            processes[0].stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
            processes[0].stdin.flush()  # type: ignore[union-attr]
            times = []
            while True:
                event = read(processes[0])
                if event["event"] == "token":
                    times.append(time.perf_counter())
                    if "finish_reason" in event:
                        break
            samples.append((times[-1] - times[1]) / (len(times) - 2))  # decode steps after the first token
        return statistics.median(samples)
    finally:
        processes[0].stdin.write(json.dumps({"op": "shutdown"}) + "\n")  # type: ignore[union-attr]
        processes[0].stdin.flush()  # type: ignore[union-attr]
        for process in processes:
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    model_dir = str(resolve_model_dir("demo"))
    num_layers = load_model_config(model_dir).num_layers
    one = seconds_per_token(model_dir, num_layers, 1, args.tokens)
    print("stages  ms/token  extra ms  hops  ms/hop")
    print(f"{1:6d}  {one * 1e3:8.3f}")
    for stages in (2, 3, 4):
        seconds = seconds_per_token(model_dir, num_layers, stages, args.tokens)
        extra = seconds - one
        print(
            f"{stages:6d}  {seconds * 1e3:8.3f}  {extra * 1e3:8.3f}  {stages:4d}  {extra / stages * 1e3:6.3f}"
        )


if __name__ == "__main__":
    main()
