"""Nodes on one host share its RAM. Pure Python.

Each node reads the free RAM of the whole machine, so several `tandem node` processes on one
host (as loopback tests and some setups run them) would each offer all of it, and placement could
fill it several times over. Nodes report which host they run on (`NodeInfo.host`, from the machine
and boot ids: `tandem.node.profile.host_id`); placement offers each CPU on a shared host an equal
share of what that host reports, unless its node was given a cap (`--memory`), which is its share. GPUs are not split: a CUDA ordinal names a different card in
each process when the nodes are given different cards, which is how nodes share a multi-GPU host.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from tandem.cluster.topology import DeviceInfo, NodeInfo, Topology


def nodes_per_host(topology: Topology) -> Counter[str]:
    """How many nodes report each known host (unknown hosts are never counted as shared)."""
    return Counter(node.host for node in topology.nodes if node.host)


def split_shared_memory(topology: Topology) -> Topology:
    """`topology` with each CPU of a host that several nodes share holding its share of the RAM."""
    counts = nodes_per_host(topology)
    if all(count == 1 for count in counts.values()):
        return topology
    return replace(topology, nodes=tuple(_share(node, counts[node.host]) for node in topology.nodes))


def _share(node: NodeInfo, sharing: int) -> NodeInfo:
    if sharing <= 1:
        return node
    return replace(node, devices=tuple(_cpu_share(device, sharing) for device in node.devices))


def _cpu_share(device: DeviceInfo, sharing: int) -> DeviceInfo:
    if device.kind != "cpu" or device.memory_capped:  # a cap is the operator's share already
        return device
    return replace(
        device, memory_total=device.memory_total // sharing, memory_free=device.memory_free // sharing
    )
