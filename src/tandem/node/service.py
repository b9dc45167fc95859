"""The node as its HTTP routes and the public APIs see it: the node core (membership, state,
runners) with the managers built around it, assembled once in dependency order by `build`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from tandem.cluster.placement import Infeasible, Placement
from tandem.cluster.secret import resolve_secret
from tandem.cluster.state import ClusterState, Instance
from tandem.cluster.topology import DownloadProgress
from tandem.node.identity import load_or_create_node_id
from tandem.node.instances import InstanceManager
from tandem.node.model_files import ModelFiles
from tandem.node.node import Node
from tandem.node.options import NodeOptions
from tandem.node.profile import limit_memory, node_engine, profile_devices, with_engine
from tandem.protocol.control import LaunchRequest
from tandem.protocol.runner import GenerateRequest, RequestEvent
from tandem.settings import SECRET_FILE
from tandem.store.progress import DownloadBoard

log = logging.getLogger("tandem.node")


class NodeService:
    """Implements the API's `ClusterAccess`, and holds what the node's own routes need."""

    def __init__(self, node: Node, files: ModelFiles, instances: InstanceManager) -> None:
        self.node = node
        self.files = files
        self.instances = instances

    @classmethod
    def build(cls, options: NodeOptions) -> NodeService:
        node_id = load_or_create_node_id(options.data_dir)
        secret = resolve_secret(options.secret, path=options.data_dir / SECRET_FILE)
        devices = profile_devices(
            options.data_dir, list(options.devices) if options.devices else None, remeasure=options.remeasure
        )
        devices = with_engine(devices, node_engine(options.engine), options.data_dir, options.remeasure)
        devices = limit_memory(devices, options.memory_limit)
        board = DownloadBoard()
        node = Node(options, node_id, secret.secret, devices, board)
        files = ModelFiles(node, board)
        service = cls(node, files, InstanceManager(node, files))
        log.info(
            "node %s (%s) at %s; cluster secret from %s",
            node_id,
            node.info.name,
            node.info.address,
            secret.source,
        )
        for device in devices:
            log.info(
                "device %s (%s engine): %s, %.1f GB, %.0f GB/s, %.0f GFLOP/s",
                device.torch_device,
                device.engine,
                device.name,
                device.memory_total / 1e9,
                device.memory_bandwidth / 1e9,
                device.matmul_flops / 1e9,
            )
        return service

    def start_background(self) -> None:
        self.node.start_background()
        self.node.keep_task_running(self.instances.reconcile_forever())

    # --- ClusterAccess ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def started_at(self) -> float:
        return self.node.started_at

    @property
    def state(self) -> ClusterState:
        return self.node.state

    @property
    def is_coordinator(self) -> bool:
        return self.node.is_coordinator

    async def refresh_state(self) -> None:
        await self.node.refresh_state()

    def plan(self, request: LaunchRequest) -> Placement | Infeasible:
        return self.instances.plan(request)

    async def launch(self, request: LaunchRequest) -> Instance:
        return await self.instances.launch(request)

    async def wait_until_settled(self, instance_id: str) -> Instance:
        return await self.instances.wait_until_settled(instance_id)

    def generate(self, instance_id: str, request: GenerateRequest) -> AsyncIterator[RequestEvent]:
        return self.instances.generate(instance_id, request)

    def pull(self, model: str) -> AsyncIterator[DownloadProgress]:
        return self.files.pull(model)
