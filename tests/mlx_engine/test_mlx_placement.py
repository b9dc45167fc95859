"""Where MLX devices go: placement sizes a Metal device at 16 bits and runs a pipeline through
it over gloo, offers no MLX device for load-time quantization (the PyTorch engine's alone) and
puts none in a tensor-parallel group; a runner spec refuses what an MLX stage cannot be; a node
started with `--engine mlx` offers its CPU as an MLX device measured through MLX."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mlx_support import require_mlx

from tandem.cluster.placement import Infeasible, Placement, PlacementRequest, place
from tandem.cluster.topology import DeviceInfo
from tandem.cluster.topology_file import parse_topology, topology_to_dict
from tandem.errors import TandemError
from tandem.node.profile import node_engine, with_engine
from tandem.protocol.runner import RunnerSpec
from topologies import GB, cluster, cpu, gpu, node, uniform_shape

SHAPE = uniform_shape(num_layers=10, layer_parameters=1_000_000_000, embedding_parameters=100_000_000)


def metal(memory_gb: float) -> DeviceInfo:
    return replace(cpu(memory_gb, bandwidth_gb_per_s=400), kind="metal", name="Apple M-series", engine="mlx")


def request(**options) -> PlacementRequest:
    return PlacementRequest(context_length=1000, memory_margin=0, device_overhead_bytes=0, **options)


def test_a_pipeline_runs_through_a_metal_device_at_16_bits_over_gloo():
    # 10 GB of 16-bit layers: a 12 GB GPU and a 12 GB Mac together, neither alone.
    topology = cluster(node("gpu", gpu(12)), node("mac", metal(12)))
    placement = place(SHAPE, topology, request())
    assert isinstance(placement, Placement), placement.reason
    assert {member.torch_device for stage in placement.stages for member in stage.members} == {
        "cuda:0",
        "metal",
    }
    assert placement.backend == "gloo"
    assert [stage.engine for stage in placement.stages] == ["torch", "mlx"]
    # The plan's lines say which stage MLX computes (`tandem place` and the dashboard print them).
    lines = placement.explain()
    assert [line.split()[2:4] for line in lines if line.startswith("  stage")] == [
        ["gpu", "cuda:0"],
        ["mac", "metal"],
    ]
    assert "mac  metal (mlx)  layers" in lines[2]
    assert "(mlx)" not in lines[1]


def test_an_mlx_cpu_is_sized_at_32_bits_unless_a_dtype_is_asked():
    # Ten 16-bit layers of 2 GB fit on two 12 GB CPUs, not when one runs MLX (float32: 4 GB each).
    mlx_cpu = replace(cpu(12), engine="mlx")
    shape = replace(SHAPE, checkpoint_dtype="bfloat16")
    assert isinstance(place(shape, cluster(node("a", cpu(12)), node("b", cpu(12))), request()), Placement)
    assert isinstance(place(shape, cluster(node("a", cpu(12)), node("b", mlx_cpu)), request()), Infeasible)
    asked = request(dtype="bfloat16")
    assert isinstance(place(shape, cluster(node("a", cpu(12)), node("b", mlx_cpu)), asked), Placement)


def test_no_mlx_device_is_offered_to_quantize_as_it_loads():
    topology = cluster(node("gpu", gpu(24)), node("mac", metal(64)))
    placement = place(SHAPE, topology, request(quantize="int8"))
    assert isinstance(placement, Placement), placement.reason
    assert [member.torch_device for stage in placement.stages for member in stage.members] == ["cuda:0"]


def test_an_mlx_device_is_not_put_in_a_tensor_parallel_group():
    mlx_cpu = replace(cpu(64), engine="mlx")
    topology = cluster(node("a", mlx_cpu), node("b", cpu(64)))
    result = place(SHAPE, topology, request(devices=((("a", "cpu"), ("b", "cpu")),)))
    assert isinstance(result, Infeasible)
    assert "MLX device runs a stage on its own" in result.reason


def spec(**fields) -> RunnerSpec:
    base = dict(
        instance_id="i",
        rank=1,
        world_size=2,
        model_dir="m",
        layer_start=2,
        layer_end=4,
        num_layers=4,
        device="cpu",
        dtype=None,
        max_context=64,
        num_slots=2,
        max_prefill_tokens=64,
        engine="mlx",
    )
    return RunnerSpec(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(world_size=3, stage_sizes=(1, 2)), "tensor-parallel group"),
        (dict(backend="nccl"), "over gloo"),
        (dict(quantize="int8"), "does not quantize as it loads"),
        (dict(random_weights_seed=0), "random weights"),
    ],
)
def test_a_runner_spec_refuses_what_an_mlx_stage_cannot_be(fields, message):
    with pytest.raises(ValueError, match=message):
        spec(**fields)


def test_a_spec_names_its_engine_through_the_codec():
    assert RunnerSpec.from_json(spec().to_json()).engine == "mlx"
    assert RunnerSpec.from_json(spec(engine="torch").to_json()).engine == "torch"


def test_a_node_given_to_mlx_offers_its_cpu_as_an_mlx_device_measured_through_mlx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    require_mlx()
    import tandem.mlx.profile as mlx_profile

    devices = (gpu(24), cpu(64))
    assert node_engine("torch") == "torch"
    assert with_engine(devices, "torch", tmp_path) == devices
    assert node_engine("mlx") == "mlx"
    kept, mlx_cpu = with_engine(devices, "mlx", tmp_path)
    assert kept == devices[0]
    assert (mlx_cpu.kind, mlx_cpu.engine, mlx_cpu.torch_device) == ("cpu", "mlx", "cpu")
    assert mlx_cpu.matmul_flops > 0 and mlx_cpu.memory_bandwidth > 0 and mlx_cpu.memory_total > GB

    def no_measuring(*args: object) -> float:
        raise AssertionError("measured again")

    # The next start reads the rates the first one measured; --remeasure measures again.
    monkeypatch.setattr(mlx_profile, "matmul_flops", no_measuring)
    _, again = with_engine(devices, "mlx", tmp_path)
    assert (again.matmul_flops, again.memory_bandwidth) == (mlx_cpu.matmul_flops, mlx_cpu.memory_bandwidth)
    with pytest.raises(AssertionError, match="measured again"):
        with_engine(devices, "mlx", tmp_path, remeasure=True)


def test_mlx_asked_for_a_node_that_offers_no_cpu_is_refused(tmp_path: Path):
    with pytest.raises(TandemError, match=r"offers no CPU \(devices: cuda:0\): add cpu to --devices"):
        with_engine((gpu(24),), "mlx", tmp_path)


def test_a_topology_file_describes_mlx_devices():
    nodes = [
        {
            "id": "mac",
            "devices": [{"kind": "metal", "memory_total_gb": 64, "memory_bandwidth_gb_per_s": 400}],
        },
        {
            "id": "box",
            "devices": [
                {"kind": "cpu", "engine": "mlx", "memory_total_gb": 32, "memory_bandwidth_gb_per_s": 50}
            ],
        },
    ]
    topology = parse_topology({"nodes": nodes})
    assert [(d.kind, d.engine, d.torch_device) for n in topology.nodes for d in n.devices] == [
        ("metal", "mlx", "metal"),
        ("cpu", "mlx", "cpu"),
    ]
    assert parse_topology(topology_to_dict(topology)) == topology
    nodes[0]["devices"][0]["engine"] = "torch"
    with pytest.raises(TandemError, match="a metal device runs engine 'mlx', not 'torch'"):
        parse_topology({"nodes": nodes})
