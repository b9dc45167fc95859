"""`tandem run MODEL`: launch the model on the cluster (or reuse a running instance) and chat."""

from __future__ import annotations

import argparse
import sys
import time

from tandem.cli.client import NodeClient, add_node_argument
from tandem.cli.sampling_args import add_sampling_arguments, sampling_params_from_args
from tandem.errors import TandemError
from tandem.protocol import codec

EXIT_WORDS = ("/bye", "/exit", "/quit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory, or 'demo'")
    add_node_argument(parser)
    parser.add_argument(
        "--context", type=int, help="tokens per sequence (default: the model's, at most 4096)"
    )
    parser.add_argument("--system", help="a system message for the conversation")
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="launch with the weights quantized at load: int8, or int4 in groups of 128",
    )
    add_sampling_arguments(parser)


def find_or_launch(client: NodeClient, model: str, context: int | None, quantize: str | None = None) -> str:
    for instance in client.request("GET", "/v1/instances"):
        held = (instance.get("placement") or {}).get("request", {}).get("quantize")
        if instance["model"] == model and instance["status"] == "ready" and held == quantize:
            return instance["instance_id"]
    print(f"launching {model} on the cluster...", file=sys.stderr)
    body = {"model": model, "context": context, "quantize": quantize}
    plan = client.request("POST", "/v1/placements", body)
    if not plan["feasible"]:
        raise TandemError(f"cannot place {model}: {plan['reason']}")
    print("\n".join(plan["explain"]), file=sys.stderr)
    instance = client.request("POST", "/v1/instances", {**body, "wait": True})
    if instance["status"] != "ready":
        raise TandemError(f"instance {instance['instance_id']} failed: {instance.get('error')}")
    return instance["instance_id"]


def reply(client: NodeClient, instance_id: str, messages: list[dict], params: dict) -> str:
    started = time.perf_counter()
    first = None
    tokens = 0
    text = []
    try:
        for event in client.stream(
            f"/v1/instances/{instance_id}/generate", {"messages": messages, "params": params}
        ):
            if event["type"] in ("rejected", "error"):
                raise TandemError(event.get("message", "the request failed"))
            if event["type"] != "token":
                continue
            first = first or time.perf_counter()
            tokens += 1
            text.append(event["text"])
            sys.stdout.write(event["text"])
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)  # leaving the stream aborts the request on the node
    ended = time.perf_counter()
    rate = (
        f"{(tokens - 1) / (ended - first):.1f} tokens/s" if first and tokens > 1 and ended > first else "n/a"
    )
    ttft = f"{(first - started) * 1000:.0f} ms" if first else "n/a"
    print(f"\n[{tokens} tokens | time to first token {ttft} | {rate}]", file=sys.stderr)
    return "".join(text)


def run(args: argparse.Namespace) -> int:
    client = NodeClient(args.node)
    params = codec.to_json(sampling_params_from_args(args))
    instance_id = find_or_launch(client, args.model, args.context, args.quantize)
    print(
        f"chatting with {args.model} (instance {instance_id}); {EXIT_WORDS[0]} or Ctrl-D to leave",
        file=sys.stderr,
    )
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in EXIT_WORDS:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": reply(client, instance_id, messages, params)})
