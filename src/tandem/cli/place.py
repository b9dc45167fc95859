"""`tandem place`: plan where a model's layers go on a cluster written down as a topology file.

Nothing is loaded and no torch is imported: this reads a config.json and a topology, and prints
the plan or, with exit code 1, why no plan fits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tandem.cluster.placement import Infeasible, PlacementRequest, place
from tandem.cluster.shapes import ModelShape, load_shape
from tandem.cluster.topology import Topology
from tandem.engine.config import DTYPE_BYTES
from tandem.errors import TandemError

# The context `tandem generate` allocates when none is given (engine.local, which imports torch).
DEFAULT_CONTEXT = 4096
DTYPES = ("auto", *DTYPE_BYTES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="checkpoint directory, its config.json file, or 'demo'"
    )
    parser.add_argument(
        "--topology", required=True, metavar="FILE", help="the cluster as a JSON file (docs/placement.md)"
    )
    parser.add_argument(
        "--context", type=int, help=f"tokens per sequence (default: the model's, at most {DEFAULT_CONTEXT})"
    )
    parser.add_argument(
        "--sequences", type=int, default=8, help="sequences to reserve KV cache for (default 8)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="auto (default: bfloat16 on CUDA, float32 on CPU), or one dtype everywhere",
    )
    parser.add_argument(
        "--weight-bytes",
        type=float,
        metavar="N",
        help="bytes per parameter of quantized weights, e.g. 1 for FP8 or int8 (default: the dtype's)",
    )


def run(args: argparse.Namespace) -> int:
    from tandem.cluster.topology_file import load_topology

    shape = load_model_shape(args.model)
    topology = load_topology(args.topology)
    return print_plan(shape, topology, request_from_args(args, shape))


def print_plan(shape: ModelShape, topology: Topology, request: PlacementRequest) -> int:
    """Place `shape` on any topology (a file's or, later, the live cluster's) and print the plan.

    Returns 0; a model that does not fit raises a TandemError with the reason (exit code 1)."""
    result = place(shape, topology, request)
    if isinstance(result, Infeasible):
        raise TandemError(f"cannot place {shape.name}: {result.reason}")
    for line in result.explain():
        print(line)
    return 0


def load_model_shape(model: str) -> ModelShape:
    """MODEL as the command line gives it: a config.json file, a checkpoint directory, or 'demo'."""
    from tandem.store.resolve import resolve_model_dir

    path = Path(model).expanduser()
    return load_shape(path if path.is_file() else resolve_model_dir(model))


def request_from_args(args: argparse.Namespace, shape: ModelShape) -> PlacementRequest:
    context = args.context if args.context is not None else min(shape.max_context, DEFAULT_CONTEXT)
    if args.dtype == "auto":
        sizes = {}
    else:
        sizes = {"cuda_dtype_bytes": DTYPE_BYTES[args.dtype], "cpu_dtype_bytes": DTYPE_BYTES[args.dtype]}
    return PlacementRequest(
        context_length=context,
        num_sequences=args.sequences,
        weight_bytes_per_parameter=args.weight_bytes,
        **sizes,
    )
