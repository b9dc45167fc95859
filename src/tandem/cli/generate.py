"""`tandem generate`: stream a completion from a model loaded in this process."""

from __future__ import annotations

import argparse
import sys
import time

from tandem.cli.sampling_args import add_sampling_arguments, sampling_params_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a catalog id, a Hugging Face repo id (downloaded if need be), a checkpoint directory, or 'demo'",
    )
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--system", help="system message (with --chat)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bfloat16 on CUDA; on CPUs the checkpoint's 16-bit dtype, float32 for 32-bit "
        "checkpoints), float32, bfloat16 or float16",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="quantize the weights as they load: int8 (a scale per output channel) or int4 "
        "(groups of 128); checkpoints stored quantized (FP8, AWQ, GPTQ, compressed-tensors) "
        "load as they are without it (docs/quantization.md)",
    )
    parser.add_argument(
        "--context", type=int, help="context size in tokens (default: the model's, at most 4096)"
    )
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tandem.errors import InvalidRequestError
    from tandem.runner.assemble import create_local_engine
    from tandem.store.terminal import fetch_with_progress

    params = sampling_params_from_args(args)
    model_dir = fetch_with_progress(args.model)
    engine = create_local_engine(
        model_dir,
        device=args.device,
        dtype=args.dtype,
        max_context=args.context,
        num_slots=1,
        quantize=args.quantize,
    )
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise InvalidRequestError(f"{model_dir} has no tokenizer.json, so it cannot take a text prompt")
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        prompt_ids = tokenizer.encode_chat(messages)
    else:
        prompt_ids = tokenizer.encode(args.prompt)

    started = time.perf_counter()
    first_token_at = None
    generated = 0
    finish = None
    for event in engine.generate(prompt_ids, params):
        if first_token_at is None:
            first_token_at = time.perf_counter()
        generated += 1
        finish = event.finish_reason
        sys.stdout.write(event.text)
        sys.stdout.flush()
    ended = time.perf_counter()
    sys.stdout.write("\n")
    print(
        format_stats(len(prompt_ids), generated, started, first_token_at or ended, ended, finish),
        file=sys.stderr,
    )
    return 0


def format_stats(
    prompt_tokens: int, generated: int, started: float, first_token_at: float, ended: float, finish: object
) -> str:
    ttft_ms = (first_token_at - started) * 1000
    decode_tokens = generated - 1
    decode_seconds = ended - first_token_at
    rate = (
        f"{decode_tokens / decode_seconds:.1f} tokens/s"
        if decode_tokens > 0 and decode_seconds > 0
        else "n/a"
    )
    return (
        f"[prompt {prompt_tokens} tokens | time to first token {ttft_ms:.0f} ms | "
        f"decode {rate} over {decode_tokens} tokens | finish: {finish}]"
    )
