"""Zero-configuration discovery: announce this node over mDNS/DNS-SD and report the others.

A `Discovery` registers `<node_id>._tandem._tcp.local.` with a signed TXT record (see
`announcement.py`), re-signs it every `refresh_interval` seconds, browses for the same service
type, and turns what it hears into events:

- `PeerSeen`: a node of this cluster, verified; again whenever its addresses, port or version change.
- `PeerRejected`: a node we will not talk to (other cluster secret, other protocol version, bad or
  stale signature); reported once per node and reason, for the caller to log in one line.
- `PeerGone`: a seen node withdrew its service (clean shutdown), or sent no fresh announcement
  for `gone_after` seconds (killed, unplugged).
- `PeerCandidate`: each static peer, once at start; the node admits it over authenticated HTTP.

Being seen is not admission: the node still authenticates every control message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from tandem.cluster.announcement import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Announcement,
    Rejection,
    build_announcement,
    check_txt,
    encode_txt,
    validate_node_id,
)
from tandem.cluster.auth import loggable
from tandem.cluster.interfaces import non_loopback_ipv4_addresses, resolve_interfaces
from tandem.errors import TandemError

log = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL = 3.0  # seconds between re-signed announcements
DEFAULT_GONE_AFTER = 10.0  # seconds without a fresh announcement before a peer is reported gone
_RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class PeerSeen:
    """A node of this cluster, verified by its signature. `version` is Tandem's major.minor."""

    node_id: str
    addresses: tuple[str, ...]
    port: int
    version: str
    protocol: int


@dataclass(frozen=True)
class PeerRejected:
    """A node that announced itself but will not be admitted. `address` is "ip:port" as heard."""

    address: str
    reason: str
    node_id: str | None = None  # as claimed; unverified

    def describe(self) -> str:
        """One log line: "ignoring node 3f2a9c1b… at 10.0.0.2:52415: different cluster secret"."""
        claimed = "".join(c for c in (self.node_id or "") if c.isprintable())
        who = f"node {claimed[:8]}…" if len(claimed) > 12 else f"node {claimed}" if claimed else "a node"
        return f"ignoring {who} at {self.address}: {self.reason}"


@dataclass(frozen=True)
class PeerGone:
    """A node previously seen that withdrew or stopped refreshing its announcement."""

    node_id: str
    reason: str


@dataclass(frozen=True)
class PeerCandidate:
    """A static peer ("host:port") for the node to contact and authenticate over HTTP."""

    address: str


DiscoveryEvent = PeerSeen | PeerRejected | PeerGone | PeerCandidate


@dataclass
class _Known:
    seen: PeerSeen
    timestamp: int  # the announcement's signed time, to ignore replays of older ones
    refreshed_at: float  # monotonic time of the last fresh announcement


class Discovery:
    """Announces this node and reports other nodes. Use from one asyncio event loop.

    `interfaces`: None announces and listens on every interface; a list of IP addresses or
    interface names ("eth0") restricts mDNS to them; an empty list turns mDNS off entirely (no
    multicast sent or received), leaving only `static_peers`. `advertise_addresses` defaults to
    the addresses of the named interfaces (with None: every non-loopback IPv4 address).
    `static_peers` are normalized "host:port" strings (see `peers.parse_peers`).
    `protocol` exists for tests of mismatched versions; leave it alone.
    """

    def __init__(
        self,
        node_id: str,
        port: int,
        secret: bytes,
        interfaces: Sequence[str] | None = None,
        static_peers: Sequence[str] = (),
        *,
        advertise_addresses: Sequence[str] | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        gone_after: float = DEFAULT_GONE_AFTER,
        protocol: int = PROTOCOL_VERSION,
    ) -> None:
        if refresh_interval < 1.0:  # timestamps are whole seconds: faster refreshes could repeat one
            raise ValueError(f"refresh_interval must be at least 1 s, not {refresh_interval}")
        if gone_after <= refresh_interval:
            raise ValueError(f"gone_after ({gone_after}) must exceed refresh_interval ({refresh_interval})")
        self.node_id = validate_node_id(node_id)
        self.port = port
        self._secret = secret
        self._interfaces = None if interfaces is None else tuple(interfaces)
        self._advertise = None if advertise_addresses is None else tuple(advertise_addresses)
        self._static_peers = tuple(static_peers)
        self._refresh_interval = refresh_interval
        self._gone_after = gone_after
        self._protocol = protocol
        self._service_name = f"{node_id}.{SERVICE_TYPE}"
        self._queue: asyncio.Queue[DiscoveryEvent | None] = asyncio.Queue()
        self._known: dict[str, _Known] = {}  # by service name, lower case
        self._rejected: dict[str, str] = {}  # service name -> kind of the last reported rejection
        self._tasks: set[asyncio.Task] = set()
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._addresses: tuple[str, ...] = ()
        self._stopped = False

    @property
    def mdns_enabled(self) -> bool:
        """False when constructed with `interfaces=[]`: static peers only, no multicast at all."""
        return self._interfaces != ()

    @property
    def peers(self) -> dict[str, PeerSeen]:
        """The peers seen and not gone, by node id."""
        return {known.seen.node_id: known.seen for known in self._known.values()}

    async def start(self) -> None:
        """Queue the static peers, then (unless mDNS is off) register this node and start browsing.

        Raises TandemError when an interface cannot be used or another node already announces
        this node id on the network.
        """
        for address in self._static_peers:
            self._queue.put_nowait(PeerCandidate(address))
        if not self.mdns_enabled:
            return
        if self._interfaces is None:
            zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
            self._addresses = self._advertise or non_loopback_ipv4_addresses()
        else:
            bound = resolve_interfaces(self._interfaces)
            zeroconf = AsyncZeroconf(interfaces=list(bound))
            self._addresses = self._advertise or bound
        self._zeroconf = zeroconf
        try:
            await zeroconf.async_register_service(self._service_info())
        except NonUniqueNameException:
            await zeroconf.async_close()
            raise TandemError(
                f"another node on this network already announces node id {self.node_id}; "
                "was its data directory copied? give each machine its own"
            ) from None
        self._browser = AsyncServiceBrowser(
            zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._on_service_state_change]
        )
        self._spawn(self._refresh_forever())
        self._spawn(self._expire_forever())

    async def stop(self) -> None:
        """Withdraw this node's service (goodbye packets, so peers see it gone at once) and stop.

        Ends the `events()` iterator. Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_close()  # unregisters, which sends the goodbyes
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[DiscoveryEvent]:
        """Every event in order, until `stop()`. Meant for one consumer."""
        while (event := await self._queue.get()) is not None:
            yield event

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _service_info(self) -> AsyncServiceInfo:
        announcement = build_announcement(
            self._secret, self.node_id, self.port, self._addresses, int(time.time()), self._protocol
        )
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self._service_name,
            port=self.port,
            properties=encode_txt(announcement, self._secret),
            server=f"tandem-{self.node_id}"[:63] + ".local.",
            parsed_addresses=list(announcement.addresses),
        )

    def _spawn(self, coroutine) -> None:
        # Keep a reference: the event loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_forever(self) -> None:
        assert self._zeroconf is not None
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._zeroconf.async_update_service(self._service_info())
            except Exception as error:  # a failed send must not end announcing for good
                log.warning("discovery: could not refresh our announcement: %s", error)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._gone_after / 4))
            cutoff = time.monotonic() - self._gone_after
            for name, known in list(self._known.items()):
                if known.refreshed_at < cutoff:
                    del self._known[name]
                    reason = f"no fresh announcement for {self._gone_after:.0f} s"
                    self._queue.put_nowait(PeerGone(known.seen.node_id, reason))

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Called by zeroconf inside our event loop; resolving awaits, so it runs as a task.
        key = name.lower()
        if key == self._service_name.lower() or self._stopped:
            return
        if state_change is ServiceStateChange.Removed:
            self._rejected.pop(key, None)
            known = self._known.pop(key, None)
            if known is not None:
                self._queue.put_nowait(PeerGone(known.seen.node_id, "withdrew its announcement"))
            return
        self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zeroconf is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, _RESOLVE_TIMEOUT_MS):
            log.debug("discovery: could not resolve %s", name)
            return
        verdict = check_txt(info.decoded_properties, self._secret, time.time(), self._protocol)
        if isinstance(verdict, Announcement) and f"{verdict.node_id}.{SERVICE_TYPE}".lower() != name.lower():
            verdict = Rejection(
                f"announces node id {verdict.node_id} under the name {loggable(name, 100)}", verdict.node_id
            )
        if isinstance(verdict, Rejection):
            self._report_rejection(name.lower(), info, verdict)
        else:
            self._accept(name.lower(), verdict)

    def _accept(self, key: str, announcement: Announcement) -> None:
        self._rejected.pop(key, None)
        seen = PeerSeen(
            announcement.node_id,
            announcement.addresses,
            announcement.port,
            announcement.version,
            announcement.protocol,
        )
        known = self._known.get(key)
        if known is not None and announcement.timestamp < known.timestamp:
            return  # an older announcement arriving late, or replayed: says nothing new
        self._known[key] = _Known(seen, announcement.timestamp, time.monotonic())
        if known is None or known.seen != seen:
            self._queue.put_nowait(seen)

    def _report_rejection(self, key: str, info: AsyncServiceInfo, rejection: Rejection) -> None:
        # Report each kind of problem once per node: a stale clock would otherwise log every refresh.
        kind = rejection.reason.split(":", 1)[0]
        if self._rejected.get(key) == kind:
            return
        self._rejected[key] = kind
        heard_at = info.parsed_addresses()
        address = f"{heard_at[0] if heard_at else '?'}:{info.port}"
        self._queue.put_nowait(PeerRejected(address, rejection.reason, rejection.node_id))
