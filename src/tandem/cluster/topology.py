"""What the cluster is made of: nodes, their devices, and the links between them. Pure values.

Bytes are bytes, rates are per second (FLOP/s, bytes/s), times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NodeId = str
DeviceKind = Literal["cuda", "cpu", "metal"]  # metal: an Apple-silicon GPU, which MLX runs
DeviceEngine = Literal["torch", "mlx"]  # what a device's runners compute with


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
    # Live readings where the hardware reports them (NVML for GPUs, the OS for CPUs); None: unknown.
    utilization: float | None = None  # fraction of the last interval the device was busy, 0..1
    power_draw: float | None = None  # watts
    power_limit: float | None = None  # watts
    # The engine its runners use: "mlx" for a Metal GPU, or a CPU its node gave to MLX (`--engine
    # mlx`), measured through MLX; a stage on it is one rank, its hidden states cross over gloo.
    engine: DeviceEngine = "torch"
    # The operator capped what it offers (`tandem node --memory`): placement takes the cap as this
    # node's share and does not split it again among nodes sharing the host.
    memory_capped: bool = False

    @property
    def torch_device(self) -> str:
        """The device's name in its node (and in a runner's spec)."""
        if self.kind == "cuda":
            return f"cuda:{self.index}"
        return self.kind


@dataclass(frozen=True)
class DownloadProgress:
    """A model download on a node, as that node reports it (the model store fills these in; the
    dashboard draws one progress bar per entry). `total_bytes` is None until the size is known."""

    model: str  # as the user named it: a catalog id, a repo id
    done_bytes: int
    total_bytes: int | None = None
    bytes_per_second: float | None = None
    status: Literal["downloading", "verifying", "done", "failed"] = "downloading"
    message: str | None = None  # what failed, or what is being fetched now
    # What the model store adds (tandem.store.progress, docs/models.md). Bytes and files count only
    # what had to be fetched: a model found in place never appears here.
    repo_id: str | None = None
    commit: str | None = None
    layers: str | None = None  # "START:END" (half-open) when only one stage's files are fetched
    files_done: int = 0
    files_total: int = 0
    eta: float | None = None  # seconds left at `bytes_per_second`; None when unknown
    source: str | None = None  # where the current file comes from: "hub" or "peer NODE_ID"
    started_at: float | None = None  # Unix time


@dataclass(frozen=True)
class NodeInfo:
    node_id: NodeId
    name: str  # host name, for people
    address: str  # host:port of the node's HTTP server
    devices: tuple[DeviceInfo, ...]
    version: str = ""
    downloads: tuple[DownloadProgress, ...] = ()  # in progress or recently finished
    # Which machine the node runs on: equal for nodes on one host (they share its RAM); "" unknown.
    host: str = ""

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
