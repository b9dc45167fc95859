"""Discovery between real processes, each in its own network namespace on a private bridge.

Each probe is `python -m tandem.cluster.discovery_probe`, restricted to its namespace's address,
printing events as JSON lines. Probes refresh every second and call a peer gone after 4 s, so the
tests stay short; the defaults (3 s, 10 s) differ only in numbers.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import tandem
from netns import Host

SECRET = "correct-horse-battery-staple"
OTHER_SECRET = "another-cluster-entirely-0000"
SOURCE = str(Path(tandem.__file__).resolve().parents[1])
GONE_AFTER = 4.0
APPEAR_WITHIN = 6.0  # seconds from a probe's "ready" until its peers have seen it


class Probe:
    """One discovery process in `host`, with its events collected from stdout."""

    def __init__(self, host: Host, node_id: str, secret: str, tmp_path: Path, *extra: str) -> None:
        self.node_id = node_id
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")},
            "PYTHONPATH": SOURCE,
            "TANDEM_SECRET": secret,
            "TANDEM_HOME": str(tmp_path / node_id),  # never the user's own secret file
        }
        command = [sys.executable, "-m", "tandem.cluster.discovery_probe", "--node-id", node_id]
        command += ["--port", "52415", "--refresh-interval", "1", "--gone-after", str(GONE_AFTER)]
        command += extra or ("--interface", host.address)
        self.process = host.popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.history: list[dict] = []
        self._lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_at = self.wait_for("ready", timeout=15)["_at"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            event["_at"] = time.monotonic()
            self._lines.put(event)
        self._lines.put(None)

    def wait_for(self, name: str, timeout: float, **fields: object) -> dict:
        """The first event called `name` whose fields include `fields`, waiting up to `timeout` s."""

        def matches(event: dict) -> bool:
            return event["event"] == name and all(event.get(k) == v for k, v in fields.items())

        found = next((event for event in self.history if matches(event)), None)
        deadline = time.monotonic() + timeout
        while found is None:
            try:
                event = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                event = None
            if event is None:
                exited = self._exited()
                raise AssertionError(
                    f"{self.node_id}: no {name} event {fields} within {timeout} s; got {self.history}"
                    + (f"; exited with stderr: {self._stderr()}" if exited else "")
                )
            self.history.append(event)
            found = event if matches(event) else None
        return found

    def events(self, name: str) -> list[dict]:
        """The events called `name` received so far (drains what has arrived without waiting)."""
        while not self._lines.empty():
            event = self._lines.get_nowait()
            if event is not None:
                self.history.append(event)
        return [event for event in self.history if event["event"] == name]

    def stop(self) -> None:
        """SIGTERM: the probe withdraws its service (goodbye packets) and exits."""
        self.process.send_signal(signal.SIGTERM)
        self.wait_for("stopped", timeout=10)
        assert self.process.wait(timeout=10) == 0, self._stderr()

    def kill(self) -> None:
        """SIGKILL: gone without a word, like a machine losing power."""
        self.process.kill()
        self.process.wait(timeout=10)

    def _exited(self) -> bool:
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


def test_three_nodes_see_each_other_within_seconds(make_lan, tmp_path):
    network = make_lan(3)
    # The third restricts mDNS by interface name rather than address.
    probes = [
        Probe(network.hosts[0], "node-a", SECRET, tmp_path),
        Probe(network.hosts[1], "node-b", SECRET, tmp_path),
        Probe(network.hosts[2], "node-c", SECRET, tmp_path, "--interface", "eth0"),
    ]
    last_ready = max(probe.ready_at for probe in probes)
    for probe, host in zip(probes, network.hosts, strict=True):
        for other in probes:
            if other is not probe:
                seen = other.wait_for("seen", timeout=APPEAR_WITHIN, node_id=probe.node_id)
                assert seen["addresses"] == [host.address]
                assert seen["port"] == 52415
                assert seen["version"] == ".".join(tandem.__version__.split(".")[:2])
                assert seen["_at"] - last_ready < APPEAR_WITHIN
    for probe in probes:
        assert {event["node_id"] for event in probe.events("seen")} == {
            other.node_id for other in probes if other is not probe
        }
        assert probe.events("rejected") == []


def test_node_with_another_secret_is_rejected_with_the_reason(make_lan, tmp_path):
    network = make_lan(3)
    first = Probe(network.hosts[0], "node-a", SECRET, tmp_path)
    second = Probe(network.hosts[1], "node-b", SECRET, tmp_path)
    outsider = Probe(network.hosts[2], "node-x", OTHER_SECRET, tmp_path)
    for probe in (first, second):
        rejected = probe.wait_for("rejected", timeout=APPEAR_WITHIN, node_id="node-x")
        assert rejected["reason"] == "different cluster secret"
        assert rejected["address"] == f"{network.hosts[2].address}:52415"
        assert rejected["message"] == (
            f"ignoring node node-x at {network.hosts[2].address}:52415: different cluster secret"
        )
    first.wait_for("seen", timeout=APPEAR_WITHIN, node_id="node-b")
    outsider.wait_for("rejected", timeout=APPEAR_WITHIN, node_id="node-a")
    time.sleep(2.5)  # a few refreshes: still never seen, and the rejection is not repeated
    for probe in (first, second):
        assert all(event["node_id"] != "node-x" for event in probe.events("seen"))
        assert len([e for e in probe.events("rejected") if e["node_id"] == "node-x"]) == 1
    assert outsider.events("seen") == []


def test_protocol_version_mismatch_is_rejected(make_lan, tmp_path):
    network = make_lan(2)
    current = Probe(network.hosts[0], "node-a", SECRET, tmp_path)
    future = Probe(
        network.hosts[1],
        "node-f",
        SECRET,
        tmp_path,
        "--interface",
        network.hosts[1].address,
        "--protocol",
        "99",
    )
    rejected = current.wait_for("rejected", timeout=APPEAR_WITHIN, node_id="node-f")
    assert rejected["reason"].startswith("incompatible protocol version 99 ")
    assert "run the same Tandem version on every machine" in rejected["reason"]
    future.wait_for("rejected", timeout=APPEAR_WITHIN, node_id="node-a")
    assert current.events("seen") == []


def test_stopped_node_is_gone_at_once_and_killed_node_after_the_timeout(make_lan, tmp_path):
    network = make_lan(3)
    watcher = Probe(network.hosts[0], "node-a", SECRET, tmp_path)
    stopped = Probe(network.hosts[1], "node-b", SECRET, tmp_path)
    killed = Probe(network.hosts[2], "node-c", SECRET, tmp_path)
    watcher.wait_for("seen", timeout=APPEAR_WITHIN, node_id="node-b")
    watcher.wait_for("seen", timeout=APPEAR_WITHIN, node_id="node-c")

    stopped_at = time.monotonic()
    stopped.stop()
    gone = watcher.wait_for("gone", timeout=3, node_id="node-b")
    assert gone["reason"] == "withdrew its announcement"
    assert gone["_at"] - stopped_at < 3

    killed_at = time.monotonic()
    killed.kill()
    gone = watcher.wait_for("gone", timeout=GONE_AFTER + 3, node_id="node-c")
    assert gone["reason"] == f"no fresh announcement for {GONE_AFTER:.0f} s"
    # Its last refresh came up to a second before the kill, so the timeout can end a bit early.
    assert GONE_AFTER - 1.5 < gone["_at"] - killed_at < GONE_AFTER + 3


def test_static_peers_only_sends_no_multicast(make_lan, tmp_path):
    network = make_lan(2)
    announcing = Probe(network.hosts[0], "node-a", SECRET, tmp_path)
    quiet_host = network.hosts[1]
    quiet = Probe(
        quiet_host, "node-q", SECRET, tmp_path, "--no-mdns", "--peers", f"{network.hosts[0].address}:52415"
    )
    candidate = quiet.wait_for("candidate", timeout=1)
    assert candidate["address"] == f"{network.hosts[0].address}:52415"
    # No mDNS socket at all in the quiet namespace: it can neither send nor hear multicast.
    sockets = quiet_host.run(["ss", "-H", "-u", "-a", "-n"]).stdout
    assert ":5353" not in sockets, sockets
    time.sleep(2.5)
    assert announcing.events("seen") == []
    assert quiet.events("seen") == []


def test_second_node_with_the_same_id_refuses_to_start(make_lan, tmp_path):
    network = make_lan(2)
    Probe(network.hosts[0], "node-a", SECRET, tmp_path)
    environment = {**os.environ, "PYTHONPATH": SOURCE, "TANDEM_SECRET": SECRET, "TANDEM_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "tandem.cluster.discovery_probe", "--node-id", "node-a", "--port", "1"]
    result = network.hosts[1].run(command, env=environment, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "error: another node on this network already announces node id node-a; "
        "was its data directory copied? give each machine its own\n"
    )
