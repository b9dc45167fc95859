"""What the cluster is made of: nodes, their devices, and the links between them. Pure values.

Bytes are bytes, rates are per second (FLOP/s, bytes/s), times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tandem.cluster.downloads import ModelDownload

NodeId = str
DeviceKind = Literal["cuda", "cpu"]


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device of a node, with what profiling measured on it."""

    kind: DeviceKind
    index: int  # the CUDA ordinal; 0 for the CPU
    name: str  # "NVIDIA H100 80GB HBM3", "AMD EPYC 7763 (32 cores)"
    memory_total: int
    memory_free: int
    matmul_flops: float  # measured: bf16 on CUDA, float32 on CPU
    memory_bandwidth: float  # measured device-to-device copy, bytes read + written per second

    @property
    def torch_device(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


@dataclass(frozen=True)
class NodeInfo:
    node_id: NodeId
    name: str  # host name, for people
    address: str  # host:port of the node's HTTP server
    devices: tuple[DeviceInfo, ...]
    version: str = ""
    downloads: tuple[ModelDownload, ...] = ()  # model files being fetched now, and recently

    def device(self, torch_device: str) -> DeviceInfo | None:
        return next((d for d in self.devices if d.torch_device == torch_device), None)


@dataclass(frozen=True)
class LinkInfo:
    """Measured one-way latency and bandwidth from `source` to `target`."""

    source: NodeId
    target: NodeId
    latency: float
    bandwidth: float


@dataclass(frozen=True)
class Topology:
    nodes: tuple[NodeInfo, ...]
    links: tuple[LinkInfo, ...] = field(default=())

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def link(self, source: NodeId, target: NodeId) -> LinkInfo | None:
        """The measured link, falling back to the reverse direction when only that was measured."""
        forward = next((link for link in self.links if link.source == source and link.target == target), None)
        if forward is not None:
            return forward
        return next((link for link in self.links if link.source == target and link.target == source), None)
