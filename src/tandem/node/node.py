"""The node: membership, the cluster state, and the loops that keep them current.

Every node heartbeats every peer once a second (signed). Replies carry the replier's view;
the coordinator's replies also carry its cluster state when the asker's copy is out of date.
Only the coordinator changes the state; other nodes forward their reports to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from tandem import __version__
from tandem.cluster.auth import ANY_NODE
from tandem.cluster.replay import ReplayWindow
from tandem.cluster.state import (
    ClusterState,
    CoordinatorChanged,
    Event,
    HistoryNoted,
    LinksMeasured,
    NodesChanged,
    RunnerReported,
    apply,
)
from tandem.cluster.topology import DeviceInfo, NodeId, NodeInfo
from tandem.errors import PeerUnreachable
from tandem.node.control import ControlClient, SignatureRefused
from tandem.node.healing import membership_notes
from tandem.node.log_throttle import LogThrottle
from tandem.node.membership import Membership
from tandem.node.options import HEARTBEAT_INTERVAL, LINK_MEASURE_INTERVAL, PEER_TIMEOUT, NodeOptions
from tandem.node.profile import host_id
from tandem.node.supervisor import Supervisor
from tandem.node.telemetry import Telemetry
from tandem.protocol.control import Blob, Done, Heartbeat, HeartbeatReply
from tandem.store.progress import DownloadBoard

log = logging.getLogger("tandem.node")

BANDWIDTH_PROBE_BYTES = 4 * 2**20
NODES_REFRESH_SECONDS = 5.0  # how often the coordinator republishes node reports (free memory)


def detect_host() -> str:
    """The address peers most likely reach this machine at (the one its default route uses)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class Node:
    def __init__(
        self,
        options: NodeOptions,
        node_id: NodeId,
        secret: bytes,
        devices: tuple[DeviceInfo, ...],
        downloads: DownloadBoard,
    ) -> None:
        self.options = options
        self.node_id = node_id
        self.secret = secret
        self.started_at = time.time()
        host = options.advertise_host or (
            options.host if options.host not in ("0.0.0.0", "::") else detect_host()
        )
        self.info = NodeInfo(
            node_id=node_id,
            name=options.name or socket.gethostname(),
            address=f"{host}:{options.port}",
            devices=devices,
            version=__version__,
            host=host_id(),
        )
        self.membership = Membership(node_id, self.started_at, PEER_TIMEOUT)
        for address in options.static_peers:
            self.membership.add_candidate(address)
        self.state = ClusterState()
        self.control = ControlClient(node_id, secret)
        self.replay_window = ReplayWindow()  # nonces of the signed messages received lately
        self.refusal_log = LogThrottle()  # refused messages, logged once a minute per sender
        self.refused_by: dict[str, str] = {}  # peer address -> why it refused our signature (dashboard)
        self.supervisor = Supervisor(self.on_runner_report, secret)
        self.downloads = downloads  # this node's downloads, shown in its heartbeats
        self._nodes_published_at = 0.0
        self._tasks: list[asyncio.Task] = []
        self.telemetry = Telemetry()
        self.closing = asyncio.Event()  # set when the node shuts down: long-lived streams end

    # --- the state ----------------------------------------------------------------------------

    @property
    def coordinator(self) -> NodeId:
        return self.membership.coordinator()

    @property
    def is_coordinator(self) -> bool:
        return self.coordinator == self.node_id

    def apply(self, event: Event) -> ClusterState:
        """Coordinator only: change the state."""
        self.state = apply(self.state, event)
        return self.state

    async def refresh_state(self) -> None:
        """Fetch the coordinator's current state now instead of waiting for the next heartbeat."""
        address = self.address_of(self.coordinator)
        if address is None or self.is_coordinator:
            return
        with contextlib.suppress(PeerUnreachable):
            state = await self.control.call(
                address, "GET", "/internal/state", reply=ClusterState, to=self.coordinator
            )
            if state.version >= self.state.version or state.coordinator != self.state.coordinator:
                self.state = state

    def address_of(self, node_id: NodeId) -> str | None:
        if node_id == self.node_id:
            return self.info.address
        peer = self.membership.peers.get(node_id)
        return peer.info.address if peer else None

    def reachable_address(self, node_id: NodeId, role: str = "node") -> str:
        """The address of `node_id`; PeerUnreachable ("{role} {node_id} is not reachable") when
        this node knows none."""
        address = self.address_of(node_id)
        if address is None:
            raise PeerUnreachable(f"{role} {node_id} is not reachable")
        return address

    def _alive_nodes(self) -> tuple[NodeInfo, ...]:
        peers = sorted(self.membership.peers.values(), key=lambda p: p.info.node_id)
        return (self.info, *(p.info for p in peers))

    def _publish_as_coordinator(self, force: bool = False) -> None:
        if self.state.coordinator != self.node_id:
            log.info(
                "this node is now the coordinator (continuing from state version %d)", self.state.version
            )
            self.apply(CoordinatorChanged(self.node_id))
            force = True
        alive = self._alive_nodes()
        ids_changed = {n.node_id for n in alive} != {n.node_id for n in self.state.nodes}
        # Download progress is republished as it moves, so the dashboard sees it within a second.
        downloads_moved = [n.downloads for n in alive] != [n.downloads for n in self.state.nodes]
        stale = time.monotonic() - self._nodes_published_at > NODES_REFRESH_SECONDS
        if force or ids_changed or downloads_moved or stale:
            if self.state.nodes or len(alive) > 1:  # a lone first node has nothing to report
                for entry in membership_notes(self.state, {n.node_id for n in alive}):
                    self.apply(HistoryNoted(entry))
            self.apply(NodesChanged(alive))
            self._nodes_published_at = time.monotonic()
        for source, links in self._links_by_source().items():
            current = tuple(link for link in self.state.links if link.source == source)
            if links and set(links) != set(current):
                self.apply(LinksMeasured(source, links))

    def _links_by_source(self) -> dict[NodeId, tuple]:
        links = {self.node_id: self.membership.measured_links()}
        for peer in self.membership.peers.values():
            links[peer.info.node_id] = peer.links
        return links

    # --- heartbeats ---------------------------------------------------------------------------

    def heartbeat_message(self) -> Heartbeat:
        return Heartbeat(
            node=self.info,
            started_at=self.started_at,
            state_version=self.state.version,
            known=tuple(p.info.address for p in self.membership.peers.values()),
            links=self.membership.measured_links(),
            runners=self.supervisor.reports(),
        )

    def reconcile_runners(self, reports: tuple[RunnerReported, ...]) -> None:
        """Coordinator only: apply runner statuses the state has not recorded (reports that went
        to a coordinator which then left, or were lost on the way)."""
        for report in reports:
            instance = self.state.instance(report.instance_id)
            if instance is None or not 0 <= report.rank < len(instance.runners):
                continue
            recorded = instance.runners[report.rank].status
            if report.status in ("ready", "failed") and recorded not in (report.status, "failed"):
                self.apply(report)

    def _observe(self, view: Heartbeat) -> None:
        if self.membership.observe(view.node, view.started_at, view.links):
            log.info("peer %s (%s) joined", view.node.node_id, view.node.address)
        for address in view.known:
            self.membership.add_candidate(address)
        if self.is_coordinator:
            self.reconcile_runners(view.runners)

    def handle_heartbeat(self, message: Heartbeat) -> HeartbeatReply:
        """A verified heartbeat from a peer; the reply is this node's view (and state, if useful)."""
        self._observe(message)
        stale = self.is_coordinator and message.state_version != self.state.version
        return HeartbeatReply(self.heartbeat_message(), self.state if stale else None)

    def _accept_reply(self, reply: HeartbeatReply, round_trip: float) -> None:
        self._observe(reply.view)
        peer = self.membership.peers.get(reply.view.node.node_id)
        if peer is not None:
            peer.record_round_trip(round_trip)
        if reply.state is not None and reply.view.node.node_id == self.coordinator:
            self.state = reply.state

    async def _beat(self, address: str) -> None:
        started = time.perf_counter()
        known = (p.info.node_id for p in self.membership.peers.values() if p.info.address == address)
        try:
            reply = await self.control.call(
                address,
                "POST",
                "/internal/heartbeat",
                self.heartbeat_message(),
                reply=HeartbeatReply,
                timeout=PEER_TIMEOUT / 2,
                to=next(known, ANY_NODE),
            )
        except SignatureRefused as error:  # the other side logs it too; this side must not stay silent
            self.refused_by[address] = str(error)
            if self.refusal_log.due(f"refused by {address}", time.monotonic()):
                log.warning("%s", error)
            return
        except PeerUnreachable as error:
            if address in self.membership.candidates:
                log.debug("candidate %s: %s", address, error)
            else:
                log.warning("%s", error)
            return
        self.refused_by.pop(address, None)
        self._accept_reply(reply, time.perf_counter() - started)

    async def heartbeat_forever(self) -> None:
        while True:
            targets = {p.info.address for p in self.membership.peers.values()} | set(
                self.membership.candidates
            )
            await asyncio.gather(*(self._beat(address) for address in targets))
            for peer in self.membership.expire():
                log.info(
                    "peer %s (%s) left: nothing heard for %.0f s",
                    peer.info.node_id,
                    peer.info.address,
                    PEER_TIMEOUT,
                )
            self.info = replace(
                self.info,
                devices=self.telemetry.refresh(self.info.devices),
                downloads=self.downloads.snapshot(),
            )
            if self.is_coordinator:
                self._publish_as_coordinator()
                self.reconcile_runners(self.supervisor.reports())
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def measure_links_forever(self) -> None:
        while True:
            for peer in list(self.membership.peers.values()):
                started = time.perf_counter()
                try:
                    await self.control.call(
                        peer.info.address,
                        "GET",
                        f"/internal/blob?bytes={BANDWIDTH_PROBE_BYTES}",
                        reply=Blob,
                        to=peer.info.node_id,
                    )
                except PeerUnreachable:
                    continue
                elapsed = time.perf_counter() - started
                peer.bandwidth = BANDWIDTH_PROBE_BYTES / max(
                    elapsed - min(peer.round_trips, default=0.0), 1e-6
                )
            await asyncio.sleep(LINK_MEASURE_INTERVAL if self.membership.peers else HEARTBEAT_INTERVAL)

    # --- runner reports -----------------------------------------------------------------------

    async def on_runner_report(self, report: RunnerReported) -> None:
        detail = f" ({report.message})" if report.message else ""
        log.info("runner %s rank %d: %s%s", report.instance_id, report.rank, report.status, detail)
        await self.submit_runner_report(report)

    async def submit_runner_report(self, report: RunnerReported) -> Done:
        for _ in range(int(PEER_TIMEOUT * 2)):
            if self.is_coordinator:
                self.apply(report)
                return Done()
            address = self.address_of(self.coordinator)
            if address is not None:
                with contextlib.suppress(PeerUnreachable):
                    await self.control.call(
                        address, "POST", "/internal/runner-report", report, to=self.coordinator
                    )
                    return Done()
            await asyncio.sleep(0.5)  # the coordinator may be changing; try the next one
        log.error("could not report runner %s rank %s to any coordinator", report.instance_id, report.rank)
        return Done()

    # --- lifecycle ----------------------------------------------------------------------------

    def start_background(self) -> None:
        self.keep_task(asyncio.create_task(self.heartbeat_forever()))
        self.keep_task(asyncio.create_task(self.measure_links_forever()))

    def keep_task(self, task: asyncio.Task) -> None:
        """Hold a background task (so it is not garbage-collected) and cancel it on close."""
        self._tasks.append(task)

    def keep_task_running(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background until the node closes."""
        self.keep_task(asyncio.create_task(work))

    async def close(self) -> None:
        self.closing.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.supervisor.stop_all()
        await self.control.close()
        self.telemetry.close()
