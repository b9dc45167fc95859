"""Placement of mixture-of-experts models over groups of ranks: each member holds whole experts
of its own (the largest share where they do not divide), every part held whole counted on every
member, and latent attention's compressed cache whole on every member."""

from __future__ import annotations

import pytest

from model_configs import DEEPSEEK_V3, MIXTRAL_8X7B
from tandem.cluster.placement import Placement, PlacementRequest, place
from tandem.model.config import parse_model_config
from tandem.model.shapes import shape_from_hf_config
from topologies import cluster, gpu, node


def test_a_group_member_holds_its_experts_its_share_and_every_replicated_part():
    config = parse_model_config(DEEPSEEK_V3)
    shape = shape_from_hf_config(DEEPSEEK_V3)
    group = shape.for_group(8)
    layer = 10  # sparse
    replicated = config.layer_replicated_parameter_count(layer)
    experts = config.layer_expert_parameter_count(layer)
    split = config.layer_parameter_count(layer) - replicated - experts
    member = replicated + split / 8 + experts * 32 / 256  # 256 experts: 32 a member
    assert group.layer_parameters[layer] == pytest.approx(8 * member, abs=1)
    # The latent cache is not split by heads: every member keeps all of it.
    assert group.layer_kv_elements == tuple(8 * k for k in shape.layer_kv_elements)
    # Routers, norms and the low-rank projections in front of the heads are held whole.
    mla = config.mla
    assert mla is not None
    assert replicated == (
        2 * 7168
        + 7168 * 1536
        + 1536  # q_a_proj, q_a_layernorm
        + 7168 * 576
        + 512  # kv_a_proj_with_mqa, kv_a_layernorm
        + 256 * 7168
        + 256  # router weight and correction bias
    )


def test_experts_that_do_not_divide_put_the_extra_one_on_the_largest_member():
    shape = shape_from_hf_config(MIXTRAL_8X7B)  # 8 experts a layer
    config = parse_model_config(MIXTRAL_8X7B)
    three = shape.for_group(3)  # 3, 3, 2 experts
    expert = config.layer_expert_parameter_count(0) / 8
    replicated = config.layer_replicated_parameter_count(0)
    split = config.layer_parameter_count(0) - replicated - 8 * expert
    assert three.layer_parameters[0] == pytest.approx(3 * (replicated + split / 3 + 3 * expert), abs=1)
    assert shape.for_group(1) is shape
    assert shape.for_group(2).layer_parameters[0] < three.layer_parameters[0]  # 4 a member, not 3


def test_deepseek_v3_in_fp8_on_eight_gpus_keeps_the_latent_cache_on_each():
    box = cluster(node("box", *(gpu(141, 4800, index=i) for i in range(8))))
    request = PlacementRequest(
        context_length=4096, num_sequences=4, weight_bytes_per_parameter=1, memory_margin=0.05
    )
    placement = place(shape_from_hf_config(DEEPSEEK_V3, name="deepseek-v3"), box, request)
    assert isinstance(placement, Placement), placement.explain()
    assert [len(stage.members) for stage in placement.stages] == [8]
    stage = placement.stages[0]
    latent = 61 * 576 * 4096 * 4 * 2  # layers × (latent + rotary key) × tokens × bf16
    assert stage.kv_bytes == pytest.approx(8 * latent)
    assert 671e9 < stage.weight_bytes < 1.05 * 671e9  # 8 × the largest member: a little more than once


def test_gpt_oss_stages_run_on_one_device_each_and_keep_their_experts_16_bit():
    """gpt-oss has no tensor- or expert-parallel plan: on eight like GPUs its stages are single
    devices (a pipeline), never a group; and `--quantize` leaves its stacked experts 16-bit."""
    from tandem.bench.shapes import NAMED_SHAPES
    from tandem.model.quantization import load_time_format

    raw = NAMED_SHAPES["gpt-oss-120b"]
    shape = shape_from_hf_config(raw, name="gpt-oss-120b")
    assert not shape.splits_over_ranks and shape.for_group(2).splits_over_ranks is False
    box = cluster(node("box", *(gpu(80, 3300, index=i) for i in range(8))))
    request = PlacementRequest(context_length=4096, num_sequences=4, memory_margin=0.05)
    placement = place(shape, box, request)
    assert isinstance(placement, Placement), placement.explain()
    assert len(placement.stages) >= 3  # 234 GB of bf16 weights over 80 GB cards
    assert all(len(stage.members) == 1 for stage in placement.stages)
    projections = 2 * 2880 * 64 * 64 + 2 * 2880 * 8 * 64  # q and o, k and v: all --quantize shrinks
    assert set(shape.quantized_layer_parameters(load_time_format("int4"))) == {(projections, projections)}
