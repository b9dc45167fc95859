"""Assemble and run a node: identity, secret, devices, HTTP server, loops, discovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from tandem.cluster.secret import resolve_secret
from tandem.node.identity import load_or_create_node_id
from tandem.node.instances import InstanceManager
from tandem.node.model_files import ModelFiles
from tandem.node.node import Node
from tandem.node.options import NodeOptions
from tandem.node.profile import profile_devices
from tandem.node.server import create_app
from tandem.settings import SECRET_FILE

log = logging.getLogger("tandem.node")


def build_node(options: NodeOptions) -> Node:
    node_id = load_or_create_node_id(options.data_dir)
    secret = resolve_secret(options.secret, path=options.data_dir / SECRET_FILE)
    devices = profile_devices(
        options.data_dir, list(options.devices) if options.devices else None, remeasure=options.remeasure
    )
    node = Node(options, node_id, secret.secret, devices)
    node.instances = InstanceManager(node)
    node.model_files = ModelFiles(node)
    log.info(
        "node %s (%s) at %s; cluster secret from %s",
        node_id,
        node.info.name,
        node.info.address,
        secret.source,
    )
    for device in devices:
        log.info(
            "device %s: %s, %.1f GB, %.0f GB/s, %.0f GFLOP/s",
            device.torch_device,
            device.name,
            device.memory_total / 1e9,
            device.memory_bandwidth / 1e9,
            device.matmul_flops / 1e9,
        )
    return node


async def serve(node: Node) -> None:
    config = uvicorn.Config(
        create_app(node),
        host=node.options.host,
        port=node.options.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(server.serve())
    node.start_background()
    discovery = await start_discovery(node)
    log.info("serving on http://%s:%d", node.options.host, node.options.port)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    if discovery is not None:
        await discovery.stop()
    await node.close()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await serving


async def start_discovery(node: Node):
    """mDNS discovery feeding membership candidates; None when disabled."""
    from tandem.node.discovery_bridge import start_discovery_for

    return await start_discovery_for(node)


def run_node(options: NodeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per control request is noise
    node = build_node(options)
    asyncio.run(serve(node))
