"""What a node announces over mDNS/DNS-SD, and how a listener checks it. Pure functions.

The DNS-SD TXT record carries every announced field and an HMAC-SHA256 over them, so a listener
needs only the TXT record to decide. The SRV and A records are published as well, for standard
tools (`avahi-browse -r _tandem._tcp`), but nothing is taken from them unsigned.

TXT keys (short, as DNS-SD asks):
    id     node id                       cid    cluster id, derived from the secret
    ver    Tandem version, major.minor   proto  PROTOCOL_VERSION (integer)
    port   HTTP port                     addr   addresses, comma-separated
    ts     unix time of signing (s)      sig    HMAC-SHA256 (hex) over all of the above
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tandem import __version__
from tandem.cluster.auth import clock_skew_problem, cluster_id, loggable, sign, verify
from tandem.errors import TandemError

SERVICE_TYPE = "_tandem._tcp.local."

# Bump when the control protocol between nodes changes incompatibly. Nodes announce it and
# ignore nodes that speak another one. The `cid` field and its derivation never change, so
# "different cluster" is told apart from "different protocol" across versions.
PROTOCOL_VERSION = 1

_ANNOUNCE_TAG = "tandem-announce-v1"
_TXT_VALUE_LIMIT = 250  # bytes: a TXT string holds 255, "addr=" included
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def tandem_version() -> str:
    """This build's Tandem version as announced: major.minor ("0.1")."""
    return ".".join(__version__.split(".")[:2])


def validate_node_id(node_id: str) -> str:
    """`node_id` unchanged, or a TandemError: it becomes a DNS label, so 1-63 letters, digits, - or _."""
    if not _NODE_ID.match(node_id):
        raise TandemError(
            f"node id {node_id!r} is not usable: use 1-63 letters, digits, '-' or '_', starting with "
            "a letter or digit"
        )
    return node_id


@dataclass(frozen=True)
class Announcement:
    """One node's signed announcement, as decoded from (or encoded into) its TXT record."""

    node_id: str
    port: int
    addresses: tuple[str, ...]
    version: str
    protocol: int
    cluster: str
    timestamp: int

    def message(self) -> bytes:
        """The exact bytes that `sig` signs: the fields in a fixed order after a domain tag."""
        fields = (
            _ANNOUNCE_TAG,
            self.cluster,
            self.node_id,
            str(self.protocol),
            self.version,
            str(self.port),
            ",".join(self.addresses),
            str(self.timestamp),
        )
        return "\n".join(fields).encode("utf-8")


@dataclass(frozen=True)
class Rejection:
    """Why an announcement was refused, with the node id it claimed (unverified) when it had one."""

    reason: str
    node_id: str | None = None


def fit_addresses(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """The leading addresses that fit in one TXT string; the rest are dropped (rare: many IPv6)."""
    kept: list[str] = []
    for address in addresses:
        if len(",".join([*kept, address]).encode()) > _TXT_VALUE_LIMIT:
            break
        kept.append(address)
    return tuple(kept)


def build_announcement(
    secret: bytes,
    node_id: str,
    port: int,
    addresses: tuple[str, ...],
    timestamp: int,
    protocol: int = PROTOCOL_VERSION,
) -> Announcement:
    """This node's announcement at `timestamp`, with the cluster id derived from `secret`."""
    return Announcement(
        node_id=validate_node_id(node_id),
        port=port,
        addresses=fit_addresses(addresses),
        version=tandem_version(),
        protocol=protocol,
        cluster=cluster_id(secret),
        timestamp=timestamp,
    )


def encode_txt(announcement: Announcement, secret: bytes) -> dict[str, str]:
    """The TXT properties to publish for `announcement`, signed with `secret`."""
    return {
        "id": announcement.node_id,
        "cid": announcement.cluster,
        "ver": announcement.version,
        "proto": str(announcement.protocol),
        "port": str(announcement.port),
        "addr": ",".join(announcement.addresses),
        "ts": str(announcement.timestamp),
        "sig": sign(secret, announcement.message()),
    }


def check_txt(
    properties: Mapping[str, str | None],
    secret: bytes,
    now: float,
    protocol: int = PROTOCOL_VERSION,
) -> Announcement | Rejection:
    """The announcement in `properties` if this cluster's node signed it recently, else why not.

    Checks run cheapest and most telling first: another cluster's id, another protocol version,
    malformed fields, a bad signature (tampered, or a cluster-id collision), then the timestamp
    (a replayed announcement, or a clock off by more than a minute).
    """
    # Everything read before the signature check is untrusted: made loggable before use.
    node_id = loggable(properties.get("id") or "") or None
    if properties.get("cid") != cluster_id(secret):
        return Rejection("different cluster secret", node_id)
    announced_protocol = properties.get("proto") or "?"
    if announced_protocol != str(protocol):
        announced_protocol, version = (
            loggable(announced_protocol, 12),
            loggable(properties.get("ver") or "?", 20),
        )
        return Rejection(
            f"incompatible protocol version {announced_protocol} (Tandem {version}); this node speaks "
            f"{protocol} (Tandem {tandem_version()}): run the same Tandem version on every machine",
            node_id,
        )
    try:
        announcement = _decode(properties)
    except ValueError as error:
        return Rejection(f"malformed announcement: {error}", node_id)
    if not verify(secret, announcement.message(), properties.get("sig") or ""):
        return Rejection("bad signature: announcement altered on the way, or forged", node_id)
    problem = clock_skew_problem(announcement.timestamp, now)
    if problem:
        return Rejection(f"stale announcement: {problem}", node_id)
    return announcement


def _decode(properties: Mapping[str, str | None]) -> Announcement:
    missing = [key for key in ("id", "port", "addr", "ts", "sig", "ver") if properties.get(key) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    node_id = properties["id"] or ""
    if not _NODE_ID.match(node_id):
        raise ValueError(f"bad node id {node_id[:70]!r}")
    port_text, timestamp_text = properties["port"] or "", properties["ts"] or ""
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text[:20]!r}")
    if not timestamp_text.isdigit():
        raise ValueError(f"bad timestamp {timestamp_text[:20]!r}")
    addresses = tuple(address for address in (properties["addr"] or "").split(",") if address)
    return Announcement(
        node_id=node_id,
        port=int(port_text),
        addresses=addresses,
        version=properties["ver"] or "",
        protocol=int(properties["proto"] or "0"),
        cluster=properties["cid"] or "",
        timestamp=int(timestamp_text),
    )
