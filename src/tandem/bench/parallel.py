"""One benchmark plan on this machine's GPUs, through the cluster's own runners:
`python -m tandem.bench.parallel --plan 1|tpN|ppN --shape S --json OUT` (the `tandem bench
--plans` launcher runs it once per plan). Rank 0 runs here: it builds itself with `start_rank`,
as every cluster runner does, and starts ranks 1 … N-1 as real runner processes
(`python -m tandem.runner SPEC`), so the executors timed are the ones the cluster serves:

- `tpN`: one stage over a tensor-parallel group of N GPUs: rank 0 leads (it schedules and
  samples), the others follow its steps; all-reduces through symmetric memory where the GPUs
  reach each other (else NCCL), inside the decode CUDA graph.
- `ppN`: N pipeline stages of one GPU each: rank 0 drives, hidden states pass stage to stage
  over NCCL, headers over gloo.
Rank 0 writes the plan's measurements as JSON.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from tandem import settings
from tandem.bench.measure import aggregate_throughput, context_for, copy_bandwidth, prompt_of, time_generation
from tandem.bench.shapes import named_shape, shape_dir
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import split_evenly
from tandem.protocol.runner import RunnerSpec
from tandem.runner.assemble import start_local_instance


def plan_specs(plan: str, model_dir: Path, context: int, slots: int) -> list[RunnerSpec]:
    """Every rank's spec of a plan, rank 0 first (random weights, seeded by rank)."""
    config, _ = named_shape(model_dir.name)
    cuda = torch.cuda.is_available()
    gpus = 1 if plan == "1" else int(plan[2:])
    pipeline = plan.startswith("pp")
    stages = (
        split_evenly(config.num_layers, gpus) if pipeline else [split_evenly(config.num_layers, 1)[0]] * gpus
    )
    base = RunnerSpec(
        instance_id=f"bench-{plan}",
        rank=0,
        world_size=gpus,
        model_dir=str(model_dir),
        layer_start=0,
        layer_end=config.num_layers,
        num_layers=config.num_layers,
        device="cuda:0" if cuda else "cpu",
        dtype="bfloat16" if cuda else "float32",
        max_context=context,
        num_slots=slots,
        max_prefill_tokens=DEFAULT_MAX_PREFILL_TOKENS,  # what a served instance takes
        backend="nccl" if cuda else "gloo",
        threads=None if cuda else 1,
        stage_sizes=(1,) * gpus if pipeline else (gpus,),
        options=settings.engine_options(),
        random_weights_seed=0,
    )
    return [
        replace(
            base,
            rank=rank,
            device=f"cuda:{rank}" if cuda else "cpu",
            layer_start=stages[rank].start,
            layer_end=stages[rank].end,
        )
        for rank in range(gpus)
    ]


def profile_engine(engine: LLMEngine, vocab: int, prompt_length: int) -> list[str]:
    """Kernels of a decode run and of one prefill, by GPU time; every rank of a group runs the
    same steps (the followers follow rank 0's), so the collectives inside pair up."""
    from tandem.bench.profile import kernel_table

    decode = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    first_token = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    sections = [
        ("decode of 32 tokens", lambda: list(engine.generate(prompt_of(128, vocab), decode))),
        (
            f"prefill of {prompt_length} tokens",
            lambda: list(engine.generate(prompt_of(prompt_length, vocab), first_token)),
        ),
    ]
    return [f"{title}\n{kernel_table(work, repeats=3)}" for title, work in sections]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--prompt-lengths", default="128,2048")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="also measure N requests in flight together"
    )
    parser.add_argument("--profile", action="store_true", help="also list the kernels of decode and prefill")
    args = parser.parse_args()
    stacks_after = settings.stacks_after()
    if stacks_after:  # a stuck rank shows where it waits (Python stacks, every thread)
        faulthandler.dump_traceback_later(stacks_after, repeat=True, file=sys.stderr)
    config, _ = named_shape(args.shape)
    lengths = [int(n) for n in args.prompt_lengths.split(",")]
    specs = plan_specs(
        args.plan, shape_dir(args.shape), context_for(lengths, args.decode_tokens), max(1, args.concurrency)
    )
    device = torch.device(specs[0].device)
    rank, others = start_local_instance(specs, args.json.with_suffix(".ranks.log"))
    engine = rank.engine
    assert engine is not None
    report: dict = {
        "plan": args.plan,
        "shape": args.shape,
        "gpus": len(specs),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "copy_bandwidth": copy_bandwidth(device),
        "all_reduce": rank.report.all_reduce,
        "all_reduce_seconds": rank.report.all_reduce_seconds,
        "executor": type(engine.executor).__name__,
    }
    report.update(asdict(time_generation(engine, config.vocab_size, lengths, args.decode_tokens, device)))
    if args.concurrency > 1:
        report["concurrency"] = args.concurrency
        report["aggregate_tokens_per_second"] = aggregate_throughput(
            engine, config.vocab_size, args.concurrency, prompt_length=128, new_tokens=128
        )
    if device.type == "cuda":
        report["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    if args.profile:
        tables = profile_engine(engine, config.vocab_size, max(lengths)) if device.type == "cuda" else []
        print("\n".join(tables) or "profile: kernel tables need a GPU; this plan ran on CPUs", flush=True)
    args.json.write_text(json.dumps(report, indent=2))
    rank.close()  # the other ranks' serve loops return and their processes exit
    for process in others:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    # Leave without tearing down: on H100s the process group's teardown after symmetric-memory
    # all-reduces was seen to hang for minutes once the report was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
