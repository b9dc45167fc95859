"""Which peers this node knows, when it last heard from each, and how fast their links are.

A peer is admitted by a heartbeat (request or reply) that carries a valid signature of the
cluster secret; it is dropped when nothing was heard from it for `PEER_TIMEOUT` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tandem.cluster.election import elect_coordinator
from tandem.cluster.topology import LinkInfo, NodeId, NodeInfo

RTT_SAMPLES = 10


@dataclass
class Peer:
    info: NodeInfo
    started_at: float
    last_seen: float  # time.monotonic()
    links: tuple[LinkInfo, ...] = ()  # what the peer measured from itself to others
    round_trips: list[float] = field(default_factory=list)  # our heartbeats to it, seconds
    bandwidth: float | None = None  # bytes/s, measured by downloading from it

    def record_round_trip(self, seconds: float) -> None:
        self.round_trips = [*self.round_trips[-(RTT_SAMPLES - 1) :], seconds]


class Membership:
    def __init__(self, node_id: NodeId, started_at: float, timeout: float) -> None:
        self.node_id = node_id
        self.started_at = started_at
        self.timeout = timeout
        self.peers: dict[NodeId, Peer] = {}
        self.candidates: set[str] = set()  # addresses heard of but not yet answered from
        self.own_addresses: set[str] = set()

    def add_candidate(self, address: str) -> None:
        known = {peer.info.address for peer in self.peers.values()}
        if address not in known and address not in self.own_addresses:
            self.candidates.add(address)

    def observe(self, info: NodeInfo, started_at: float, links: tuple[LinkInfo, ...]) -> bool:
        """Record a verified message from a peer; True when the peer is new."""
        if info.node_id == self.node_id:
            self.own_addresses.add(info.address)
            return False
        self.candidates.discard(info.address)
        peer = self.peers.get(info.node_id)
        now = time.monotonic()
        if peer is None:
            self.peers[info.node_id] = Peer(info, started_at, now, links)
            return True
        peer.info, peer.started_at, peer.last_seen, peer.links = info, started_at, now, links
        return False

    def expire(self) -> list[Peer]:
        """Drop and return the peers not heard from within the timeout."""
        now = time.monotonic()
        gone = [p for p in self.peers.values() if now - p.last_seen > self.timeout]
        for peer in gone:
            del self.peers[peer.info.node_id]
            self.candidates.add(peer.info.address)  # keep knocking: it may come back
        return gone

    def coordinator(self) -> NodeId:
        candidates = [(p.started_at, p.info.node_id) for p in self.peers.values()]
        elected = elect_coordinator([(self.started_at, self.node_id), *candidates])
        assert elected is not None
        return elected

    def measured_links(self) -> tuple[LinkInfo, ...]:
        """Links from this node to each peer it has timed: half the best round trip as latency."""
        links = []
        for peer in self.peers.values():
            if peer.round_trips and peer.bandwidth:
                links.append(
                    LinkInfo(
                        source=self.node_id,
                        target=peer.info.node_id,
                        latency=min(peer.round_trips) / 2,
                        bandwidth=peer.bandwidth,
                    )
                )
        return tuple(links)
