"""Placement counts the bytes quantized weights really take: packed values plus scales and zero
points for the projections a format quantizes, 16 bits for everything else; CPUs hold 16-bit
checkpoints in 16 bits. Checked against the engine's own count of a loaded stage."""

from __future__ import annotations

import json

import pytest
import torch

from model_configs import DEEPSEEK_V3, KIMI_K2, LLAMA_3_8B
from tandem.cluster.placement import Placement, PlacementRequest, place
from tandem.errors import InvalidRequestError, UnsupportedModelError
from tandem.model.config import parse_model_config
from tandem.model.quantization import load_time_format, parse_quantization
from tandem.model.shapes import shape_from_hf_config
from topologies import cluster, cpu, gpu, node

KIMI_K2_THINKING_QUANTIZATION = {  # as the checkpoint ships it: only the routed experts int4
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "quantization_status": "compressed",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "input_activations": None,
            "output_activations": None,
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": 32,
                "dynamic": False,
                "actorder": None,
            },
        }
    },
    "ignore": [
        "lm_head",
        "re:.*self_attn.*",
        "re:.*shared_experts.*",
        "re:.*mlp\\.(gate|up|gate_up|down)_proj.*",
    ],
    "kv_cache_scheme": None,
}


def exact(**options) -> PlacementRequest:
    return PlacementRequest(
        context_length=options.pop("context", 1024),
        num_sequences=1,
        memory_margin=0,
        device_overhead_bytes=0,
        **options,
    )


def one_stage(shape, request, device=None) -> Placement:
    result = place(shape, cluster(node("a", device or gpu(2000, 3000))), request)
    assert isinstance(result, Placement), result.reason
    return result


def test_llama_8b_in_int4_counts_packed_layers_and_int8_ends():
    shape = shape_from_hf_config({**LLAMA_3_8B, "torch_dtype": "bfloat16"})
    bf16 = one_stage(shape, exact()).stages[0].weight_bytes
    int4 = one_stage(shape, exact(quantize="int4"))
    int8 = one_stage(shape, exact(quantize="int8")).stages[0].weight_bytes
    hidden, vocab, layers = 4096, 128256, 32
    linear = 2 * hidden * 4096 + 2 * hidden * 1024 + 3 * hidden * 14336  # per layer
    norms = 2 * hidden
    group_bytes = 0.5 + (2 + 1) / 128  # a value, and a 16-bit scale and an 8-bit zero per 128
    row_bytes = 1 + 2 / hidden  # int8 rows with one 16-bit scale each
    expected = layers * (linear * group_bytes + norms * 2) + 2 * vocab * hidden * row_bytes + hidden * 2
    assert int4.stages[0].weight_bytes == pytest.approx(expected)
    assert int8 == pytest.approx(
        layers * (linear * row_bytes + norms * 2) + 2 * vocab * hidden * row_bytes + hidden * 2
    )
    assert int4.stages[0].weight_bytes < 0.33 * bf16
    assert int4.explain()[1] == "weights: int4 (groups of 128, asymmetric), quantized at load; head int8"
    assert int4.predicted_tokens_per_second > 2.5 * one_stage(shape, exact()).predicted_tokens_per_second


def test_deepseek_v3_fp8_counts_one_byte_a_projection_weight():
    raw = {
        **DEEPSEEK_V3,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
    }
    shape = shape_from_hf_config(raw)
    plain = shape_from_hf_config(DEEPSEEK_V3)
    total = plain.total_parameter_count()
    stage = one_stage(shape, exact()).stages[0]
    quantized = sum(stored for stored, _ in shape.quantized_layer_parameters(shape.quantization))
    assert total > quantized > 0.99 * total  # all but embedding, head, norms and routers
    fp8 = 1 + 4 / (128 * 128)
    assert stage.weight_bytes == pytest.approx(quantized * fp8 + (total - quantized) * 2)
    # 671 B parameters at ~1 byte (the published 688 GB adds the unused multi-token-prediction layer)
    assert stage.weight_bytes / 1e9 == pytest.approx(673, abs=2)


def test_kimi_k2_thinking_counts_only_its_int4_experts():
    raw = {**KIMI_K2, "torch_dtype": "bfloat16", "quantization_config": KIMI_K2_THINKING_QUANTIZATION}
    shape = shape_from_hf_config(raw)
    fmt = shape.quantization
    assert fmt is not None and fmt.head is None
    assert fmt.quantizes("model.layers.5.mlp.experts.17.down_proj")
    assert not fmt.quantizes("model.layers.5.self_attn.q_a_proj")
    assert not fmt.quantizes("model.layers.5.mlp.shared_experts.down_proj")
    assert not fmt.quantizes("model.layers.0.mlp.down_proj")  # the dense first layer
    per_layer = shape.quantized_layer_parameters(fmt)
    assert per_layer[0] == (0, 0)
    experts = 384 * 3 * 7168 * 2048
    assert per_layer[5][0] == experts and per_layer[5][1] == 8 * 3 * 7168 * 2048
    held = one_stage(shape, exact()).stages[0].weight_bytes
    assert held / 1e9 == pytest.approx(594, abs=10)  # the published checkpoint is ~594 GB


def test_cpus_hold_sixteen_bit_and_quantized_checkpoints_in_sixteen_bits():
    machine = cpu(2000, 100)
    for dtype, expected in (("bfloat16", 2), ("float16", 2), ("float32", 4)):
        shape = shape_from_hf_config({**LLAMA_3_8B, "torch_dtype": dtype})
        placement = one_stage(shape, exact(), machine)
        assert placement.request.cpu_dtype_bytes == expected
    shape = shape_from_hf_config(LLAMA_3_8B)  # float32
    assert one_stage(shape, exact(quantize="int8"), machine).request.cpu_dtype_bytes == 2
    assert one_stage(shape, exact(cpu_dtype_bytes=4), machine).request.cpu_dtype_bytes == 4


def test_a_model_too_big_in_bf16_fits_in_int4():
    shape = shape_from_hf_config({**LLAMA_3_8B, "torch_dtype": "bfloat16"})
    small = cluster(node("a", gpu(10, 1000)))
    assert "needs 16.1 GB for weights" in place(shape, small, exact()).reason
    fits = place(shape, small, exact(quantize="int4"))
    assert isinstance(fits, Placement)
    assert fits.weight_format.startswith("int4")


def test_quantizing_a_quantized_checkpoint_or_an_unknown_mode_is_refused():
    raw = {**LLAMA_3_8B, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    with pytest.raises(InvalidRequestError, match="already quantized"):
        place(shape_from_hf_config(raw), cluster(node("a", gpu())), exact(quantize="int8"))
    with pytest.raises(InvalidRequestError, match="quantize must be one of int8, int4"):
        exact(quantize="int2")
    with pytest.raises(UnsupportedModelError, match="quant_method 'bitsandbytes'"):
        shape_from_hf_config({**LLAMA_3_8B, "quantization_config": {"quant_method": "bitsandbytes"}})


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_engine_holds_what_placement_counted(tmp_path, checkpoint_factory, mode):
    from tandem.engine.loader import load_stage, parameter_bytes
    from tandem.model.stage import LayerRange, StageSpec

    # every input size a multiple of 128, so int4 groups are the 128 that placement counts
    checkpoint = checkpoint_factory("llama-gqa", hidden_size=128, intermediate_size=256)
    config = json.loads((checkpoint.path / "config.json").read_text())
    shape = shape_from_hf_config({**config, "torch_dtype": "bfloat16"})
    request = exact(quantize=mode, context=64, devices=(("a", "cuda:0"), ("a", "cuda:1")))
    placement = place(shape, cluster(node("a", gpu(1, 100, 0), gpu(1, 100, 1))), request)
    assert isinstance(placement, Placement), placement.reason
    for stage in placement.stages:
        spec = StageSpec(LayerRange(stage.layers.start, stage.layers.end), shape.num_layers)
        model = load_stage(checkpoint.path, spec, torch.device("cpu"), torch.bfloat16, quantize=mode)
        # CPUs hold int4 scales and zeros both in 16 bits (1 byte a group more than on GPUs)
        assert parameter_bytes(model) == pytest.approx(stage.weight_bytes, rel=0.03)


def test_the_format_line_of_every_supported_method():
    assert load_time_format("int8").label == "int8 (per channel, symmetric), quantized at load"
    awq = parse_quantization({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}})
    assert awq is not None and awq.label == "int4 (groups of 128, asymmetric), AWQ"
    gptq = parse_quantization({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": -1}})
    assert gptq is not None and gptq.label == "int8 (per channel, asymmetric), GPTQ"
    config = parse_model_config({**LLAMA_3_8B, "quantization_config": {"quant_method": "fp8"}})
    assert config.quantization is not None
    assert config.quantization.label == "fp8 e4m3 (one scale per tensor), FP8 checkpoint"
