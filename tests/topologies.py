"""Synthetic clusters and model shapes for placement tests, in round numbers."""

from __future__ import annotations

from tandem.cluster.topology import DeviceInfo, LinkInfo, NodeInfo, Topology
from tandem.model.shapes import ModelShape

GB = 1e9


def gpu(memory_gb: float = 24, bandwidth_gb_per_s: float = 1000, index: int = 0) -> DeviceInfo:
    return DeviceInfo(
        kind="cuda",
        index=index,
        name=f"GPU {bandwidth_gb_per_s:g} GB/s",
        memory_total=int(memory_gb * GB),
        memory_free=int(memory_gb * GB),
        matmul_flops=100e12,
        memory_bandwidth=bandwidth_gb_per_s * GB,
    )


def cpu(memory_gb: float = 64, bandwidth_gb_per_s: float = 100) -> DeviceInfo:
    return DeviceInfo(
        kind="cpu",
        index=0,
        name=f"CPU {bandwidth_gb_per_s:g} GB/s",
        memory_total=int(memory_gb * GB),
        memory_free=int(memory_gb * GB),
        matmul_flops=1e12,
        memory_bandwidth=bandwidth_gb_per_s * GB,
    )


def node(node_id: str, *devices: DeviceInfo) -> NodeInfo:
    return NodeInfo(node_id=node_id, name=node_id, address=f"{node_id}:52415", devices=devices)


def full_mesh(
    nodes: list[NodeInfo], latency: float = 100e-6, bandwidth: float = 10e9 / 8
) -> tuple[LinkInfo, ...]:
    """One measured link per pair of nodes (the reverse direction stands for itself)."""
    return tuple(
        LinkInfo(a.node_id, b.node_id, latency, bandwidth)
        for i, a in enumerate(nodes)
        for b in nodes[i + 1 :]
    )


def cluster(*nodes: NodeInfo, links: tuple[LinkInfo, ...] | None = None) -> Topology:
    """A topology; without `links`, every pair of nodes is joined by 10 Gbit/s at 100 µs."""
    return Topology(nodes=nodes, links=full_mesh(list(nodes)) if links is None else links)


def uniform_shape(
    num_layers: int = 10,
    layer_parameters: int = 1_000_000_000,
    kv_elements: int = 1000,
    embedding_parameters: int = 100_000_000,
    hidden_size: int = 4096,
    tied: bool = False,
    max_context: int = 131072,
) -> ModelShape:
    """A dense model of identical layers; the head is the embedding's size plus a norm."""
    return ModelShape(
        name="synthetic",
        layer_parameters=(layer_parameters,) * num_layers,
        layer_parameters_read=(layer_parameters,) * num_layers,
        layer_kv_elements=(kv_elements,) * num_layers,
        embedding_parameters=embedding_parameters,
        head_parameters=embedding_parameters + hidden_size,
        tie_word_embeddings=tied,
        hidden_size=hidden_size,
        max_context=max_context,
    )
