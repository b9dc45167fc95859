"""Per-hop overhead of a pipeline decode step on loopback (CPU, gloo).

Runs the demo model as 1, 2, 3 and 4 pipeline stages (rank 0 here, the others as runner
processes on this machine, one thread each) and times greedy decoding. The stages together do the same arithmetic whatever the
split, so the extra time per token over one stage, divided by the number of hops a token makes
(N stages: N-1 hidden-state sends plus the token back to rank 0), is the cost of one hop.

    python tools/measure_pipeline_hops.py [--tokens 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import split_evenly
from tandem.protocol.runner import RunnerSpec
from tandem.runner.assemble import start_local_instance
from tandem.store.resolve import resolve_model_dir


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
    specs = [
        replace(base, rank=rank, layer_start=layers.start, layer_end=layers.end)
        for rank, layers in enumerate(ranges)
    ]
    with tempfile.TemporaryDirectory() as work:
        rank, others = start_local_instance(specs, Path(work) / "ranks.log")
        assert rank.engine is not None
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        samples = []
        for _ in range(3):
            times = [time.perf_counter() for _ in rank.engine.generate([1, 2, 3], params)]
            samples.append((times[-1] - times[1]) / (len(times) - 2))  # decode steps after the first token
        rank.close()
        for process in others:
            process.wait(timeout=30)
        if stages > 1:
            torch.distributed.destroy_process_group()
    return statistics.median(samples)


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
