"""Nodes named by people: a forced placement (`--devices`, a launch's `devices`) may name a node
by its id, by its host name (`NodeInfo.name`) or by a prefix of its id, as long as exactly one
node answers to it. Pure Python."""

from __future__ import annotations

from collections.abc import Iterable

from tandem.cluster.placement import DeviceAddress
from tandem.cluster.topology import NodeId, NodeInfo
from tandem.errors import InvalidRequestError


def node_named(text: str, nodes: Iterable[NodeInfo]) -> NodeId:
    """The one node `text` names; an id wins over a host name, a host name over an id prefix."""
    nodes = list(nodes)
    for matches in (
        [n for n in nodes if n.node_id == text],
        [n for n in nodes if n.name == text],
        [n for n in nodes if n.node_id.startswith(text)],
    ):
        if len(matches) == 1:
            return matches[0].node_id
        if len(matches) > 1:
            ids = ", ".join(sorted(n.node_id for n in matches))
            raise InvalidRequestError(f"{text!r} names several nodes ({ids}); give a node id")
    known = ", ".join(f"{n.node_id} ({n.name})" for n in nodes) or "none"
    raise InvalidRequestError(f"no node is named {text!r}; the nodes are {known}")


def with_node_ids(
    stages: tuple[tuple[DeviceAddress, ...], ...] | None, nodes: Iterable[NodeInfo]
) -> tuple[tuple[DeviceAddress, ...], ...] | None:
    """Forced stages whose nodes are given by id, host name or id prefix, with node ids."""
    if stages is None:
        return None
    nodes = list(nodes)
    return tuple(
        tuple(DeviceAddress(node_named(a.node_id, nodes), a.torch_device) for a in stage) for stage in stages
    )
