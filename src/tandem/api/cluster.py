"""What the public APIs see of the cluster: one small typed interface, implemented by the node
(`tandem.node.service.NodeService`). The API never imports the node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from tandem.cluster.placement import Infeasible, Placement
from tandem.cluster.state import ClusterState, Instance
from tandem.cluster.topology import DownloadProgress
from tandem.protocol.control import LaunchRequest
from tandem.protocol.runner import GenerateRequest, RequestEvent


class ClusterAccess(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def started_at(self) -> float:
        """When this node started (the `created` time of the models it lists)."""
        ...

    @property
    def state(self) -> ClusterState:
        """This node's copy of the cluster state (a heartbeat behind the coordinator's at most)."""
        ...

    @property
    def is_coordinator(self) -> bool: ...

    async def refresh_state(self) -> None:
        """Fetch the coordinator's state now instead of waiting for the next heartbeat."""
        ...

    def plan(self, request: LaunchRequest) -> Placement | Infeasible:
        """Where the model would go now. Blocking: may fetch its config (run it in a thread)."""
        ...

    async def launch(self, request: LaunchRequest) -> Instance: ...

    async def wait_until_settled(self, instance_id: str) -> Instance:
        """The instance once it is ready or has failed."""
        ...

    def generate(self, instance_id: str, request: GenerateRequest) -> AsyncIterator[RequestEvent]:
        """The events of one request; closing the iterator early aborts the request."""
        ...

    def pull(self, model: str) -> AsyncIterator[DownloadProgress]:
        """Fetch every file of `model` to this node, yielding its download's figures as they move
        (nothing when every file is here already). Raises TandemError."""
        ...
