"""`tandem place`: plan where a model's layers go, on the live cluster or a topology file.

`--dry-run` asks the node for the plan a launch would get now; `--topology FILE` plans a
hypothetical cluster written down as JSON (always a dry run: `--dry-run` beside it changes
nothing). Neither loads a model or imports torch: they print the plan or, with exit code 1, why no
plan fits. Without either, the model is launched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tandem.cli.client import NodeClient, add_node_argument
from tandem.cluster.image_timing import with_image_timing
from tandem.cluster.placement import Infeasible, PlacementRequest, place
from tandem.cluster.topology import Topology
from tandem.errors import TandemError
from tandem.model.config import DEFAULT_MAX_CONTEXT, DTYPE_BYTES, context_size, read_config_json
from tandem.model.image_config import (
    ImageModelConfig,
    is_image_model_dir,
    load_image_model_config,
    loaded_image_quantize,
)
from tandem.model.image_shapes import image_model_shape
from tandem.model.quantization import QUANTIZE_CHOICES
from tandem.model.shapes import ModelShape, load_shape, shape_from_hf_config

DTYPES = ("auto", *DTYPE_BYTES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a catalog id, a Hugging Face repo id, a checkpoint directory, its config.json file, or 'demo'",
    )
    parser.add_argument(
        "--topology",
        metavar="FILE",
        help="plan for a cluster written as a JSON file (docs/placement.md); launches nothing",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan for the live cluster; launch nothing"
    )
    add_node_argument(parser)
    parser.add_argument(
        "--context",
        type=int,
        help=f"tokens per sequence (default: the model's, at most {DEFAULT_MAX_CONTEXT})",
    )
    parser.add_argument(
        "--devices",
        help="live cluster: force these stages in order, NODE/cpu,NODE/cuda:0 (NODE: a node id, its host name or an id prefix); "
        "'+' joins a stage's tensor-parallel group: A/cuda:0+A/cuda:1,B/cpu",
    )
    parser.add_argument(
        "--sequences", type=int, default=8, help="sequences to reserve KV cache for (default 8)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto (default: bfloat16 on CUDA; on CPUs the checkpoint's 16-bit dtype, float32 for "
        "32-bit checkpoints), or one dtype everywhere",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="plan (and launch) with the weights quantized at load: int8, or int4 in groups of 128 "
        "(docs/quantization.md); a checkpoint stored quantized is counted in its own format",
    )
    parser.add_argument(
        "--weight-bytes",
        type=float,
        metavar="N",
        help="count every weight at N bytes instead (default: the dtype's, or the quantized format's)",
    )


def run(args: argparse.Namespace) -> int:
    if args.topology:
        from tandem.cluster.topology_file import load_topology

        image = image_model_config(args.model, args.quantize)
        shape = image_model_shape(image).as_model_shape() if image else load_model_shape(args.model)
        return print_plan(shape, load_topology(args.topology), request_from_args(args, shape), image)
    client = NodeClient(args.node)
    body = {
        "model": args.model,
        "context": args.context,
        "sequences": args.sequences,
        "devices": args.devices.split(",") if args.devices else None,
        "quantize": args.quantize,
    }
    if args.dry_run:
        preview = client.request("POST", "/v1/placements", body)
        if not preview["feasible"]:
            raise TandemError(f"cannot place {args.model}: {preview['reason']}")
        print("\n".join(preview["explain"]))
        return 0
    instance = client.request("POST", "/v1/instances", {**body, "wait": True})
    if instance["status"] != "ready":
        raise TandemError(f"instance {instance['instance_id']} failed: {instance.get('error')}")
    print(f"instance {instance['instance_id']} is ready")
    return 0


def print_plan(
    shape: ModelShape, topology: Topology, request: PlacementRequest, image: ImageModelConfig | None = None
) -> int:
    """Place `shape` on any topology (a file's or, later, the live cluster's) and print the plan;
    for an image model (`image`), with its compute-bound step times among the notes.

    Returns 0; a model that does not fit raises a TandemError with the reason (exit code 1)."""
    result = place(shape, topology, request)
    if isinstance(result, Infeasible):
        raise TandemError(f"cannot place {shape.name}: {result.reason}")
    if image is not None:
        result = with_image_timing(
            result, image_model_shape(image), topology, image.default_steps, image.default_size
        )
    for line in result.explain():
        print(line)
    return 0


def image_model_config(model: str, quantize: str | None) -> ImageModelConfig | None:
    """The config of MODEL when it is a diffusers image pipeline's directory (None: it is not),
    `quantize` checked against its transformer."""
    path = Path(model).expanduser()
    if not is_image_model_dir(path):
        return None
    config = load_image_model_config(path)
    loaded_image_quantize(config, quantize)  # a stored-quantized transformer: one line
    return config


def load_model_shape(model: str) -> ModelShape:
    """MODEL as the command line gives it: a config.json file, a checkpoint directory, 'demo', a
    catalog id (its shipped config: nothing is downloaded), or a repo id (its config is fetched)."""
    from tandem.store.names import parse_model_name
    from tandem.store.terminal import fetch_with_progress

    path = Path(model).expanduser()
    if path.is_file():
        return load_shape(path)
    name = parse_model_name(model)
    if name.card is not None and name.revision == "main":
        return name.card.shape()
    directory = fetch_with_progress(model, metadata_only=True)
    if name.kind == "repo":  # named as the user named it, not by its snapshot's commit
        return shape_from_hf_config(read_config_json(directory / "config.json"), name=model)
    return load_shape(directory)


def request_from_args(args: argparse.Namespace, shape: ModelShape) -> PlacementRequest:
    context = context_size(args.context, shape.max_context)
    return PlacementRequest(
        context_length=context,
        num_sequences=args.sequences,
        weight_bytes_per_parameter=args.weight_bytes,
        quantize=args.quantize,
        dtype=None if args.dtype == "auto" else args.dtype,
    )
