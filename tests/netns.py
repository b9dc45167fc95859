"""A private LAN for tests: N network namespaces joined by a bridge, for multicast and multi-host tests.

    with netns.lan(3) as network:            # skips the test where namespaces cannot be made
        a, b, c = network.hosts              # a.name "tdm-1a2b3c-0", a.address "10.77.0.1"
        process = a.popen([sys.executable, "-m", "some.module"])   # runs inside a's namespace
        print(b.run(["ip", "-brief", "address"]).stdout)

Layout: a namespace `<prefix>-br` holds the bridge `br0` and one veth end per host (`v0`, `v1`,
...); each host namespace `<prefix>-<i>` holds the other end, named `eth0`, with address
10.77.0.<i+1>/24, `lo` up, and a multicast route (224.0.0.0/4) on `eth0`. Every link is created
inside those namespaces, so nothing appears in, or is sent on, the machine's own interfaces.

Leaving the `with` block kills every process started through `popen` (its whole process group)
and deletes the namespaces, which deletes their interfaces too. Namespace names carry a random
prefix (`tdm-<6 hex>`), so concurrent test runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

SUBNET = "10.77.0"
_COMMAND_TIMEOUT = 20


class NamespacesUnavailable(Exception):
    """Network namespaces cannot be created here (not root, no `ip`, or a sandbox forbids it)."""


@dataclass
class Host:
    """One namespace on the LAN: a machine of its own as far as networking goes."""

    name: str  # the namespace, for `ip netns exec`
    address: str  # IPv4 address of eth0, no prefix length
    interface: str = "eth0"
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        """`args` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run `args` inside this namespace to completion; text output captured by default."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", _COMMAND_TIMEOUT)
        return subprocess.run(self.command(args), check=check, **kwargs)

    def popen(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `args` inside this namespace, in a new process group that teardown kills."""
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self.command(args), **kwargs)
        self.processes.append(process)
        return process


@dataclass
class Lan:
    """The namespaces of one test LAN. Build with `lan(count)`, or `Lan.create` outside pytest."""

    prefix: str
    hosts: list[Host]
    bridge_namespace: str

    @classmethod
    def create(cls, count: int) -> Lan:
        """Create `count` hosts on one bridge. Raises NamespacesUnavailable when not permitted."""
        if not 1 <= count <= 250:
            raise ValueError(f"count must be 1-250, not {count}")
        check_available()
        prefix = f"tdm-{secrets.token_hex(3)}"
        network = cls(prefix, [], f"{prefix}-br")
        try:
            network._build(count)
        except BaseException:
            network.close()
            raise
        return network

    def _build(self, count: int) -> None:
        _ip("netns", "add", self.bridge_namespace)
        _ip("-n", self.bridge_namespace, "link", "set", "lo", "up")
        _ip("-n", self.bridge_namespace, "link", "add", "br0", "type", "bridge")
        # Snooping off: the bridge then floods multicast to every port, like a plain switch.
        _ip("-n", self.bridge_namespace, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge_namespace, "link", "set", "br0", "up")
        for index in range(count):
            host = Host(name=f"{self.prefix}-{index}", address=f"{SUBNET}.{index + 1}")
            self.hosts.append(host)
            _ip("netns", "add", host.name)
            port = f"v{index}"
            # Created inside the bridge namespace and moved straight into the host: never in ours.
            _ip("-n", self.bridge_namespace, "link", "add", port, "type", "veth",
                "peer", "name", host.interface, "netns", host.name)  # fmt: skip
            _ip("-n", self.bridge_namespace, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_namespace, "link", "set", port, "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip("-n", host.name, "address", "add", f"{host.address}/24", "dev", host.interface)
            _ip("-n", host.name, "link", "set", host.interface, "up")
            _ip("-n", host.name, "route", "add", "224.0.0.0/4", "dev", host.interface)

    def close(self) -> None:
        """Kill the processes started in the hosts, then delete every namespace. Idempotent."""
        for host in self.hosts:
            for process in host.processes:
                _kill_group(process)
            host.processes.clear()
        for name in [host.name for host in self.hosts] + [self.bridge_namespace]:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=_COMMAND_TIMEOUT)

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def lan(count: int) -> Iterator[Lan]:
    """A LAN of `count` hosts for the duration of the block; `pytest.skip`s where not permitted."""
    try:
        network = Lan.create(count)
    except NamespacesUnavailable as error:
        pytest.skip(f"network namespaces unavailable: {error}")
    with network:
        yield network


def check_available() -> None:
    """Raise NamespacesUnavailable with the reason when this process cannot make namespaces."""
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise NamespacesUnavailable("creating network namespaces needs root")
    probe = f"tdm-{secrets.token_hex(3)}-probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"`ip netns add` failed: {result.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=10)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _kill_group(process: subprocess.Popen) -> None:
    # The process leads its own group (start_new_session), so this reaches its children too.
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
