"""`tandem bench`: time to first token, prefill and decode speed of a model shape on this machine,
beside the measured floors (copy bandwidth, matrix throughput) and, with --baseline, the speed of
`transformers` on the same weights in the same run. With --serve URL: load against a live cluster
over its OpenAI API (`tandem.bench.serve`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tandem.bench.image_shapes import IMAGE_SHAPES
    from tandem.bench.shapes import CPU_CHOICES, NAMED_SHAPES

    parser.add_argument(
        "--shape",
        help="model shape with random weights (default: llama3-8b on a GPU; on a CPU the largest of "
        f"{', '.join(CPU_CHOICES)} that fits the free RAM): {', '.join(sorted(NAMED_SHAPES))}; "
        "NAME:N keeps the first N layers (deepseek-v3:4); text-to-image: "
        f"{', '.join(sorted(IMAGE_SHAPES))}",
    )
    parser.add_argument("--size", type=int, help="flux-*: image side in pixels (default 1024)")
    parser.add_argument(
        "--steps", type=int, help="flux-*: denoising steps (default 28 for dev, 4 for schnell)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "mlx"],
        help="mlx: the MLX engine (--device auto, cpu or metal) beside the PyTorch engine on the CPU",
    )
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument(
        "--prompt-lengths",
        help="prompt lengths for time to first token (default 128,2048,8192 on a GPU, 128,512 on a CPU)",
    )
    parser.add_argument(
        "--decode-tokens", type=int, help="tokens per decode run (default 256 on a GPU, 64 on a CPU)"
    )
    parser.add_argument("--baseline", action="store_true", help="also run transformers generate (eager)")
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4", "fp8"),
        help="run the engine on the weights quantized: int8, int4 (as --quantize loads them) or fp8 "
        "(FP8 blocks of 128, as DeepSeek-V3 ships them); the baseline stays 16-bit",
    )
    parser.add_argument("--json", type=Path, help="write the full report as JSON here")
    parser.add_argument(
        "--concurrency",
        help="with --serve: requests in flight, one run each (default 1,8,32,64); "
        "with --plans: also measure this many requests in flight together",
    )
    parser.add_argument(
        "--serve",
        metavar="URL",
        help="load a live cluster over its OpenAI API instead (a node's URL, e.g. http://127.0.0.1:52525): "
        "random prompts, aggregate output tokens/s, time to first token and inter-token latency",
    )
    parser.add_argument(
        "--input-len", type=int, default=128, help="with --serve: prompt tokens (default 128)"
    )
    parser.add_argument(
        "--output-len", type=int, default=128, help="with --serve: output tokens (default 128)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="with --serve: requests per client at each concurrency (default 2)",
    )
    parser.add_argument("--model", help="with --serve: the model to ask (default: the first the node lists)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="with --plans: also time each plan's decode-graph replay alone and log its kernels",
    )
    parser.add_argument(
        "--plans",
        help="compare placements on this machine's GPUs instead, e.g. 1,tp2,tp4,pp2 "
        "(1 GPU, tensor parallel over N, pipeline over N); each runs as the cluster runs it, "
        "one runner process a rank",
    )


def concurrency_levels(text: str | None, default: str) -> tuple[int, ...]:
    from tandem.errors import InvalidRequestError

    try:
        levels = tuple(int(n) for n in (text or default).split(",") if n.strip())
    except ValueError:
        raise InvalidRequestError(f"--concurrency takes comma-separated integers, not {text!r}") from None
    if not levels or min(levels) < 0:
        raise InvalidRequestError(f"--concurrency takes integers of 0 or more, not {text!r}")
    return levels


def run_serve(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from tandem.bench.serve import ServeLoad, format_results, results_json, run_serve_bench, terminal_progress

    load = ServeLoad(
        url=args.serve,
        concurrency=concurrency_levels(args.concurrency, "1,8,32,64"),
        input_len=args.input_len,
        output_len=args.output_len,
        rounds=args.rounds,
        model=args.model,
    )
    model, results = asyncio.run(run_serve_bench(load, terminal_progress))
    print("\n".join(format_results(load, model, results)))
    if args.json:
        args.json.write_text(results_json(load, model, results))
    if all(r.failed == r.requests for r in results):
        print(f"tandem: error: every request failed: {results[0].first_error}", file=sys.stderr)
        return 1
    return 0


def memory_free(device) -> int:
    """Free bytes where the benchmark allocates: the GPU's, or the machine's available RAM."""
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def weight_bytes(quantize: str | None, baseline: bool, dtype_bytes: int) -> float:
    """Bytes a parameter takes at its largest in the run (the baseline holds the 16-bit weights)."""
    return dtype_bytes if quantize is None or baseline else {"int8": 1, "fp8": 1, "int4": 0.5}[quantize]


def progress(line: str) -> None:
    import sys

    print(f"tandem bench: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.serve:
        return run_serve(args)
    from tandem.bench.image_shapes import IMAGE_SHAPES

    if args.shape in IMAGE_SHAPES:
        from tandem.bench.images import run_image_bench_command

        return run_image_bench_command(args)
    import torch

    from tandem.bench import shapes
    from tandem.bench.measure import context_for
    from tandem.bench.report import amount, format_report, run_benchmark
    from tandem.engine.device import resolve_device, resolve_dtype
    from tandem.errors import InvalidRequestError

    on_cpu = args.plans is None and args.engine == "torch" and resolve_device(args.device).type == "cpu"
    prompt_lengths = args.prompt_lengths or (
        shapes.CPU_PROMPT_LENGTHS if on_cpu else shapes.GPU_PROMPT_LENGTHS
    )
    if args.decode_tokens is None:
        args.decode_tokens = shapes.CPU_DECODE_TOKENS if on_cpu else shapes.GPU_DECODE_TOKENS
    try:
        lengths = [int(n) for n in prompt_lengths.split(",") if n.strip()]
    except ValueError:
        raise InvalidRequestError(
            f"--prompt-lengths takes comma-separated integers, not {prompt_lengths!r}"
        ) from None
    if not lengths or min(lengths) < 1 or args.decode_tokens < 2:
        raise InvalidRequestError("prompt lengths must be positive and --decode-tokens at least 2")
    if args.plans or args.engine == "mlx":
        args.shape = args.shape or shapes.GPU_DEFAULT
    if args.plans:
        from tandem.bench.plans import compare_plans, parse_plans

        concurrency = concurrency_levels(args.concurrency, "0")
        if len(concurrency) != 1:
            raise InvalidRequestError("with --plans, --concurrency takes one number")

        # each plan's report is kept beside the JSON as soon as the plan ends
        results = args.json.parent / f"{args.json.stem}-plans" if args.json else None
        lines = compare_plans(
            args.shape,
            parse_plans(args.plans),
            lengths,
            args.decode_tokens,
            concurrency[0],
            results,
            profile=args.profile,
        )
        print("\n".join(lines))
        if args.json:
            args.json.write_text(lines[-1].removeprefix("JSON: "))
        return 0
    if args.engine == "mlx":
        from tandem.bench.mlx_bench import format_mlx_report, run_mlx_benchmark

        mlx_report = run_mlx_benchmark(args.shape, lengths, args.decode_tokens, args.device, args.dtype)
        print("\n".join(format_mlx_report(mlx_report)))
        if args.json:
            args.json.write_text(mlx_report.to_json())
        return 0
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    dtype_bytes = torch.finfo(dtype).bits // 8
    per_parameter = weight_bytes(args.quantize, args.baseline, dtype_bytes)
    context, free = context_for(lengths, args.decode_tokens), memory_free(device)
    shape = args.shape or shapes.default_shape(device.type, per_parameter, dtype_bytes, context, free)
    problem = shapes.fit_problem(shape, per_parameter, dtype_bytes, context, free, str(device))
    if problem is not None:  # checked before anything is allocated
        raise InvalidRequestError(problem)
    needed = shapes.shape_bytes(shape, per_parameter, dtype_bytes, context)
    progress(
        f"{shape}{'' if args.shape else ' (chosen to fit: --shape picks another)'} on {device}, "
        f"{amount(needed, 'B')} of {amount(free, 'B')} free; prompts of {', '.join(map(str, lengths))} "
        f"tokens, {args.decode_tokens} decoded"
    )
    report = run_benchmark(
        shape,
        device,
        dtype,
        lengths,
        args.decode_tokens,
        args.baseline,
        quantize=args.quantize,
        progress=progress,
    )
    print("\n".join(format_report(report)))
    if args.json:
        args.json.write_text(report.to_json())
    return 0
