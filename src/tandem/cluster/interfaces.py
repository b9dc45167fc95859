"""Which local addresses discovery may use: interface names or IPs, resolved to IP addresses.

Multicast (mDNS) goes out only on the addresses resolved here, so a node can be kept off a
network by naming the interfaces it may announce on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import ifaddr

from tandem.errors import TandemError


def resolve_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The IP addresses for `interfaces`: each entry an IP address, or an interface name ("eth0").

    A name stands for the IPv4 addresses of that interface. Raises TandemError for a name that
    does not exist or has no IPv4 address, and for an address this machine does not have.
    """
    adapters = list(ifaddr.get_adapters())
    local = {str(ip.ip if isinstance(ip.ip, str) else ip.ip[0]) for a in adapters for ip in a.ips}
    resolved: list[str] = []
    for entry in interfaces:
        addresses = _addresses_for(entry, adapters, local)
        resolved.extend(address for address in addresses if address not in resolved)
    return tuple(resolved)


def non_loopback_ipv4_addresses() -> tuple[str, ...]:
    """Every IPv4 address of this machine except loopback: what a node announces by default."""
    addresses: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not ipaddress.IPv4Address(ip.ip).is_loopback and ip.ip not in addresses:
                addresses.append(str(ip.ip))
    return tuple(addresses)


def _addresses_for(entry: str, adapters: list[ifaddr.Adapter], local: set[str]) -> list[str]:
    try:
        address = str(ipaddress.ip_address(entry))
    except ValueError:
        pass
    else:
        if address not in local:
            raise TandemError(f"discovery interface {entry}: this machine has no such address")
        return [address]
    adapter = next((a for a in adapters if a.nice_name == entry or a.name == entry), None)
    if adapter is None:
        names = ", ".join(sorted({a.nice_name for a in adapters}))
        raise TandemError(f"discovery interface {entry!r}: no such network interface (have: {names})")
    addresses = [str(ip.ip) for ip in adapter.ips if ip.is_IPv4]
    if not addresses:
        raise TandemError(f"discovery interface {entry!r} has no IPv4 address")
    return addresses
