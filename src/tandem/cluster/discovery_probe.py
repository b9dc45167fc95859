"""Run discovery alone and print its events as JSON lines: for tests and for debugging a network.

    TANDEM_SECRET=... python -m tandem.cluster.discovery_probe --node-id a --port 52415 \
        --interface eth0 [--peers host:port ...]

Prints {"event": "ready"} once announcing, then one line per event ({"event": "seen", ...}),
and {"event": "stopped"} after SIGTERM or SIGINT. The secret comes from TANDEM_SECRET or the
secret file, never from the command line (where other users could read it in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys

from tandem.cluster.announcement import PROTOCOL_VERSION
from tandem.cluster.discovery import (
    DEFAULT_GONE_AFTER,
    DEFAULT_REFRESH_INTERVAL,
    Discovery,
    PeerCandidate,
    PeerGone,
    PeerRejected,
    PeerSeen,
)
from tandem.cluster.peers import parse_peers
from tandem.cluster.secret import resolve_secret
from tandem.errors import TandemError

_EVENT_NAMES = {PeerSeen: "seen", PeerRejected: "rejected", PeerGone: "gone", PeerCandidate: "candidate"}


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tandem.cluster.discovery_probe", description=__doc__)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--port", type=int, required=True, help="the HTTP port to announce")
    parser.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        help="IP address or interface name to use for mDNS (repeatable); default: all",
    )
    parser.add_argument("--no-mdns", action="store_true", help="static peers only: no multicast at all")
    parser.add_argument("--peers", action="append", default=[], help="static peers, host:port")
    parser.add_argument("--refresh-interval", type=float, default=DEFAULT_REFRESH_INTERVAL)
    parser.add_argument("--gone-after", type=float, default=DEFAULT_GONE_AFTER)
    parser.add_argument("--protocol", type=int, default=PROTOCOL_VERSION, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _emit(name: str, **fields: object) -> None:
    print(json.dumps({"event": name, **fields}), flush=True)


async def _run(arguments: argparse.Namespace) -> None:
    discovery = Discovery(
        arguments.node_id,
        arguments.port,
        resolve_secret(create=False).secret,
        interfaces=[] if arguments.no_mdns else arguments.interfaces,
        static_peers=parse_peers(arguments.peers),
        refresh_interval=arguments.refresh_interval,
        gone_after=arguments.gone_after,
        protocol=arguments.protocol,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await discovery.start()
    _emit("ready", node_id=arguments.node_id)

    async def report() -> None:
        async for event in discovery.events():
            fields = dataclasses.asdict(event)
            if isinstance(event, PeerRejected):
                fields["message"] = event.describe()
            _emit(_EVENT_NAMES[type(event)], **fields)

    reporter = asyncio.create_task(report())
    await stop.wait()
    await discovery.stop()
    await reporter  # drains the events queued before stop
    _emit("stopped", node_id=arguments.node_id)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a one-line message on a TandemError)."""
    arguments = _parse_arguments(argv)
    try:
        asyncio.run(_run(arguments))
    except TandemError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
