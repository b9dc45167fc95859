"""Who may reach the public API and the dashboard: the rule, as pure functions, and the page a
browser on another machine gets when it may not.

With no API key, a node answers its API and dashboard only on its own machine (loopback, or a
connection from one of its own addresses) unless the operator passes `--open-api`: Ollama's
convention, which keeps a model server off the LAN until someone decides otherwise. With a key,
other machines use the API and the dashboard with the key (the dashboard's pages hold nothing
of the cluster: it asks for the key and sends it with every call). `/internal/*` routes are never limited here: node-to-node
traffic comes from every interface and is authenticated by the cluster secret's signatures.
"""

from __future__ import annotations

import html
import ipaddress
from dataclasses import dataclass
from typing import Literal

Mode = Literal["local", "key", "open"]

NODE_ROUTES = "/internal/"


@dataclass(frozen=True)
class Exposure:
    """What the operator chose: an API key, and whether other machines may use the API without one."""

    api_key_set: bool
    open_api: bool

    @property
    def mode(self) -> Mode:
        return "open" if self.open_api else ("key" if self.api_key_set else "local")

    def summary(self) -> str:
        """The line a node logs at start."""
        return {
            "open": "API and dashboard open to every machine that reaches this node (--open-api)"
            + (", with the API key" if self.api_key_set else ", no API key"),
            "key": "API and dashboard open to other machines with the API key",
            "local": "API and dashboard on this machine only (no --api-key); other machines get in "
            "once the node is started with --api-key KEY or --open-api",
        }[self.mode]

    def refusal(self, path: str, local: bool) -> str | None:
        """Why a caller may not use `path`, or None when it may (the API key is checked after)."""
        if local or self.open_api or self.api_key_set or path.startswith(NODE_ROUTES):
            return None
        return (
            "this node answers its API and dashboard only on its own machine; start it with "
            "--api-key KEY (and send the key) or --open-api to let other machines in"
        )


def is_dashboard(path: str) -> bool:
    return path == "/" or path.startswith("/dashboard/")


def is_local(client_host: str | None, server_host: str | None) -> bool:
    """Whether a connection comes from this machine: loopback, or from the address it reached
    (the kernel picks a local source address; nobody else's TCP handshake completes from it)."""
    client = _address(client_host)
    if client is None:
        return False
    if client.is_loopback:
        return True
    server = _address(server_host)
    return server is not None and client == server


def _address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address (an IPv4-mapped IPv6 one as IPv4); None for none or a name."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def closed_page(reason: str, port: int | str = "PORT") -> str:
    """The page a browser on another machine gets instead of the dashboard (`port`: this node's)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tandem: not open to this machine</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto; line-height: 1.5">
<h1>This Tandem node is not open to this machine</h1>
<p>{html.escape(reason)}.</p>
<ul>
<li>On the node's own machine, open <code>http://localhost:{port}/</code> (from elsewhere:
<code>ssh -L {port}:localhost:{port} THAT-MACHINE</code>, then the same address here).</li>
<li>Or restart the node with <code>tandem node --open-api</code> to let every machine that reaches
it use the dashboard and the API (with <code>--api-key KEY</code> as well, API clients need the key).</li>
</ul>
<p>See <code>docs/security.md</code>.</p>
</body></html>
"""
