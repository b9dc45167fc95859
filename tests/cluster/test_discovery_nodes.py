"""Real nodes on separate hosts (network namespaces on a private bridge) find each other with
zero configuration: no --peers, only mDNS on their LAN interface. A node with another secret
is seen and refused, and says why in the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tandem
from nodes import TEST_SECRET, wait_for

SOURCE = str(Path(tandem.__file__).resolve().parents[1])
PORT = 52525
PEEK = (
    "import json, sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)


def start_node(host, tmp_path: Path, secret: str):
    log = (tmp_path / f"{host.name}.log").open("w")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")},
        "PYTHONPATH": SOURCE,
        "TANDEM_SECRET": secret,
    }
    command = [
        sys.executable,
        "-m",
        "tandem.cli.main",
        "node",
        "--host",
        host.address,
        "--port",
        str(PORT),
        "--discovery",
        host.address,
        "--devices",
        "cpu",
        "--data-dir",
        str(tmp_path / host.name),
    ]
    host.popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    return tmp_path / f"{host.name}.log"


def cluster_seen_from(host) -> dict:
    result = host.run([sys.executable, "-c", PEEK, f"http://{host.address}:{PORT}/v1/cluster"], check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def test_nodes_on_a_lan_discover_each_other_and_refuse_another_cluster(make_lan, tmp_path):
    network = make_lan(4)
    members, outsider = network.hosts[:3], network.hosts[3]
    logs = [start_node(host, tmp_path, TEST_SECRET) for host in members]
    outsider_log = start_node(outsider, tmp_path, "a-different-cluster-secret-42")

    def everyone_sees_three() -> bool:
        views = [cluster_seen_from(host) for host in members]
        return (
            all(len(view.get("nodes", [])) == 3 for view in views)
            and len({v["coordinator"] for v in views}) == 1
        )

    wait_for(everyone_sees_three, timeout=40, interval=1.0, what="three nodes to discover each other")
    addresses = {node["address"] for node in cluster_seen_from(members[0])["nodes"]}
    assert addresses == {f"{host.address}:{PORT}" for host in members}
    wait_for(lambda: "different cluster secret" in logs[0].read_text(), timeout=20, what="the refusal logged")
    assert len(cluster_seen_from(outsider).get("nodes", [])) == 1
    assert "different cluster secret" in outsider_log.read_text()
