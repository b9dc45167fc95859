"""Static peers (--peers): parse and validate `host:port` strings. Pure functions.

Static peers are for networks where multicast does not pass (different subnets, VPNs, cloud
VPCs). Discovery only hands them to the node as candidates; the node admits a candidate after an
authenticated HTTP exchange, exactly as it does a peer found by mDNS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from tandem.errors import TandemError

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_EXAMPLE = "expected host:port, e.g. 192.168.1.20:52415 or [fd00::2]:52415"


def parse_peers(values: Iterable[str], default_port: int | None = None) -> tuple[str, ...]:
    """Normalized `host:port` addresses from --peers values, duplicates dropped, order kept.

    Each value may hold several addresses separated by commas or spaces ("a:1,b:2"). IPv6
    addresses go in brackets ("[fd00::2]:52415") and stay bracketed in the result, so every
    address can be put into a URL as it is. A bare host takes `default_port` when one is given.
    Raises TandemError with a one-line message naming the first bad entry.
    """
    addresses: list[str] = []
    for value in values:
        for entry in re.split(r"[,\s]+", value.strip()):
            if entry:
                address = parse_peer(entry, default_port)
                if address not in addresses:
                    addresses.append(address)
    return tuple(addresses)


def parse_peer(entry: str, default_port: int | None = None) -> str:
    """One `host:port` address, normalized (lower-case host names, compressed IPv6 in brackets)."""
    host, port_text = _split_host_port(entry)
    if port_text is None:
        if default_port is None:
            raise TandemError(f"bad peer {entry!r}: no port; {_EXAMPLE}")
        port = default_port
    else:
        if not port_text.isdigit():
            raise TandemError(f"bad peer {entry!r}: port {port_text!r} is not a number; {_EXAMPLE}")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise TandemError(f"bad peer {entry!r}: port {port} is outside 1-65535")
    return f"{_normalize_host(entry, host)}:{port}"


def _split_host_port(entry: str) -> tuple[str, str | None]:
    if entry.startswith("["):
        closing = entry.find("]")
        if closing < 0:
            raise TandemError(f"bad peer {entry!r}: '[' without ']'; {_EXAMPLE}")
        host, rest = entry[1:closing], entry[closing + 1 :]
        if rest == "":
            return "[" + host + "]", None
        if not rest.startswith(":"):
            raise TandemError(f"bad peer {entry!r}: expected ':port' after ']'; {_EXAMPLE}")
        return "[" + host + "]", rest[1:]
    if entry.count(":") > 1:
        raise TandemError(f"bad peer {entry!r}: write IPv6 addresses in brackets; {_EXAMPLE}")
    host, separator, port_text = entry.partition(":")
    return host, (port_text if separator else None)


def _normalize_host(entry: str, host: str) -> str:
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise TandemError(f"bad peer {entry!r}: {host} is not an IPv6 address; {_EXAMPLE}") from None
    if not host:
        raise TandemError(f"bad peer {entry!r}: no host; {_EXAMPLE}")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise TandemError(f"bad peer {entry!r}: {host!r} is not a host name or IP address; {_EXAMPLE}")
    if all(label.isdigit() for label in labels):
        raise TandemError(f"bad peer {entry!r}: {host!r} is not a valid IPv4 address")
    return host.rstrip(".").lower()
