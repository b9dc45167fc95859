"""Nodes on one host share its RAM: each reports the same host id, and placement offers each of
their CPUs its share of the host's free memory rather than all of it (pure function, and real
nodes on loopback, which are processes of one machine)."""

from __future__ import annotations

import re

from nodes import running_nodes, wait_for
from tandem.cluster.placement import Infeasible, Placement, PlacementRequest, place
from tandem.cluster.shared_hosts import split_shared_memory
from tandem.cluster.topology import DeviceInfo, NodeInfo, Topology
from tandem.model.shapes import ModelShape

GB = 10**9


def cpu(free: int) -> DeviceInfo:
    return DeviceInfo(
        "cpu", 0, "cpu", memory_total=free, memory_free=free, matmul_flops=1e11, memory_bandwidth=2e10
    )


def gpu(free: int) -> DeviceInfo:
    return DeviceInfo(
        "cuda", 0, "gpu", memory_total=free, memory_free=free, matmul_flops=1e14, memory_bandwidth=1e12
    )


def node(name: str, host: str, *devices: DeviceInfo) -> NodeInfo:
    return NodeInfo(name, name, f"{name}:1", devices, host=host)


def test_cpus_of_one_host_share_its_ram_and_gpus_and_other_hosts_keep_theirs():
    topology = Topology(
        (
            node("a", "h1", cpu(30 * GB), gpu(24 * GB)),
            node("b", "h1", cpu(30 * GB)),
            node("c", "h1", cpu(30 * GB)),
            node("d", "h2", cpu(30 * GB)),
            node("e", "", cpu(30 * GB)),  # unknown host (a topology file): never shared
            node("f", "", cpu(30 * GB)),
        )
    )
    shared = split_shared_memory(topology)
    free = {n.node_id: [d.memory_free for d in n.devices] for n in shared.nodes}
    assert free == {
        "a": [10 * GB, 24 * GB],
        "b": [10 * GB],
        "c": [10 * GB],
        "d": [30 * GB],
        "e": [30 * GB],
        "f": [30 * GB],
    }
    assert split_shared_memory(Topology((node("a", "h1", cpu(GB)), node("d", "h2", cpu(GB))))) == Topology(
        (node("a", "h1", cpu(GB)), node("d", "h2", cpu(GB)))
    )


def test_a_capped_cpu_keeps_its_cap_as_its_share():
    capped = DeviceInfo(
        "cpu",
        0,
        "cpu",
        memory_total=GB,
        memory_free=GB,
        matmul_flops=1e11,
        memory_bandwidth=2e10,
        memory_capped=True,
    )
    shared = split_shared_memory(Topology((node("a", "h1", capped), node("b", "h1", cpu(30 * GB)))))
    assert [n.devices[0].memory_free for n in shared.nodes] == [GB, 15 * GB]


def test_placement_does_not_fill_a_shared_host_twice():
    # 10 GB of weights (one byte a parameter): two hosts of 8 GB hold them, one host of 8 GB
    # shared by two nodes does not, however its nodes each report all of it.
    shape = ModelShape(
        name="wide",
        layer_parameters=(1_250_000_000,) * 8,
        layer_parameters_read=(1_250_000_000,) * 8,
        layer_kv_elements=(1024,) * 8,
        embedding_parameters=1000,
        head_parameters=1000,
        tie_word_embeddings=False,
        hidden_size=1024,
        max_context=4096,
    )
    request = PlacementRequest(
        context_length=1024,
        num_sequences=1,
        memory_margin=0.0,
        device_overhead_bytes=0,
        weight_bytes_per_parameter=1,
    )
    apart = Topology((node("a", "h1", cpu(8 * GB)), node("b", "h2", cpu(8 * GB))))
    together = Topology((node("a", "h1", cpu(8 * GB)), node("b", "h1", cpu(8 * GB))))
    assert isinstance(place(shape, apart, request), Placement)
    refused = place(shape, together, request)
    assert isinstance(refused, Infeasible) and "8.0 GB free on 2 devices" in refused.reason, refused


def test_nodes_on_one_machine_report_one_host_and_offer_their_share(tmp_path):
    with running_nodes(tmp_path, 2) as nodes:
        wait_for(lambda: len(nodes[0].cluster()["nodes"]) == 2, timeout=30, what="the nodes to meet")
        view = nodes[0].cluster()
        hosts = {n["host"] for n in view["nodes"]}
        assert len(hosts) == 1 and re.fullmatch(r"[0-9a-f]{16}", hosts.pop())
        me = next(n for n in view["nodes"] if n["node_id"] == view["self"])
        free = next(d for d in me["devices"] if d["kind"] == "cpu")["memory_free"]
        # Far more KV cache than the machine holds: the reason says what the one CPU offers.
        answer = (
            nodes[0]
            .http.post(
                "/v1/placements",
                json={
                    "model": "demo",
                    "context": 1024,
                    "sequences": 100_000,
                    "devices": [f"{view['self']}/cpu"],
                },
            )
            .json()
        )
        assert answer["feasible"] is False, answer
        found = re.search(r"ha(?:s|ve) ([\d.]+) GB free", answer["reason"])
        assert found, answer["reason"]
        offered = float(found.group(1))
        share = (free / 2 * 0.9 - 1e9) / 1e9  # half the host's RAM, after the margin and overhead
        assert abs(offered - share) < 1.0, (offered, share, free, answer["reason"])
