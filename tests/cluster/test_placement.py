"""Placement on synthetic clusters of 1 to 100 nodes: the rules, the numbers, and the speed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from model_configs import DEEPSEEK_V3, QWEN3_30B_A3B
from tandem.cluster.placement import DeviceAddress, Infeasible, Placement, PlacementRequest, place
from tandem.cluster.placement_search import SAME_NODE_BANDWIDTH, SAME_NODE_LATENCY
from tandem.cluster.topology import LinkInfo, Topology
from tandem.errors import InvalidRequestError
from tandem.model.shapes import shape_from_hf_config
from topologies import GB, cluster, cpu, gpu, node, uniform_shape

SHAPE = uniform_shape()  # 10 layers of 1e9 parameters: 2 GB each in bf16, 4 GB in float32


def exact(context: int = 1000, sequences: int = 1, **options) -> PlacementRequest:
    """A request without margin or overhead, so memory arithmetic in the tests is exact."""
    return PlacementRequest(
        context_length=context, num_sequences=sequences, memory_margin=0, device_overhead_bytes=0, **options
    )


def placed(shape, topology, request) -> Placement:
    result = place(shape, topology, request)
    assert isinstance(result, Placement), result.reason
    assert_covers_all_layers(result, shape.num_layers)
    return result


def assert_covers_all_layers(placement: Placement, num_layers: int) -> None:
    ranges = [stage.layers for stage in placement.stages]
    assert ranges[0].start == 0 and ranges[-1].end == num_layers
    assert all(len(r) >= 1 for r in ranges)
    assert all(a.end == b.start for a, b in pairwise(ranges))


def layers_on(placement: Placement, node_id: str, torch_device: str = "cuda:0") -> int:
    address = DeviceAddress(node_id, torch_device)
    return sum(len(stage.layers) for stage in placement.stages if address in stage.members)


def test_a_model_that_fits_stays_on_the_fastest_device_that_holds_it():
    # The 4 GB device is faster still but holds one layer: splitting would gain 4%, not enough.
    topology = cluster(node("slow", gpu(80, 2000)), node("fast", gpu(80, 3000)), node("small", gpu(4, 9000)))
    placement = placed(SHAPE, topology, exact())
    assert [stage.members for stage in placement.stages] == [(("fast", "cuda:0"),)]
    stage = placement.stages[0]
    read = (10e9 + 4096 + 1e8 + 4096) * 2 + 10 * 1000 * 1000 * 2  # layers, one embedding row, head, KV
    assert stage.compute_seconds == pytest.approx(read / 3000e9)
    assert stage.send_seconds == 0  # one stage: no hops
    assert placement.predicted_tokens_per_second == pytest.approx(3000e9 / read)
    assert placement.backend == "nccl"
    assert placement.notes[0] == "fits on one device, and a split over faster devices gains too little"
    alone = placed(SHAPE, cluster(node("slow", gpu(80, 2000)), node("fast", gpu(80, 3000))), exact())
    assert alone.stages == placement.stages
    assert alone.notes[0] == "fits on its fastest device"


def test_faster_gpu_gets_more_layers_than_a_cpu_node():
    # The GPU holds 7 layers in bf16 (14.2 GB with the embedding, 8 would need 16.2 GB); the CPU
    # runs float32 (4 GB a layer) and takes the rest.
    topology = cluster(node("cpu-box", cpu(64, 100)), node("gpu-box", gpu(16, 1000)))
    placement = placed(SHAPE, topology, exact())
    assert layers_on(placement, "gpu-box") == 7
    assert layers_on(placement, "cpu-box", "cpu") == 3
    assert placement.backend == "gloo"
    cpu_stage = next(stage for stage in placement.stages if stage.members[0].torch_device == "cpu")
    assert cpu_stage.weight_bytes == pytest.approx(3 * 4e9 + (1e8 + 4096) * 4)  # 3 layers and the head


def test_between_two_gpus_the_faster_one_is_filled_first():
    topology = cluster(node("slow", gpu(14, 500)), node("fast", gpu(14, 2000)))
    placement = placed(SHAPE, topology, exact())
    assert (layers_on(placement, "fast"), layers_on(placement, "slow")) == (6, 4)
    for stage in placement.stages:
        assert stage.weight_bytes + stage.kv_bytes <= 14 * GB


def test_kv_reservation_moves_layers_and_then_makes_the_model_infeasible():
    shape = uniform_shape(kv_elements=100_000)  # 200 KB per token per layer in bf16
    topology = cluster(node("gpu-box", gpu(16, 1000)), node("cpu-box", cpu(64, 100)))
    short = placed(shape, topology, exact(context=100, sequences=1))
    long = placed(shape, topology, exact(context=1000, sequences=8))  # +1.6 GB a layer on the GPU
    assert layers_on(short, "gpu-box") == 7
    assert layers_on(long, "gpu-box") == 4
    assert sum(stage.kv_bytes for stage in long.stages) > 10 * sum(stage.kv_bytes for stage in short.stages)
    result = place(shape, topology, exact(context=8000, sequences=8))
    assert isinstance(result, Infeasible)
    assert "for the KV cache (8000 tokens × 8 sequences)" in result.reason


def test_infeasible_cluster_says_what_is_needed_and_what_is_free():
    shape = uniform_shape(num_layers=50)
    topology = cluster(*(node(name, gpu(32, 1000)) for name in ("a", "b", "c")))
    result = place(shape, topology, PlacementRequest(context_length=4096))
    assert isinstance(result, Infeasible)
    # Weights: 50 layers + embedding + head in bf16; cache: 50 × 1000 × 4096 × 8 × 2 bytes.
    # Free: 3 × (32 GB × 0.9 − 1 GB).
    assert result.reason == (
        "synthetic needs 100.4 GB for weights and 3.3 GB for the KV cache (4096 tokens × 8 sequences) "
        "at 2 bytes per parameter; the cluster has 83.4 GB free on 3 devices "
        "after a 10% margin and 1.0 GB per device for activations"
    )
    assert result.explain() == [f"cannot place the model: {result.reason}"]


def test_infeasible_with_mixed_devices_names_both_dtypes():
    topology = cluster(node("g", gpu(8, 1000)), node("c", cpu(16, 100)))
    result = place(SHAPE, topology, PlacementRequest(context_length=1000))
    assert isinstance(result, Infeasible)
    assert "at 2 bytes per parameter on CUDA devices (4 on the others)" in result.reason


def test_a_layer_bigger_than_every_device_is_named():
    shape = uniform_shape(num_layers=4, layer_parameters=20_000_000_000)  # 40 GB a layer in bf16
    topology = cluster(node("a", gpu(32, 1000)), node("b", gpu(24, 1000)), node("c", cpu(64, 100)))
    result = place(shape, topology, PlacementRequest(context_length=1000, num_sequences=1))
    assert isinstance(result, Infeasible)
    # Sized on the device with the most free memory, a CPU, in float32.
    assert result.reason.startswith("layer 0 of synthetic alone needs 80.0 GB (80.0 GB of weights and 4.0 MB")
    assert "the largest, c cpu, has 56.6 GB free after a 10% margin" in result.reason


def test_aggregate_memory_is_not_enough_when_whole_layers_do_not_pack():
    # Each device holds 1.5 layers' worth: 4 devices have 12 GB for 10 GB of layers, but 1 layer
    # each. The GPUs are unlike (a tensor-parallel group of like GPUs would pool their memory).
    shape = uniform_shape(num_layers=5, embedding_parameters=0, hidden_size=0, kv_elements=0)
    topology = cluster(*(node(f"n{i}", gpu(3, 1000 + i)) for i in range(4)))
    result = place(shape, topology, exact())
    assert isinstance(result, Infeasible)
    assert result.reason.endswith("that is enough in total, but whole layers do not pack into the devices")


def test_forced_split_over_three_cpu_nodes_follows_the_given_order():
    topology = cluster(*(node(name, cpu(512, 800)) for name in ("a", "b", "c")))
    devices = (("c", "cpu"), ("a", "cpu"), ("b", "cpu"))
    placement = placed(SHAPE, topology, PlacementRequest(context_length=4096, devices=devices))
    assert [stage.members[0] for stage in placement.stages] == list(devices)
    # Equal devices get near-equal shares; the head's stage is not the one with an extra layer.
    assert sorted(len(stage.layers) for stage in placement.stages) == [3, 3, 4]
    assert len(placement.stages[-1].layers) == 3
    assert placement.notes[0] == "split over the 3 given devices"


def test_forced_split_mistakes_are_infeasible_with_reasons():
    topology = cluster(node("a", cpu()), node("b", cpu()))
    unknown = place(SHAPE, topology, exact(devices=(("a", "cpu"), ("a", "cuda:0"))))
    assert isinstance(unknown, Infeasible) and unknown.reason == "the topology has no device a cuda:0"
    tiny = uniform_shape(num_layers=1)
    too_many = place(tiny, topology, exact(devices=(("a", "cpu"), ("b", "cpu"))))
    assert isinstance(too_many, Infeasible) and "each stage needs at least one" in too_many.reason
    small = cluster(node("a", cpu(8)), node("b", cpu(8)))
    too_small = place(SHAPE, small, exact(devices=(("a", "cpu"), ("b", "cpu"))))
    assert isinstance(too_small, Infeasible) and too_small.reason.startswith("synthetic needs")
    assert "the 2 given devices have 16.0 GB free" in too_small.reason


def test_min_stages_splits_a_model_that_would_fit_on_one_device():
    topology = cluster(node("a", gpu(80)), node("b", gpu(80)))
    placement = placed(SHAPE, topology, exact(min_stages=2))
    assert len(placement.stages) == 2
    refused = place(SHAPE, topology, exact(min_stages=3))
    assert isinstance(refused, Infeasible) and "3 stages were asked for" in refused.reason


def test_a_split_over_fast_gpus_beats_one_big_slow_cpu():
    # Unlike GPUs: like ones could also form a tensor-parallel group (tested on their own below).
    topology = cluster(node("big", cpu(512, 100)), node("g1", gpu(16, 1000)), node("g2", gpu(16, 1001)))
    placement = placed(SHAPE, topology, exact())
    assert {stage.members[0].node_id for stage in placement.stages} == {"g1", "g2"}
    assert placement.notes[0].startswith("split over 2 faster devices: on big cpu alone")


def test_several_devices_of_one_node_are_offered_separately_and_kept_side_by_side():
    # The box's GPUs are unlike, so they are not offered as a tensor-parallel group as well.
    box = node("box", gpu(10, 1001, index=0), gpu(10, 1000, index=1), cpu(128, 50))
    topology = cluster(node("other", gpu(10, 900)), box)
    placement = placed(uniform_shape(num_layers=12), topology, exact())
    members = [stage.members[0] for stage in placement.stages]
    assert members[:2] == [("box", "cuda:0"), ("box", "cuda:1")]  # fastest node first, its GPUs together
    assert set(members[2:]) == {("other", "cuda:0")}  # 4 layers each: the CPU is not needed
    hop = SAME_NODE_LATENCY + 4096 * 2 / SAME_NODE_BANDWIDTH
    assert placement.stages[0].send_seconds == pytest.approx(hop)


def test_ring_order_follows_the_cheap_links():
    names = ["a", "b", "c", "d"]
    fast, slow = (0.1e-3, 10e9), (5e-3, 0.1e9)
    pairs = {("a", "c"): slow, ("b", "d"): slow, ("a", "b"): fast, ("b", "c"): fast}
    pairs.update({("c", "d"): fast, ("d", "a"): fast})
    links = tuple(LinkInfo(s, t, latency, bandwidth) for (s, t), (latency, bandwidth) in pairs.items())
    topology = Topology(nodes=tuple(node(name, gpu(6.5, 1000)) for name in names), links=links)  # 3 layers
    placement = placed(SHAPE, topology, exact())
    assert len(placement.stages) == 4
    fast_hop = 0.1e-3 + 4096 * 2 / 10e9
    assert sum(stage.send_seconds for stage in placement.stages) == pytest.approx(4 * fast_hop)


def test_the_ring_starts_elsewhere_when_its_ends_cannot_take_the_embedding_and_head():
    # 2 GB layers, a 1 GB embedding and a 1 GB head. Starting at the fastest node, its 4 GB GPU
    # would carry the embedding and hold one layer, leaving five layers for 2 × 5.2 GB: too few.
    shape = uniform_shape(num_layers=6, kv_elements=0, embedding_parameters=500_000_000, hidden_size=0)
    first = node("first", gpu(4, 3000, index=0), gpu(5.2, 2000, index=1))
    topology = cluster(first, node("second", gpu(5.2, 1000)))
    placement = placed(shape, topology, exact())
    members = [stage.members[0] for stage in placement.stages]
    assert members == [("second", "cuda:0"), ("first", "cuda:0"), ("first", "cuda:1")]
    assert [len(stage.layers) for stage in placement.stages] == [2, 2, 2]


def test_an_unmeasured_link_is_assumed_slow_and_noted():
    topology = Topology(nodes=(node("a", gpu(14, 1000)), node("b", gpu(14, 1000))))
    placement = placed(SHAPE, topology, exact())
    assert "no link measured between a and b: assumed 1 ms and 1 Gbit/s" in placement.notes
    assert placement.stages[0].send_seconds == pytest.approx(1e-3 + 4096 * 2 / 125e6)


def test_a_tied_head_is_shared_on_one_stage_and_copied_on_a_split():
    tied = uniform_shape(tied=True)
    whole = placed(tied, cluster(node("a", gpu(80))), exact())
    assert whole.stages[0].weight_bytes == (10e9 + 1e8 + 4096) * 2
    split = placed(tied, cluster(node("a", gpu(80)), node("b", gpu(80))), exact(min_stages=2))
    assert split.stages[-1].weight_bytes == pytest.approx(
        len(split.stages[-1].layers) * 2e9 + (1e8 + 4096) * 2
    )


def test_a_context_longer_than_the_model_allows_is_infeasible():
    result = place(uniform_shape(max_context=2048), cluster(node("a", gpu(80))), exact(context=4096))
    assert isinstance(result, Infeasible) and "longer than synthetic's 2048-token maximum" in result.reason


def test_a_mixture_of_experts_token_reads_only_its_experts():
    shape = shape_from_hf_config(QWEN3_30B_A3B)  # 61 GB in bf16, 6.7 GB read per token
    placement = placed(shape, cluster(node("h100", gpu(80, 3000))), PlacementRequest(context_length=4096))
    assert placement.stages[0].weight_bytes == pytest.approx(shape.total_parameter_count() * 2)
    assert placement.predicted_seconds_per_token < 3e-3


def test_explain_prints_one_line_per_stage_and_the_prediction():
    topology = cluster(node("gpu-box", gpu(16, 1000)), node("cpu-box", cpu(64, 100)))
    lines = placed(SHAPE, topology, exact()).explain()
    assert lines[0] == "synthetic: 2 stages over gloo, 1000 tokens × 1 sequences"
    assert (
        "gpu-box" in lines[1] and "cuda:0" in lines[1] and "[0, 7)" in lines[1] and "GB weights" in lines[1]
    )
    assert "cpu-box" in lines[2] and "[7, 10)" in lines[2] and lines[2].endswith(" ms")
    assert "tokens/s" in lines[3]


@pytest.mark.parametrize("num_nodes", [1, 2, 5, 20, 100])
def test_homogeneous_clusters_use_as_few_nodes_as_hold_the_model(num_nodes):
    # Each 20.5 GB GPU holds 10 layers of 2 GB (and 2 MB of cache); the model has 5 layers a node.
    shape = uniform_shape(num_layers=num_nodes * 5, embedding_parameters=0, hidden_size=0)
    topology = cluster(*(node(f"n{i:03}", gpu(20.5, 1000)) for i in range(num_nodes)))
    placement = placed(shape, topology, exact())
    needed = -(-shape.num_layers // 10)
    assert len(placement.stages) == needed
    assert len({stage.members[0] for stage in placement.stages}) == needed


def test_a_hundred_node_mixed_cluster_plans_deepseek_v3_in_well_under_a_second():
    shape = shape_from_hf_config(DEEPSEEK_V3)  # 1.34 TB in bf16, 23 GB per sparse layer
    nodes = []
    for i in range(100):
        if i % 3 == 0:
            nodes.append(node(f"n{i:03}", cpu(256 + 8 * i, 80 + i)))
        else:
            nodes.append(node(f"n{i:03}", gpu(48 + (i % 4) * 16, 900 + 10 * i), gpu(48, 900, index=1)))
    topology = cluster(*nodes)  # 4950 links
    started = time.process_time()  # this process's CPU time: a shared machine's load does not count
    result = place(shape, topology, PlacementRequest(context_length=4096))
    elapsed = time.process_time() - started
    assert isinstance(result, Placement), result.reason
    assert_covers_all_layers(result, shape.num_layers)
    assert elapsed < 1.0, f"placement took {elapsed:.2f} s"
    assert all(member.torch_device.startswith("cuda") for stage in result.stages for member in stage.members)


def test_placement_imports_no_torch():
    code = (
        "import sys, tandem.cluster.placement, tandem.cluster.topology_file, tandem.cli.place; "
        "sys.exit('torch' in sys.modules)"
    )
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_a_named_dtype_sizes_every_device_and_a_bad_one_is_refused():
    shape = shape_from_hf_config(DEEPSEEK_V3)
    settled = PlacementRequest(context_length=64, dtype="float32").for_shape(shape)
    assert settled.dtype_bytes("cuda") == settled.dtype_bytes("cpu") == 4
    assert PlacementRequest(context_length=64).for_shape(shape).dtype_bytes("cuda") == 2
    with pytest.raises(InvalidRequestError, match="dtype must be one of float32, bfloat16, float16"):
        PlacementRequest(context_length=64, dtype="int3")
