"""Mixture-of-experts and latent-attention configs: what the engine counts against what
`transformers` builds, which layers are sparse, and one-line refusals of what is not supported."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_configs import DEEPSEEK_V3, KIMI_K2, QWEN3_30B_A3B
from tandem.engine.loader import load_stage
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import engine_refusal, parse_model_config
from tandem.model.shapes import shape_from_hf_config


def test_parameter_counts_equal_what_transformers_builds(moe_checkpoint_factory, moe_family):
    checkpoint = moe_checkpoint_factory(moe_family)
    config = parse_model_config(checkpoint.config)
    reference = checkpoint.model
    biases = sum(
        b.numel() for name, b in reference.named_buffers() if name.endswith("e_score_correction_bias")
    )
    assert config.total_parameter_count() == sum(p.numel() for p in reference.parameters()) + biases
    for index, layer in enumerate(reference.model.layers):
        held = sum(p.numel() for p in layer.parameters())
        held += sum(
            b.numel() for name, b in layer.named_buffers() if name.endswith("e_score_correction_bias")
        )
        assert config.layer_parameter_count(index) == held, f"layer {index}"
    shape = shape_from_hf_config(checkpoint.config)
    assert shape.layer_parameters == tuple(config.layer_parameter_count(i) for i in range(config.num_layers))
    assert set(shape.layer_kv_elements) == {config.kv_elements_per_token()}


def test_sparse_layers_follow_each_family_rule():
    deepseek = parse_model_config({**DEEPSEEK_V3, "first_k_dense_replace": 3, "moe_layer_freq": 2})
    assert deepseek.moe is not None
    assert [deepseek.is_sparse_layer(i) for i in range(8)] == [False] * 3 + [False, True, False, True, False]
    qwen = parse_model_config({**QWEN3_30B_A3B, "mlp_only_layers": [0, 5], "decoder_sparse_step": 1})
    assert [qwen.is_sparse_layer(i) for i in range(6)] == [False, True, True, True, True, False]
    with pytest.raises(ValueError, match="name the layer"):
        qwen.layer_parameter_count()
    # transformers 5 saves Qwen3-MoE's `num_experts` as `num_local_experts`: either is read.
    renamed = {key: value for key, value in QWEN3_30B_A3B.items() if key != "num_experts"}
    assert parse_model_config({**renamed, "num_local_experts": 128}) == parse_model_config(QWEN3_30B_A3B)


def test_latent_attention_softmax_scale_follows_yarn_mscale():
    plain = parse_model_config(DEEPSEEK_V3).mla
    assert plain is not None and plain.softmax_scale == pytest.approx(192**-0.5)
    yarn = {
        **DEEPSEEK_V3,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
        },
    }
    config = parse_model_config(yarn)
    mscale = 0.1 * 1.0 * torch.log(torch.tensor(40.0)).item() + 1.0
    assert config.mla.softmax_scale == pytest.approx(192**-0.5 * mscale**2)  # type: ignore[union-attr]
    assert config.rope.cos_sin_scale == 1.0  # equal mscales: cos and sin untouched
    assert config.head_dim == 64 and config.num_kv_heads == config.num_attention_heads
    assert config.kv_bytes_per_token(2) == 61 * 576 * 2


@pytest.mark.parametrize(
    ("change", "field", "supported"),
    [
        ({"topk_method": "greedy"}, "topk_method 'greedy'", "noaux_tc"),
        ({"scoring_func": "softmax"}, "scoring_func 'softmax'", "sigmoid"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'", "yarn"),
        ({"model_type": "deepseek_v2"}, "model_type 'deepseek_v2'", "deepseek_v3"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'", "silu"),
    ],
)
def test_unsupported_router_rope_or_architecture_fails_at_load_in_one_line(
    moe_checkpoint_factory, tmp_path, change, field, supported
):
    checkpoint = moe_checkpoint_factory("deepseek-v3-direct-q")
    directory = tmp_path / "edited"
    shutil.copytree(checkpoint.path, directory)
    config = {**checkpoint.config, **change}
    if "rope_scaling" in change:  # the older spelling counts only without rope_parameters
        config.pop("rope_parameters", None)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as error:
        load_stage(directory, None, torch.device("cpu"), torch.float32)
    message = str(error.value)
    assert "\n" not in message and field in message and supported in message
    assert engine_refusal(config) == message


def test_quantized_weights_are_refused_not_read_as_floats(moe_checkpoint_factory, tmp_path):
    checkpoint = moe_checkpoint_factory("kimi-k2")
    directory = tmp_path / "fp8"
    shutil.copytree(checkpoint.path, directory)
    quantized = {
        **checkpoint.config,
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    }
    (directory / "config.json").write_text(json.dumps(quantized))
    # A config declaring FP8 over 16-bit tensors: refused, never read as floats (quantized
    # experts themselves load: tests/engine/test_quantized_experts.py).
    with pytest.raises(ModelFormatError, match=r"declares fp8 quantization, but no layer"):
        load_stage(directory, None, torch.device("cpu"), torch.float32)
    # Placement still sizes it (it plans FP8 checkpoints at one byte a weight).
    assert (
        shape_from_hf_config(quantized).total_parameter_count()
        == parse_model_config(quantized).total_parameter_count()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_group": 5, "topk_group": 1}, "n_group (5) must divide the 384 routed experts"),
        ({"num_experts_per_tok": 400}, "num_experts_per_tok (400)"),
        ({"topk_group": 9, "n_group": 8}, "topk_group (9)"),
    ],
)
def test_inconsistent_routing_is_a_format_error(change, message):
    with pytest.raises(ModelFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_config({**KIMI_K2, **change})
