"""Tensor-parallel groups: like GPUs offered to placement as one device, and the choice between
the plans they make possible. Pure Python. See `tandem.cluster.placement` for the cost model.

Placement plans the model several times, each time over a different pool of candidates: every
device on its own (pipeline stages only); the like GPUs of each node grouped k at a time (for
each k that fits the nodes: 2, 4, 8 and the node's whole set); and like GPUs of several nodes
grouped across measured links. Then it compares the predicted plans (`choose`).

A group of k devices reads 1/k of its stage's bytes on each member at once, so it runs k times
faster, less its collectives: each costs a constant within a host (NCCL over NVLink/PCIe inside
a CUDA graph) and, across hosts, that constant plus a ring over the slowest link between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tandem.cluster.placement_search import (
    UNMEASURED_BANDWIDTH,
    UNMEASURED_LATENCY,
    Candidate,
    LinkTable,
    offered_devices,
)
from tandem.cluster.topology import NodeId, Topology

if TYPE_CHECKING:
    from tandem.cluster.placement import Placement, PlacementRequest

# One all-reduce of a decode step's activations (8–128 KB) between GPUs of one host, inside a
# CUDA graph: NCCL took 16–19 µs on two H100s over NVLink (docs/tensor-parallel.md).
SAME_HOST_ALL_REDUCE_SECONDS = 20e-6
# Larger groups have more ranks than many models have KV heads, and all-reduces grow with them.
MAX_TENSOR_PARALLEL = 8
# A plan on more devices must be predicted at least this much faster than one on fewer: every
# device it takes is one that another model cannot use.
MORE_DEVICES_GAIN_REQUIRED = 1.1


def ring_all_reduce_seconds(size: int, latency: float, bandwidth: float, message_bytes: float) -> float:
    """An all-reduce across hosts: what one costs within a host (the library's own floor), plus a
    ring over the link: 2(k−1) steps, each a link latency and 1/k of the message."""
    return SAME_HOST_ALL_REDUCE_SECONDS + 2 * (size - 1) * (latency + message_bytes / size / bandwidth)


def candidate_pools(
    topology: Topology, request: PlacementRequest, links: LinkTable, hidden_size: int
) -> list[list[Candidate]]:
    """The pools to plan over: single devices first, then each way of grouping like GPUs."""
    singles = offered_devices(topology, request)
    by_address = {(device.node_id, device.torch_device): device for device in singles}
    like_sets = _like_gpu_sets(topology)
    pools = [singles]
    sizes = sorted({size for _, _, devices in like_sets for size in _group_sizes(len(devices))})
    for size in sizes:
        groups = [
            [by_address[(node_id, device)] for device in devices[start : start + size]]
            for node_id, _, devices in like_sets
            for start in range(0, len(devices) - size + 1, size)
        ]
        pools.append(_pool(singles, [_group(members, SAME_HOST_ALL_REDUCE_SECONDS) for members in groups]))
    across = _groups_across_hosts(like_sets, by_address, links, hidden_size)
    if across:
        pools.append(_pool(singles, across))
    return pools


def forced_group(members: list[Candidate], links: LinkTable, hidden_size: int) -> Candidate:
    """A group someone asked for (any devices of one kind), costed as placement costs its own:
    the within-host constant on one node, else a ring over the slowest link between its nodes
    (an unmeasured one assumed to be gigabit Ethernet)."""
    nodes = list(dict.fromkeys(member.node_id for member in members))
    if len(nodes) == 1:
        return _group(members, SAME_HOST_ALL_REDUCE_SECONDS)
    pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1 :]]
    measured = [links.measured(a, b) for a, b in pairs]
    latency = max(link.latency if link else UNMEASURED_LATENCY for link in measured)
    bandwidth = min(link.bandwidth if link else UNMEASURED_BANDWIDTH for link in measured)
    message = hidden_size * members[0].value_bytes
    return _group(members, ring_all_reduce_seconds(len(members), latency, bandwidth, message))


def _like_gpu_sets(topology: Topology) -> list[tuple[NodeId, str, list[str]]]:
    """(node, device name, torch devices) for every set of same-named GPUs of a node."""
    sets = []
    for node in topology.nodes:
        by_name: dict[str, list[str]] = {}
        for device in node.devices:
            if device.kind == "cuda":
                by_name.setdefault(device.name, []).append(device.torch_device)
        sets.extend((node.node_id, name, devices) for name, devices in by_name.items())
    return sets


def _group_sizes(count: int) -> set[int]:
    """Group sizes to try on a node with `count` like GPUs: powers of two, and all of them."""
    sizes = {size for size in (2, 4, 8) if size <= count}
    if 2 <= count <= MAX_TENSOR_PARALLEL:
        sizes.add(count)
    return sizes


def _group(members: list[Candidate], all_reduce_seconds: float) -> Candidate:
    leader = members[0]
    return Candidate(
        node_id=leader.node_id,
        torch_device=leader.torch_device,
        kind=leader.kind,
        weight_bytes=leader.weight_bytes,
        value_bytes=leader.value_bytes,
        usable_bytes=len(members) * min(member.usable_bytes for member in members),
        bandwidth=len(members) * min(member.bandwidth for member in members),
        members=tuple((member.node_id, member.torch_device) for member in members),
        all_reduce_seconds=all_reduce_seconds,
    )


def _pool(singles: list[Candidate], groups: list[Candidate]) -> list[Candidate]:
    """`groups` in place of their members, everything else on its own, in topology order."""
    grouped = {address for group in groups for address in group.members}
    leaders = {group.members[0]: group for group in groups}
    pool = []
    for device in singles:
        address = (device.node_id, device.torch_device)
        if address in leaders:
            pool.append(leaders[address])
        elif address not in grouped:
            pool.append(device)
    return pool


def _groups_across_hosts(
    like_sets: list[tuple[NodeId, str, list[str]]],
    by_address: dict[tuple[NodeId, str], Candidate],
    links: LinkTable,
    hidden_size: int,
) -> list[Candidate]:
    """Groups of same-named GPUs on several nodes: from each node not yet grouped, the nodes
    nearest by measured latency join while the group stays within `MAX_TENSOR_PARALLEL`. Nodes
    without a measured link to every member are left out: an unmeasured link cannot pay."""
    groups = []
    by_name: dict[str, list[tuple[NodeId, list[str]]]] = {}
    for node_id, name, devices in like_sets:
        by_name.setdefault(name, []).append((node_id, devices))
    for hosts in by_name.values():
        remaining = list(hosts)
        while len(remaining) >= 2:
            chosen = [remaining.pop(0)]
            size = len(chosen[0][1])
            while remaining:
                joinable = [
                    host
                    for host in remaining
                    if size + len(host[1]) <= MAX_TENSOR_PARALLEL
                    and all(links.measured(member, host[0]) for member, _ in chosen)
                ]
                if not joinable:
                    break
                nearest = min(joinable, key=lambda host: links.measured(chosen[0][0], host[0]).latency)  # type: ignore[union-attr]
                remaining.remove(nearest)
                chosen.append(nearest)
                size += len(nearest[1])
            if len(chosen) < 2:
                continue
            members = [by_address[(node_id, device)] for node_id, devices in chosen for device in devices]
            pairs = [links.measured(a, b) for i, (a, _) in enumerate(chosen) for b, _ in chosen[i + 1 :]]
            latency = max(link.latency for link in pairs if link is not None)
            bandwidth = min(link.bandwidth for link in pairs if link is not None)
            message = hidden_size * members[0].value_bytes
            groups.append(_group(members, ring_all_reduce_seconds(len(members), latency, bandwidth, message)))
    return groups


def layout_label(placement: Placement) -> str:
    """How a plan splits the model: "1 device", "TP=2", "PP=3", "PP=2 × TP=2", "PP=2 (TP 2, 1)";
    "across hosts" when a tensor-parallel group spans nodes."""
    sizes = [len(stage.members) for stage in placement.stages]
    spans_hosts = any(len({member.node_id for member in stage.members}) > 1 for stage in placement.stages)
    where = " across hosts" if spans_hosts else ""
    if len(sizes) == 1:
        return "1 device" if sizes[0] == 1 else f"TP={sizes[0]}{where}"
    if max(sizes) == 1:
        return f"PP={len(sizes)}"
    if len(set(sizes)) == 1:
        return f"PP={len(sizes)} × TP={sizes[0]}{where}"
    return f"PP={len(sizes)} (TP {', '.join(map(str, sizes))}){where}"


def choose(plans: list[Placement]) -> tuple[Placement, str | None]:
    """The plan to run, and a note comparing the plans (None when there was only one).

    The fastest wins, unless a plan on fewer devices comes within `MORE_DEVICES_GAIN_REQUIRED`."""
    distinct: dict[tuple, Placement] = {}
    for plan in plans:
        distinct.setdefault(tuple(stage.members for stage in plan.stages), plan)
    candidates = sorted(distinct.values(), key=lambda plan: plan.predicted_seconds_per_token)
    fastest = candidates[0].predicted_seconds_per_token
    chosen = min(
        (
            plan
            for plan in candidates
            if plan.predicted_seconds_per_token <= fastest * MORE_DEVICES_GAIN_REQUIRED
        ),
        key=lambda plan: (_device_count(plan), plan.predicted_seconds_per_token),
    )
    if len(candidates) == 1:
        return chosen, None
    compared = ", ".join(
        f"{layout_label(plan)}: {plan.predicted_tokens_per_second:.1f} tokens/s" for plan in candidates
    )
    return chosen, f"compared {compared}; chose {layout_label(chosen)}"


def _device_count(plan: Placement) -> int:
    return sum(len(stage.members) for stage in plan.stages)
