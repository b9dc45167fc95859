"""Which node coordinates: the one that has been running longest. Pure Python.

Rule: among the nodes a node currently sees alive (itself included), the coordinator is the one
with the earliest start time, ties broken by the smaller node id. A restarted machine starts
later than the others, so it does not take the role back from a coordinator that stayed up.
When the coordinator leaves, the next-oldest node takes over as soon as the peers notice
(the peer timeout), continuing from the last cluster state it received.
"""

from __future__ import annotations

from collections.abc import Iterable

from tandem.cluster.topology import NodeId


def elect_coordinator(candidates: Iterable[tuple[float, NodeId]]) -> NodeId | None:
    """`candidates` are (started_at, node_id) of live nodes; None when there are none."""
    best = min(candidates, default=None)
    return best[1] if best is not None else None
