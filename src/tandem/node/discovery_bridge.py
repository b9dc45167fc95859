"""Feed mDNS discovery into membership: a verified announcement makes its addresses candidates,
which the heartbeat loop then admits over signed HTTP."""

from __future__ import annotations

import asyncio
import logging

from tandem.cluster.discovery import Discovery, PeerRejected, PeerSeen

log = logging.getLogger("tandem.discovery")


async def start_discovery_for(node) -> Discovery | None:
    """Start discovery unless the node disabled mDNS (`--discovery none`); returns it to stop later."""
    interfaces = node.options.discovery_interfaces
    if interfaces == ():
        log.info("mDNS discovery is off; peers come from --peers and from other peers")
        return None
    discovery = Discovery(node.node_id, node.options.port, node.secret, interfaces=interfaces)
    await discovery.start()
    node.keep_task(asyncio.create_task(_consume(node, discovery)))
    return discovery


async def _consume(node, discovery: Discovery) -> None:
    async for event in discovery.events():
        if isinstance(event, PeerSeen):
            for address in event.addresses:
                node.membership.add_candidate(f"{address}:{event.port}")
        elif isinstance(event, PeerRejected):
            log.warning("%s", event.describe())
