"""Hybrid placement: tensor-parallel groups of like GPUs within a host, across hosts where the
link pays, pipeline stages otherwise; the plans compared in numbers."""

from __future__ import annotations

import pytest

from tandem.cluster.placement import DeviceAddress, Infeasible, Placement, PlacementRequest, place
from tandem.cluster.placement_groups import (
    MAX_TENSOR_PARALLEL,
    SAME_HOST_ALL_REDUCE_SECONDS,
    ring_all_reduce_seconds,
)
from tandem.cluster.topology import LinkInfo, Topology
from topologies import GB, cluster, cpu, gpu, node, uniform_shape

SHAPE = uniform_shape()  # 10 layers of 1e9 parameters: 20 GB in bf16, hidden size 4096


def exact(**options) -> PlacementRequest:
    return PlacementRequest(
        context_length=1000, num_sequences=1, memory_margin=0, device_overhead_bytes=0, **options
    )


def placed(shape, topology, request=None) -> Placement:
    result = place(shape, topology, request or exact())
    assert isinstance(result, Placement), result.reason
    return result


def layout(placement: Placement) -> list[list[str]]:
    return [[str(member) for member in stage.members] for stage in placement.stages]


def two_gpu_box(memory_gb: float = 80, bandwidth: float = 2000) -> Topology:
    return cluster(node("box", gpu(memory_gb, bandwidth, index=0), gpu(memory_gb, bandwidth, index=1)))


def test_two_like_gpus_of_one_host_run_the_model_tensor_parallel():
    placement = placed(SHAPE, two_gpu_box())
    assert layout(placement) == [["box cuda:0", "box cuda:1"]]
    stage = placement.stages[0]
    read = (10e9 + 4096 + 1e8 + 4096) * 2 + 10 * 1000 * 1000 * 2  # layers, embedding row, head, KV
    assert stage.compute_seconds == pytest.approx(read / (2 * 2000e9))  # each GPU reads half
    # Two all-reduces a layer, the embedding's, the head's all-gather, the step's broadcast.
    assert stage.all_reduce_seconds == pytest.approx((2 * 10 + 3) * SAME_HOST_ALL_REDUCE_SECONDS)
    assert stage.send_seconds == 0
    one_gpu = read / 2000e9
    assert placement.notes[0] == (
        f"compared TP=2: {placement.predicted_tokens_per_second:.1f} tokens/s, "
        f"1 device: {1 / one_gpu:.1f} tokens/s; chose TP=2"
    )
    assert placement.backend == "nccl" and stage.backend == "nccl"
    assert "box  cuda:0+cuda:1" in placement.explain()[1]


def test_a_small_model_stays_on_one_gpu_where_all_reduces_would_cost_more_than_they_save():
    small = uniform_shape(num_layers=4, layer_parameters=10_000_000, embedding_parameters=10_000_000)
    placement = placed(small, two_gpu_box())
    assert layout(placement) == [["box cuda:0"]]
    assert placement.notes[0].startswith("compared 1 device: ") and placement.notes[0].endswith(
        "chose 1 device"
    )


def test_more_devices_must_be_predicted_at_least_ten_percent_faster():
    # 1.32 GB over 2 TB/s: 0.66 ms alone; TP=2 saves 0.33 ms but spends 15 × 20 µs = 0.3 ms.
    shape = uniform_shape(num_layers=6, layer_parameters=110_000_000, embedding_parameters=1_000_000)
    placement = placed(shape, two_gpu_box())
    alone = placement.predicted_seconds_per_token
    assert layout(placement) == [["box cuda:0"]]
    assert "TP=2" in placement.notes[0]
    tp = 1 / float(placement.notes[0].split("TP=2: ")[1].split(" tokens/s")[0])
    assert alone > tp > alone / 1.1  # TP=2 is faster, but not by enough


def test_a_model_too_big_for_one_gpu_of_a_host_goes_tensor_parallel_rather_than_pipelined():
    placement = placed(SHAPE, two_gpu_box(memory_gb=14))  # 20 GB of weights: each GPU holds 10
    assert layout(placement) == [["box cuda:0", "box cuda:1"]]
    compared = placement.notes[0]
    assert "TP=2: " in compared and "PP=2: " in compared and compared.endswith("chose TP=2")
    assert placement.notes[1] == "fits on its fastest tensor-parallel group"


def test_eight_like_gpus_try_every_group_size():
    box = node("box", *(gpu(80, 2000, index=i) for i in range(8)))
    big = placed(uniform_shape(num_layers=80, layer_parameters=1_000_000_000), cluster(box))
    assert len(big.stages) == 1 and len(big.stages[0].members) == 8
    assert "box  cuda:0-7  " in big.explain()[1]
    for size in (2, 4, 8):
        assert f"TP={size}: " in big.notes[0]
    # 0.2 GB: reading takes 0.1 ms, 23 collectives 0.46 ms: no group pays.
    small = placed(uniform_shape(num_layers=10, layer_parameters=10_000_000), cluster(box))
    assert layout(small) == [["box cuda:0"]]


def two_hosts(latency: float, bandwidth: float, memory_gb: float = 14) -> Topology:
    nodes = (node("a", gpu(memory_gb, 2000)), node("b", gpu(memory_gb, 2000)))
    return Topology(nodes=nodes, links=(LinkInfo("a", "b", latency, bandwidth),))


def test_two_hosts_over_a_slow_link_are_pipelined():
    placement = placed(SHAPE, two_hosts(latency=200e-6, bandwidth=10e9 / 8))  # 10 GbE
    assert layout(placement) == [["a cuda:0"], ["b cuda:0"]]
    assert "TP=2 across hosts: " in placement.notes[0] and placement.notes[0].endswith("chose PP=2")


def test_two_hosts_over_a_fast_link_are_tensor_parallel_across_them():
    placement = placed(SHAPE, two_hosts(latency=3e-6, bandwidth=400e9 / 8))  # InfiniBand NDR
    assert layout(placement) == [["a cuda:0", "b cuda:0"]]
    stage = placement.stages[0]
    per_all_reduce = ring_all_reduce_seconds(2, 3e-6, 50e9, 4096 * 2)
    assert per_all_reduce == pytest.approx(SAME_HOST_ALL_REDUCE_SECONDS + 2 * (3e-6 + 4096 / 50e9))
    assert stage.all_reduce_seconds == pytest.approx(23 * per_all_reduce)
    assert placement.notes[0].endswith("chose TP=2 across hosts")
    assert "a cuda:0 + b cuda:0" in placement.explain()[1]


def test_gpus_of_an_unmeasured_pair_of_hosts_are_not_grouped():
    topology = Topology(nodes=(node("a", gpu(14, 2000)), node("b", gpu(14, 2000))))
    placement = placed(SHAPE, topology)
    assert layout(placement) == [["a cuda:0"], ["b cuda:0"]]
    assert not any("compared" in note for note in placement.notes)


def test_mixed_gpus_and_cpu_a_tensor_parallel_gpu_stage_and_a_cpu_stage():
    # 2 × 8 GB of like GPUs hold 7 of the 10 layers in bf16; the CPU (float32) takes the rest.
    box = node("box", gpu(8, 1000, index=0), gpu(8, 1000, index=1), cpu(128, 100))
    placement = placed(SHAPE, cluster(box))
    assert layout(placement) == [["box cuda:0", "box cuda:1"], ["box cpu"]]
    gpus, host = placement.stages
    assert len(gpus.layers) > len(host.layers)
    assert len(gpus.layers) == 7 and gpus.weight_bytes <= 2 * 8 * GB
    assert (gpus.backend, host.backend, placement.backend) == ("nccl", "gloo", "gloo")
    assert placement.notes[0].endswith("chose PP=2 (TP 2, 1)")


def test_uneven_hosts_get_uneven_pipeline_shares_and_groups_stay_of_like_gpus():
    fast = node("fast", gpu(12, 3000, index=0), gpu(12, 3000, index=1))
    slow = node("slow", gpu(24, 1000, index=0), gpu(24, 900, index=1))  # unlike: never grouped
    placement = placed(uniform_shape(num_layers=20), cluster(fast, slow))
    groups = [stage.members for stage in placement.stages if len(stage.members) > 1]
    assert groups == [(DeviceAddress("fast", "cuda:0"), DeviceAddress("fast", "cuda:1"))]
    by_device = {stage.members[0]: len(stage.layers) for stage in placement.stages}
    # The fast pair fills its memory (2 × 12 GB: 11 layers of 2 GB with the embedding).
    assert by_device[DeviceAddress("fast", "cuda:0")] == 11
    assert sum(by_device.values()) == 20


def test_groups_stop_at_the_largest_size_that_placement_tries():
    nodes = [node(f"n{i}", gpu(10, 2000)) for i in range(12)]
    links = tuple(
        LinkInfo(a.node_id, b.node_id, 2e-6, 50e9) for i, a in enumerate(nodes) for b in nodes[i + 1 :]
    )
    placement = place(uniform_shape(num_layers=40), Topology(nodes=tuple(nodes), links=links), exact())
    assert isinstance(placement, Placement)
    assert max(len(stage.members) for stage in placement.stages) <= MAX_TENSOR_PARALLEL


def test_a_forced_split_is_a_pipeline_over_exactly_the_given_devices():
    devices = (("box", "cuda:1"), ("box", "cuda:0"))
    placement = placed(SHAPE, two_gpu_box(), exact(devices=devices))
    assert layout(placement) == [["box cuda:1"], ["box cuda:0"]]


def test_a_layer_larger_than_any_gpu_fits_a_group_that_pools_their_memory():
    shape = uniform_shape(num_layers=1, layer_parameters=8_000_000_000)  # 16 GB in bf16
    result = place(shape, two_gpu_box(memory_gb=10), exact())
    assert isinstance(result, Placement) and layout(result) == [["box cuda:0", "box cuda:1"]]
    alone = place(shape, cluster(node("box", gpu(10, 2000))), exact())
    assert isinstance(alone, Infeasible) and alone.reason.startswith("layer 0 of synthetic alone needs")


def test_forced_stages_may_be_tensor_parallel_groups_of_any_one_kind():
    topology = Topology(nodes=tuple(node(name, cpu(64, 100)) for name in ("a", "b", "c")))
    group = (("a", "cpu"), ("b", "cpu"))
    placement = placed(SHAPE, topology, exact(devices=(group, ("c", "cpu"))))
    assert layout(placement) == [["a cpu", "b cpu"], ["c cpu"]]
    assert placement.notes[0] == "split over the 2 given stages"
    # The group's all-reduces cross an unmeasured link: gigabit Ethernet is assumed, and said.
    assert "no link measured between a and b: assumed 1 ms and 1 Gbit/s" in placement.notes
    first = placement.stages[0]
    per_all_reduce = ring_all_reduce_seconds(2, 1e-3, 125e6, 4096 * 4)
    assert first.all_reduce_seconds == pytest.approx(per_all_reduce * (2 * len(first.layers) + 2))
    mixed = place(
        SHAPE, cluster(node("box", gpu(80), cpu(64))), exact(devices=((("box", "cuda:0"), ("box", "cpu")),))
    )
    assert isinstance(mixed, Infeasible)
    assert mixed.reason == "a tensor-parallel group needs devices of one kind: box cuda:0 + box cpu"
