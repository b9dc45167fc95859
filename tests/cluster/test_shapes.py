"""Model shapes against the parameter counts their makers publish (configs written inline, no hub)."""

from __future__ import annotations

import json

import pytest

from model_configs import DEEPSEEK_V3, KIMI_K2, LLAMA_3_8B, MIXTRAL_8X7B, QWEN3_30B_A3B, QWEN3_235B_A22B
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.config import parse_model_config
from tandem.model.shapes import ModelShape, load_shape, shape_from_hf_config, shape_from_model_config


@pytest.mark.parametrize(
    ("config", "total", "active"),
    [
        (LLAMA_3_8B, 8.03e9, 8.03e9),
        (QWEN3_30B_A3B, 30.5e9, 3.3e9),
        (QWEN3_235B_A22B, 235e9, 22e9),
        (DEEPSEEK_V3, 671e9, 37e9),
        (KIMI_K2, 1.03e12, 32e9),
        (MIXTRAL_8X7B, 46.7e9, 12.9e9),
    ],
    ids=["llama-3-8b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "kimi-k2", "mixtral-8x7b"],
)
def test_counts_match_published_totals(config, total, active):
    shape = shape_from_hf_config(config)
    assert shape.total_parameter_count() == pytest.approx(total, rel=0.02)
    # Published "active" counts round loosely (DeepSeek's 37B is 37.6B counting the embedding whole).
    assert shape.active_parameter_count() == pytest.approx(active, rel=0.04)


def test_dense_shape_agrees_with_the_engine_config():
    config = parse_model_config(LLAMA_3_8B)
    shape = shape_from_model_config(config, name="llama-3-8b")
    assert shape.name == "llama-3-8b"
    assert shape.num_layers == 32
    assert shape.total_parameter_count() == config.total_parameter_count()
    assert shape.layer_parameters == shape.layer_parameters_read  # dense: a token reads every weight
    # Keys and values: 2 × 8 heads × 128 dims per layer, as the engine's cache allocates.
    assert shape.layer_kv_elements[0] * 2 * shape.num_layers == config.kv_bytes_per_token(dtype_bytes=2)


def test_tied_head_is_counted_once_in_the_total_but_kept_whole_for_a_last_stage():
    tied = shape_from_hf_config({**LLAMA_3_8B, "tie_word_embeddings": True})
    untied = shape_from_hf_config(LLAMA_3_8B)
    assert tied.head_parameters == untied.head_parameters == 4096 + 128256 * 4096
    assert untied.total_parameter_count() - tied.total_parameter_count() == 128256 * 4096
    assert tied.shared_head_parameters == 4096


def test_deepseek_keeps_its_first_layers_dense_and_caches_the_latent():
    shape = shape_from_hf_config(DEEPSEEK_V3)
    dense, sparse = shape.layer_parameters[0], shape.layer_parameters[3]
    assert shape.layer_parameters[:3] == (dense,) * 3
    assert set(shape.layer_parameters[3:]) == {sparse}
    assert sparse > 15 * dense
    assert shape.layer_parameters_read[0] == dense
    assert shape.layer_parameters_read[3] < sparse / 15  # 9 of 257 experts
    assert set(shape.layer_kv_elements) == {512 + 64}  # kv_lora_rank + qk_rope_head_dim


def test_qwen3_moe_dense_layers_follow_mlp_only_layers_and_sparse_step():
    shape = shape_from_hf_config({**QWEN3_30B_A3B, "mlp_only_layers": [0], "decoder_sparse_step": 2})
    reads_everything = [
        stored == read
        for stored, read in zip(shape.layer_parameters, shape.layer_parameters_read, strict=True)
    ]
    # Layer 0 is listed dense; otherwise every second layer (index 1, 3, …) is sparse.
    assert reads_everything[:5] == [True, False, True, False, True]


def test_mla_without_query_compression():
    # DeepSeek-V2-Lite style: no q_lora_rank, queries come straight from q_proj.
    direct = shape_from_hf_config({**DEEPSEEK_V3, "q_lora_rank": None}).layer_parameters[0]
    compressed = shape_from_hf_config(DEEPSEEK_V3).layer_parameters[0]
    hidden, heads, query_head_dim, rank = 7168, 128, 128 + 64, 1536
    # q_proj replaces q_a_proj, q_a_layernorm and q_b_proj.
    assert direct - compressed == hidden * heads * query_head_dim - (
        hidden * rank + rank + rank * heads * query_head_dim
    )


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError) as error:
        shape_from_hf_config({"model_type": "gpt2"})
    message = str(error.value)
    assert "'gpt2'" in message
    for supported in ("llama", "qwen3_moe", "deepseek_v3", "kimi_k2", "mixtral"):
        assert supported in message


def test_missing_field_is_a_one_line_format_error():
    config = dict(DEEPSEEK_V3)
    del config["kv_lora_rank"]
    with pytest.raises(ModelFormatError, match="kv_lora_rank"):
        shape_from_hf_config(config)


def test_inconsistent_shape_is_refused():
    with pytest.raises(ModelFormatError, match="one entry per layer"):
        ModelShape("broken", (1, 2), (1,), (1, 1), 10, 11, False, 4, 128)


def test_load_shape_from_a_directory_or_a_file(tmp_path):
    checkpoint = tmp_path / "Qwen3-30B-A3B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(QWEN3_30B_A3B))
    assert load_shape(checkpoint).name == "Qwen3-30B-A3B"
    assert load_shape(checkpoint / "config.json").name == "Qwen3-30B-A3B"
    loose = tmp_path / "kimi-k2-config.json"
    loose.write_text(json.dumps(KIMI_K2))
    assert load_shape(loose).name == "kimi-k2"
    with pytest.raises(ModelFormatError, match="not found"):
        load_shape(tmp_path / "missing")
    with pytest.raises(ModelFormatError, match=r"no config\.json"):
        load_shape(tmp_path)
