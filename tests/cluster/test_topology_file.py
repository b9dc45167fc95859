"""Topology files: the shipped examples load, a topology round-trips, and bad files get one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.cluster.topology_file import load_topology, parse_topology, topology_to_dict
from tandem.errors import TandemError

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"

GOOD = {
    "nodes": [
        {
            "id": "gpu-box",
            "address": "10.0.0.2:52415",
            "devices": [
                {"kind": "cuda", "memory_total_gb": 24, "memory_bandwidth_gb_per_s": 1000},
                {
                    "kind": "cuda",
                    "memory_total_gb": 24,
                    "memory_free_gb": 20,
                    "memory_bandwidth_gb_per_s": 1000,
                },
                {"kind": "cpu", "memory_total_gb": 64, "memory_bandwidth_gb_per_s": 60, "matmul_tflops": 1.5},
            ],
        },
        {
            "id": "cpu-box",
            "devices": [{"kind": "cpu", "memory_total_gb": 256, "memory_bandwidth_gb_per_s": 150}],
        },
    ],
    "links": [{"source": "gpu-box", "target": "cpu-box", "latency_ms": 0.2, "bandwidth_gbit_per_s": 10}],
}


def test_units_are_converted_and_defaults_filled():
    topology = parse_topology(GOOD)
    box = topology.node("gpu-box")
    assert box is not None and box.name == "gpu-box" and box.address == "10.0.0.2:52415"
    assert [device.torch_device for device in box.devices] == ["cuda:0", "cuda:1", "cpu"]
    first, second, host = box.devices
    assert first.memory_total == first.memory_free == 24_000_000_000
    assert second.memory_free == 20_000_000_000
    assert first.memory_bandwidth == 1e12
    assert host.matmul_flops == 1.5e12
    link = topology.link("cpu-box", "gpu-box")  # measured one way, stands for both
    assert (
        link is not None and link.latency == pytest.approx(0.2e-3) and link.bandwidth == pytest.approx(1.25e9)
    )


def test_a_topology_round_trips_through_its_json_form():
    topology = parse_topology(GOOD)
    assert parse_topology(json.loads(json.dumps(topology_to_dict(topology)))) == topology


@pytest.mark.parametrize("name", ["four-mac-studios.json", "mixed-gpu-cpu.json"])
def test_shipped_examples_load(name):
    topology = load_topology(EXAMPLES / name)
    assert len(topology.nodes) >= 3
    assert all(node.devices for node in topology.nodes)


def broken(change) -> dict:
    raw = json.loads(json.dumps(GOOD))
    change(raw)
    return raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.pop("nodes"), "nodes must be a list"),
        (lambda raw: raw.update(nodes=[]), "nodes must list at least one node"),
        (lambda raw: raw.update(extra=1), "unknown key 'extra'"),
        (lambda raw: raw["nodes"][0].pop("id"), "nodes[0]: id is missing"),
        (lambda raw: raw["nodes"][1].update(id="gpu-box"), "node id 'gpu-box' appears twice"),
        (lambda raw: raw["nodes"][1].update(devices=[]), "devices must list at least one device"),
        (
            lambda raw: raw["nodes"][0]["devices"][0].update(kind="tpu"),
            "kind must be 'cuda' or 'cpu', got 'tpu'",
        ),
        (
            lambda raw: raw["nodes"][0]["devices"][0].pop("memory_total_gb"),
            "nodes[0] ('gpu-box').devices[0]: memory_total_gb is missing",
        ),
        (
            lambda raw: raw["nodes"][0]["devices"][2].update(memory_bandwidth_gb_per_s=-5),
            "memory_bandwidth_gb_per_s must be a positive number, got -5",
        ),
        (
            lambda raw: raw["nodes"][0]["devices"][1].update(memory_free_gb=30),
            "memory_free_gb (30) is more than memory_total_gb (24)",
        ),
        (lambda raw: raw["nodes"][0]["devices"][1].update(index=0), "device cuda:0 appears twice"),
        (
            lambda raw: raw["nodes"][0]["devices"][0].update(memory_gb=24),
            "unknown key 'memory_gb'; expected one of",
        ),
        (lambda raw: raw["links"][0].update(target="nowhere"), "links[0]: no node has id 'nowhere'"),
        (lambda raw: raw["links"][0].update(target="gpu-box"), "not 'gpu-box' to itself"),
        (lambda raw: raw["links"][0].update(latency_ms="fast"), "latency_ms must be a non-negative number"),
    ],
)
def test_bad_topologies_are_one_line_errors(change, message):
    with pytest.raises(TandemError) as error:
        parse_topology(broken(change), source="cluster.json")
    text = str(error.value)
    assert message in text
    assert text.startswith("cluster.json: ")
    assert "\n" not in text


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(TandemError, match="not found"):
        load_topology(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ nodes: ")
    with pytest.raises(TandemError, match=r"bad\.json: not valid JSON"):
        load_topology(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(TandemError, match="expected a JSON object, got list"):
        load_topology(listed)
