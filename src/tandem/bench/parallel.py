"""One benchmark plan on several GPUs, run under torchrun: `python -m torch.distributed.run
--nproc_per_node N -m tandem.bench.parallel --plan tpN|ppN ...` (the `tandem bench --plans`
launcher does this). Rank 0 writes the plan's measurements as JSON.

- `tpN`: every rank holds a tensor-parallel shard of the whole model and runs the same engine in
  lockstep (greedy, so every rank picks the same tokens); all-reduces go through symmetric
  memory where available (else NCCL), inside the decode CUDA graph.
- `ppN`: rank r holds the r-th of N pipeline stages; rank 0 drives the engine and the stages pass
  hidden states as the cluster's runners do (`runner/pipeline.py`): headers over gloo, hidden
  states over NCCL.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from tandem import settings
from tandem.bench.measure import (
    aggregate_throughput,
    context_for,
    copy_bandwidth,
    engine_for,
    prompt_of,
    time_generation,
)
from tandem.bench.shapes import named_shape
from tandem.engine.engine import LLMEngine
from tandem.engine.model_runner import ModelRunner
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.model.config import ModelConfig
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import StageSpec, split_evenly


def randomize(model: CausalLM, device: torch.device, dtype: torch.dtype, seed: int) -> CausalLM:
    """Materialize a meta-device model (or shard) on `device` with random weights, then fuse."""
    model = model.to(dtype).to_empty(device=device)  # in `dtype` from the start: no float32 copy
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.reset_buffers(device)
    model.fuse_projections()
    return model.eval()


def all_reduce_latency(all_reduce, hidden: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per decode-sized all-reduce (one token's hidden state), captured in a CUDA graph."""
    message = torch.ones(1, hidden, dtype=dtype, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            all_reduce(message.clone())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    repeats = 64
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            all_reduce(message)
    graph.replay()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / (10 * repeats)


def tensor_parallel_engine(
    config: ModelConfig, device: torch.device, dtype: torch.dtype, context: int, slots: int, report: dict
) -> LLMEngine:
    from tandem.engine.cuda.symmetric import SymmetricMemoryAllReduce, symmetric_memory_available
    from tandem.engine.parallel.apply import apply_tensor_parallel
    from tandem.engine.parallel.group import ProcessGroupAllReduce, TensorParallelGroup

    nccl = ProcessGroupAllReduce(None)
    fast = nccl
    if device.type == "cuda":
        report["all_reduce_seconds_nccl"] = all_reduce_latency(nccl, config.hidden_size, device, dtype)
    if device.type == "cuda" and symmetric_memory_available():
        fast = SymmetricMemoryAllReduce(dist.group.WORLD, device, dtype, width=config.hidden_size)
        report["all_reduce_seconds_symmetric"] = all_reduce_latency(fast, config.hidden_size, device, dtype)
        if fast.exchange is not None:  # the all-reduce with the residual add and norm it runs with
            residual = torch.ones(1, config.hidden_size, dtype=dtype, device=device)
            weight = torch.ones(config.hidden_size, dtype=dtype, device=device)
            report["all_reduce_seconds_fused"] = all_reduce_latency(
                lambda m: fast.add_rms_norm(m, residual, weight, 1e-5), config.hidden_size, device, dtype
            )
    # what the model sums with: e.g. "symmetric memory, fused with the norms", "torch.distributed over gloo"
    report["all_reduce"] = fast.name if fast is not nccl else f"{nccl.name} over {dist.get_backend()}"
    group = TensorParallelGroup.from_process_group(None, all_reduce=fast)
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    apply_tensor_parallel(model, group)
    model = randomize(model, device, dtype, seed=dist.get_rank())
    return engine_for(model, context, slots)


def pipeline_engine(
    config: ModelConfig, device: torch.device, dtype: torch.dtype, context: int, slots: int
) -> LLMEngine | None:
    """Rank 0's engine; other ranks serve their stage until rank 0 stops them, then return None."""
    from tandem.runner.pipeline import PipelineExecutor, serve_stage
    from tandem.runner.spec import InstanceLayout
    from tandem.runner.wire import pipeline_wire

    rank, world = dist.get_rank(), dist.get_world_size()
    wire = pipeline_wire(device)
    layers = split_evenly(config.num_layers, world)[rank]
    model = randomize(
        build_empty_model(config, StageSpec(layers, config.num_layers)), device, dtype, seed=rank
    )
    runner = ModelRunner(model, num_slots=slots, max_context=context)
    runner.warm_up()  # every stage at once; on the first request they would take turns
    layout = InstanceLayout((1,) * world)  # one rank a stage
    if rank > 0:
        serve_stage(runner, wire, layout, rank)
        return None
    return LLMEngine(
        PipelineExecutor(runner, wire, layout),
        tokenizer=None,
        eos_token_ids=frozenset(),
        max_context=context,
        num_slots=slots,
        max_prefill_tokens=context,
    )


def profile_steps(engine: LLMEngine, report: dict, vocab: int, prompt_length: int) -> None:
    """Where a plan's GPU time goes, in rank 0's log: the batch-1 decode graph's replay time
    (also in the report) and kernels; the same for the largest batch's graph, where requests ran
    together; and the kernels of one prefill of `prompt_length` tokens. Every rank of a group
    does the same work at the same point, so the collectives inside pair up."""
    from tandem.bench.profile import decode_graphs, kernel_table, replay_seconds

    graphs = decode_graphs(engine)
    if 1 not in graphs:
        print("profile: no decode graph here (graphs need CUDA and Triton)", flush=True)
        return
    report["graph_replay_seconds"] = replay_seconds(graphs[1])
    largest = max(graphs)
    sections = [(f"decode graph replay: {report['graph_replay_seconds'] * 1e3:.3f} ms", graphs[1].replay)]
    if largest > 1:
        seconds = replay_seconds(graphs[largest])
        sections.append(
            (f"decode graph of {largest} sequences, replay: {seconds * 1e3:.3f} ms", graphs[largest].replay)
        )
    prompt = prompt_of(prompt_length, vocab)
    first_token = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    sections.append(
        (f"prefill of {prompt_length} tokens", lambda: list(engine.generate(prompt, first_token)))
    )
    for title, work in sections:
        table = kernel_table(work, repeats=3)
        if dist.get_rank() == 0:
            print(f"{title}\n{table}", flush=True)


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
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the decode graph's replay and list the kernels of decode and prefill steps",
    )
    args = parser.parse_args()
    stacks_after = settings.stacks_after()
    if stacks_after:  # a stuck rank shows where it waits (Python stacks, every thread)
        faulthandler.dump_traceback_later(stacks_after, repeat=True, file=sys.stderr)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device, dtype = torch.device("cuda", local_rank), torch.bfloat16
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:  # CPU processes over gloo: the same code paths, for tests
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    config, _ = named_shape(args.shape)
    lengths = [int(n) for n in args.prompt_lengths.split(",")]
    context = context_for(lengths, args.decode_tokens)
    slots = max(1, args.concurrency)
    report: dict = {
        "plan": args.plan,
        "shape": args.shape,
        "gpus": dist.get_world_size(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "copy_bandwidth": copy_bandwidth(device),
    }
    if args.plan == "1":
        model = randomize(
            build_empty_model(config, StageSpec.whole(config.num_layers)), device, dtype, seed=0
        )
        engine = engine_for(model, context, slots)
    elif args.plan.startswith("tp"):
        engine = tensor_parallel_engine(config, device, dtype, context, slots, report)
    else:
        engine = pipeline_engine(config, device, dtype, context, slots)
    if engine is not None:
        timing = time_generation(engine, config.vocab_size, lengths, args.decode_tokens, device)
        report.update(asdict(timing))
        if args.concurrency > 1:
            report["concurrency"] = args.concurrency
            report["aggregate_tokens_per_second"] = aggregate_throughput(
                engine, config.vocab_size, args.concurrency, prompt_length=128, new_tokens=128
            )
        report["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        if args.profile:
            profile_steps(engine, report, config.vocab_size, max(lengths))
        if args.plan.startswith("pp"):
            engine.executor.shutdown()  # type: ignore[attr-defined]
    if dist.get_rank() == 0:
        args.json.write_text(json.dumps(report, indent=2))
    # Leave without tearing down: on H100s the process group's teardown after symmetric-memory
    # all-reduces was seen to hang for minutes once the report was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
