"""`tandem node` (and plain `tandem`): start this machine's node."""

from __future__ import annotations

import argparse
from pathlib import Path

from tandem import settings
from tandem.errors import TandemError
from tandem.node.options import DEFAULT_PORT
from tandem.protocol.runner import DEFAULT_QUEUE_LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--advertise", help="address peers should use for this node (default: detected)")
    parser.add_argument("--name", help="a name for people (default: the host name)")
    parser.add_argument(
        "--peers",
        default="",
        help="static peers, comma-separated host:port (for networks where discovery does not pass)",
    )
    parser.add_argument("--secret", help="the cluster secret (default: TANDEM_SECRET, else the secret file)")
    parser.add_argument(
        "--discovery",
        default="all",
        help="interfaces (names or addresses, comma-separated) for mDNS discovery; 'all' (default) or 'none'",
    )
    parser.add_argument(
        "--devices", help="devices this node may use, comma-separated (e.g. cpu or cuda:0,cuda:1)"
    )
    parser.add_argument(
        "--engine",
        choices=("torch", "mlx"),
        help="what computes this node's stages: mlx runs them on MLX (the Metal GPU on Apple silicon, "
        "else MLX's CPU backend) in place of the CPU; torch: the PyTorch engine (default: mlx on "
        "Apple silicon with mlx installed, else torch)",
    )
    parser.add_argument("--runner-threads", type=int, help="CPU threads per runner process")
    parser.add_argument(
        "--memory",
        type=float,
        metavar="GB",
        help="memory each device offers the cluster at most, in GB (default: all that is free)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="identity, secret and caches (default: TANDEM_HOME or ~/.local/share/tandem)",
    )
    parser.add_argument("--remeasure", action="store_true", help="profile the devices again")
    parser.add_argument(
        "--models-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="offer the checkpoint directories in DIR in the dashboard's model list (repeatable)",
    )
    parser.add_argument(
        "--api-key",
        help="require this key on every API route; other machines may then use the API with it "
        "(default: TANDEM_API_KEY; unset: no key, the API answers this machine only)",
    )
    parser.add_argument(
        "--open-api",
        action="store_true",
        help="let other machines use the API and dashboard (without a key unless --api-key is set); "
        "default, or TANDEM_OPEN_API=1: only this machine, or other machines with the API key",
    )
    parser.add_argument(
        "--queue-limit",
        type=int,
        default=DEFAULT_QUEUE_LIMIT,
        metavar="N",
        help="requests an instance whose rank 0 runs here holds beyond its KV-cache slots, waiting; "
        f"one more is answered 429 with Retry-After (default {DEFAULT_QUEUE_LIMIT})",
    )


def options_from_args(args: argparse.Namespace):
    from tandem.cluster.peers import parse_peers
    from tandem.node.options import NodeOptions

    discovery = (
        None
        if args.discovery == "all"
        else (
            ()
            if args.discovery == "none"
            else tuple(x.strip() for x in args.discovery.split(",") if x.strip())
        )
    )
    return NodeOptions(
        data_dir=args.data_dir or settings.data_dir(),
        host=args.host,
        port=args.port,
        advertise_host=args.advertise,
        name=args.name,
        secret=args.secret,
        static_peers=parse_peers([p for p in args.peers.split(",") if p.strip()], default_port=DEFAULT_PORT),
        discovery_interfaces=discovery,
        devices=tuple(d.strip() for d in args.devices.split(",")) if args.devices else None,
        runner_threads=args.runner_threads,
        engine=args.engine,
        memory_limit=None if args.memory is None else round(args.memory * 1e9),
        remeasure=args.remeasure,
        models_dirs=tuple(args.models_dir),
        api_key=args.api_key or settings.api_key(),
        open_api=args.open_api or settings.open_api(),
        queue_limit=args.queue_limit,
    )


def run(args: argparse.Namespace) -> int:
    if args.queue_limit < 0:
        raise TandemError("--queue-limit must be 0 or more")
    if args.memory is not None and args.memory <= 0:
        raise TandemError("--memory must be more than 0 GB")
    from tandem.node.app import run_node

    run_node(options_from_args(args))
    return 0
