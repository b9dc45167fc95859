"""Where a round of requests spends its time on a GPU: every engine step's size and interval,
the GPU's busy share, and the kernels and host operations by total time. For tuning; `tandem
bench` is the report.

    python tools/profile_step.py --shape llama3-8b --requests 64          # the served load
    python tools/profile_step.py --shape llama3-8b --quantize fp8 --requests 1
    python tools/profile_step.py --shape qwen3-30b-a3b --requests 1

The engine is the one a cluster runner of one rank serves (`start_rank`), with random weights.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tandem.bench.measure import fresh_prompt
from tandem.bench.shapes import shape_dir
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import local_spec, start_rank


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument(
        "--prefill-tokens",
        type=int,
        default=None,
        help="most prompt tokens a step takes (default: a served instance's)",
    )
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    context = args.prompt + args.new + 16
    started = time.perf_counter()
    spec = local_spec(
        shape_dir(args.shape),
        device=args.device,
        dtype="bfloat16" if args.device.startswith("cuda") else "float32",
        max_context=context,
        num_slots=args.requests,
        max_prefill_tokens=args.prefill_tokens or DEFAULT_MAX_PREFILL_TOKENS,
        random_weights_seed=0,
        quantize=args.quantize,
    )
    engine = start_rank(spec).engine
    assert engine is not None
    print(
        f"loaded {args.shape} {args.quantize or 'bfloat16'} in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    vocab = engine.executor.runner.config.vocab_size  # type: ignore[attr-defined]
    params = SamplingParams(max_tokens=args.new, temperature=0.0, ignore_eos=True)
    steps: list[tuple[float, int, int]] = []  # (time, sequences, tokens) of each planned step
    next_plan = engine.scheduler.next_plan

    def recorded_plan():
        plan = next_plan()
        if plan is not None:
            steps.append((time.perf_counter(), len(plan.chunks), sum(len(c.token_ids) for c in plan.chunks)))
        return plan

    engine.scheduler.next_plan = recorded_plan  # type: ignore[method-assign]

    def serve_round() -> tuple[float, int]:
        for index in range(args.requests):
            engine.add_request(fresh_prompt(args.prompt + index % 7, vocab), params)
        begun, generated = time.perf_counter(), 0
        while engine.has_work():
            generated += len(engine.step())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - begun, generated

    first_token = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    def one_prompt() -> None:
        list(engine.generate(fresh_prompt(args.prompt, vocab), first_token))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    one_prompt()
    times = []
    for _ in range(5):
        begun = time.perf_counter()
        one_prompt()
        times.append(time.perf_counter() - begun)
    print(
        f"time to first token, {args.prompt}-token prompt: {statistics.median(times) * 1e3:.2f} ms (median of 5)"
    )
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        one_prompt()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70
        )
    )
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=70))
    serve_round()  # compiles, tunes, captures
    steps.clear()
    seconds, generated = serve_round()
    print(
        f"round: {generated} tokens in {seconds * 1e3:.1f} ms = {generated / seconds:.1f} tokens/s, {len(steps)} steps"
    )
    intervals = [(b[0] - a[0], a[1], a[2]) for a, b in itertools.pairwise(steps)]
    prefill = [i for i in intervals if i[2] > i[1]]
    decode = [i for i in intervals if i[2] == i[1]]
    for label, group in (("steps with prompt tokens", prefill), ("decode steps", decode)):
        if group:
            print(
                f"  {label}: {len(group)}, interval median {statistics.median(g[0] for g in group) * 1e3:.2f} ms, "
                f"total {sum(g[0] for g in group) * 1e3:.1f} ms, sequences median "
                f"{statistics.median(g[1] for g in group):.0f}, tokens median {statistics.median(g[2] for g in group):.0f}"
            )
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        seconds, _ = serve_round()
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    print(
        f"profiled round: {seconds * 1e3:.1f} ms wall, GPU kernels {gpu * 1e3:.1f} ms ({gpu / seconds * 100:.0f}% busy)"
    )
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
