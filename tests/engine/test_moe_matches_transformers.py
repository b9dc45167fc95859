"""The mixture-of-experts families (Mixtral, Qwen3-MoE, DeepSeek-V3, Kimi-K2) against
`transformers`: greedy tokens identical, logits within float tolerance, whole and split into
layer ranges; the loader reading the Hub's per-expert tensors (only a stage's); the compressed
latent cache, and its absorbed decode agreeing with the expanded prefill."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TEST_DEVICE, TEST_DTYPE
from engine.test_matches_transformers import (
    assert_choices_within_rounding,
    assert_logits_close,
    forward_logits,
    prompts,
    reference_greedy,
    reference_model,
)
from tandem.engine.blocks import BLOCK_SIZE
from tandem.engine.checkpoint import Checkpoint
from tandem.engine.device import DTYPES
from tandem.engine.kv_cache import KVCache
from tandem.engine.latent_cache import LatentCache
from tandem.engine.loader import load_stage, parameter_bytes, stage_tensor_names
from tandem.engine.models import build_empty_model
from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange, StageSpec
from tandem.runner.assemble import create_local_engine

NEW_TOKENS = 32


def test_greedy_tokens_equal_transformers(moe_checkpoint_factory, moe_family):
    checkpoint = moe_checkpoint_factory(moe_family)
    reference = reference_model(checkpoint)
    engine = create_local_engine(checkpoint.path, device=TEST_DEVICE, dtype=TEST_DTYPE, max_prefill_tokens=6)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for prompt in prompts(checkpoint.config["vocab_size"]):
        ours = [event.token_id for event in engine.generate(prompt, params)]
        if TEST_DTYPE == "float32":
            expected = reference_greedy(reference, prompt, NEW_TOKENS)
            assert ours == expected, f"{moe_family}: prompt of {len(prompt)} tokens diverged"
        else:
            assert_choices_within_rounding(reference, prompt, ours)


def test_logits_match_at_every_position(moe_checkpoint_factory, moe_family):
    checkpoint = moe_checkpoint_factory(moe_family)
    reference = reference_model(checkpoint)
    ours = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    prompt = prompts(checkpoint.config["vocab_size"], seed=2)[2]
    with torch.inference_mode():
        expected = reference(torch.tensor([prompt], device=TEST_DEVICE)).logits[0]
    assert_logits_close(forward_logits(ours, prompt), expected)


def decode_one_by_one(model, prompt: list[int]) -> torch.Tensor:
    """Last logits of `prompt` fed one token a step (every step a decode step)."""
    cache = KVCache.for_model(model, num_blocks=8)
    blocks = torch.tensor([[5, 1, 7, 2]], device=TEST_DEVICE)  # 64 positions, out of order
    with torch.inference_mode():
        for position, token in enumerate(prompt):
            position_ids = torch.tensor([[position]], device=TEST_DEVICE)
            batch = model.attention_batch(position_ids, blocks, position + 1)
            logits = model(torch.tensor([[token]], device=TEST_DEVICE), batch, cache)
    return logits[-1]


@pytest.mark.parametrize("family", ["deepseek-v3-qlora-groups", "deepseek-v3-direct-q", "kimi-k2"])
def test_absorbed_decode_equals_expanded_prefill(moe_checkpoint_factory, family):
    """Latent attention decodes over the compressed cache with the absorbed projections, and
    prefills with expanded keys and values: the same logits either way."""
    checkpoint = moe_checkpoint_factory(family)
    model = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    prompt = prompts(checkpoint.config["vocab_size"], seed=3)[2]
    assert_logits_close(decode_one_by_one(model, prompt), forward_logits(model, prompt)[-1])


@pytest.mark.parametrize("family", ["deepseek-v3-qlora-groups", "kimi-k2"])
def test_latent_cache_holds_the_latent_and_the_rotary_key_only(moe_checkpoint_factory, family):
    checkpoint = moe_checkpoint_factory(family)
    config = load_model_config(checkpoint.path)
    model = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    cache = KVCache.for_model(model, num_blocks=3)
    assert isinstance(cache, LatentCache)
    raw = checkpoint.config
    width = raw["kv_lora_rank"] + raw["qk_rope_head_dim"]
    assert {tuple(t.shape) for t in cache.latents.values()} == {(4, BLOCK_SIZE, width)}  # and scratch
    element = torch.finfo(DTYPES[TEST_DTYPE]).bits // 8
    assert cache.bytes() == 4 * BLOCK_SIZE * config.kv_bytes_per_token(element)
    expanded = raw["num_attention_heads"] * (
        raw["qk_nope_head_dim"] + raw["qk_rope_head_dim"] + raw["v_head_dim"]
    )
    assert config.kv_elements_per_token() == width < expanded


def test_dense_families_keep_the_key_value_cache(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    model = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    assert type(KVCache.for_model(model, num_blocks=1)) is KVCache


def held_parameters(model, dtype: torch.dtype) -> int:
    """Bytes a stage should hold: routers of DeepSeek's kind stay float32."""
    element = torch.finfo(dtype).bits // 8
    float32 = model.float32_parameters()
    return sum(p.numel() * (4 if name in float32 else element) for name, p in model.named_parameters())


@pytest.mark.parametrize(
    ("family", "cuts"),
    [
        ("deepseek-v3-qlora-groups", (1, 3)),  # a dense first stage, then sparse ones
        ("qwen3-moe-step2-yarn", (2,)),  # tied head and embedding on different stages
        ("mixtral-e5-top2", (1, 2)),
    ],
)
def test_layer_ranges_compose_and_hold_their_share(moe_checkpoint_factory, family, cuts):
    checkpoint = moe_checkpoint_factory(family, max_shard_size="30KB")  # experts spread over files
    num_layers = checkpoint.config["num_hidden_layers"]
    device, dtype = torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE]
    whole = load_stage(checkpoint.path, None, device, dtype)
    bounds = [0, *cuts, num_layers]
    stages = [
        load_stage(checkpoint.path, StageSpec(LayerRange(a, b), num_layers), device, dtype)
        for a, b in itertools.pairwise(bounds)
    ]
    prompt = prompts(checkpoint.config["vocab_size"])[2]
    positions = torch.arange(len(prompt), device=device)[None]
    hidden = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        for stage in stages:
            cache = KVCache.for_model(stage, num_blocks=4)
            blocks = torch.arange(4, device=device)[None]
            hidden = stage(hidden, stage.attention_batch(positions, blocks, len(prompt)), cache)
    assert_logits_close(hidden, forward_logits(whole, prompt))
    config = whole.config
    element = torch.finfo(dtype).bits // 8
    float32_extra = 4 - element
    for stage in stages:
        layers = stage.stage.layers
        expected = sum(config.layer_parameter_count(i) for i in layers)
        expected += config.embedding_parameter_count() if stage.stage.is_first else 0
        expected += config.head_parameter_count() if stage.stage.is_last else 0
        router_float32 = sum(stage.state_dict()[name].numel() for name in stage.float32_parameters())
        assert parameter_bytes(stage) == expected * element + router_float32 * float32_extra
        assert parameter_bytes(stage) == held_parameters(stage, dtype)
    assert sum(p.numel() for p in whole.parameters()) == config.total_parameter_count()


class CountingCheckpoint(Checkpoint):
    """A checkpoint that records the names it reads."""

    def __init__(self, model_dir) -> None:
        super().__init__(model_dir)
        self.names_read: list[str] = []

    def read(self, name, rows=None, columns=None):
        self.names_read.append(name)
        return super().read(name, rows, columns)


@pytest.mark.parametrize("family", ["mixtral-e5-top2", "qwen3-moe-e6-top3", "deepseek-v3-direct-q"])
def test_a_stage_reads_only_its_own_experts_and_stacks_them_in_order(moe_checkpoint_factory, family):
    from tandem.engine.loader import load_weights

    checkpoint = moe_checkpoint_factory(family)
    config = load_model_config(checkpoint.path)
    stage = StageSpec(LayerRange(2, 3), config.num_layers)
    model = build_empty_model(config, stage)
    counting = CountingCheckpoint(checkpoint.path)
    load_weights(model, config, counting, torch.device("cpu"), torch.float32)
    assert sorted(counting.names_read) == stage_tensor_names(model, config, Checkpoint(checkpoint.path))
    assert all(name.startswith("model.layers.2.") for name in counting.names_read)
    assert len(counting.names_read) == len(set(counting.names_read))
    # The reference holds experts fused in memory, [experts, gate rows + up rows, hidden].
    reference = dict(checkpoint.model.named_parameters())
    # (transformers 5 renames Mixtral's `block_sparse_moe` to `mlp` in memory.)
    block = "block_sparse_moe" if family.startswith("mixtral") else "mlp"
    ours = dict(model.named_parameters())
    for name in ("gate_up_proj", "down_proj"):
        key = f"model.layers.2.{block}.experts.{name}"
        expected = reference[f"model.layers.2.mlp.experts.{name}"].detach()
        assert torch.equal(ours[key], expected), key
    expert_names = [name for name in counting.names_read if ".experts." in name]
    assert len(expert_names) == 3 * config.moe.num_experts  # type: ignore[union-attr]


@pytest.mark.parametrize("family", ["mixtral-e5-top2", "deepseek-v3-qlora-groups"])
def test_fused_experts_saved_in_memory_layout_convert_to_the_hubs(moe_checkpoint_factory, tmp_path, family):
    """The test helper's conversion (for a transformers that saves experts fused) gives the
    tensors transformers itself saves in the Hub's layout."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from moe_checkpoints import MOE_FAMILIES, to_hub_layout

    checkpoint = moe_checkpoint_factory(family)
    directory = tmp_path / "fused"
    shutil.copytree(checkpoint.path, directory)
    (directory / "model.safetensors").unlink()
    state = {name: tensor.detach().contiguous() for name, tensor in checkpoint.model.state_dict().items()}
    if checkpoint.config.get("tie_word_embeddings"):
        del state["lm_head.weight"]
    save_file(state, str(directory / "model.safetensors"))
    to_hub_layout(directory, MOE_FAMILIES[family][0])
    converted = load_file(str(directory / "model.safetensors"))
    saved = load_file(str(checkpoint.path / "model.safetensors"))
    assert converted.keys() == saved.keys()
    assert all(torch.equal(converted[name], saved[name]) for name in saved)
    assert json.loads((directory / "config.json").read_text()) == checkpoint.config


def test_a_stage_download_asks_for_the_files_of_its_own_experts(moe_checkpoint_factory):
    """`tandem download --layers` picks files by the loader's own view: the per-expert tensors."""
    import json

    from tandem.store.selection import stage_weight_files

    checkpoint = moe_checkpoint_factory("deepseek-v3-qlora-groups", max_shard_size="30KB")
    weight_map = json.loads((checkpoint.path / "model.safetensors.index.json").read_text())["weight_map"]
    config = load_model_config(checkpoint.path)
    stage = StageSpec(LayerRange(2, 3), config.num_layers)
    names = stage_tensor_names(build_empty_model(config, stage), config, Checkpoint(checkpoint.path))
    assert any(".experts.7.down_proj." in name for name in names)
    files = stage_weight_files(checkpoint.path, stage, set(weight_map.values()))
    assert files == {weight_map[name] for name in names}
    assert len(files) < len(set(weight_map.values()))  # some files are left out


GPT_OSS = ["gpt-oss-e5-top2", "gpt-oss-e7-top3-full-first"]


@pytest.mark.parametrize("family", GPT_OSS)
def test_gpt_oss_greedy_tokens_equal_transformers(gpt_oss_checkpoint_factory, family):
    """Sinks, alternating windows (shorter than the prompts), the biased top-k-softmax router,
    clamped SwiGLU experts with biases, yarn rope: the same greedy tokens, prompts prefilled in
    chunks over the paged cache."""
    checkpoint = gpt_oss_checkpoint_factory(family)
    reference = reference_model(checkpoint)
    engine = create_local_engine(checkpoint.path, device=TEST_DEVICE, dtype=TEST_DTYPE, max_prefill_tokens=6)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for prompt in prompts(checkpoint.config["vocab_size"]):
        ours = [event.token_id for event in engine.generate(prompt, params)]
        if TEST_DTYPE == "float32":
            assert ours == reference_greedy(reference, prompt, NEW_TOKENS), f"{len(prompt)}-token prompt"
        else:
            assert_choices_within_rounding(reference, prompt, ours)


@pytest.mark.parametrize("family", GPT_OSS)
def test_gpt_oss_logits_match_prefilled_and_decoded(gpt_oss_checkpoint_factory, family):
    checkpoint = gpt_oss_checkpoint_factory(family)
    reference = reference_model(checkpoint)
    ours = load_stage(checkpoint.path, None, torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE])
    prompt = prompts(checkpoint.config["vocab_size"], seed=2)[2]
    with torch.inference_mode():
        expected = reference(torch.tensor([prompt], device=TEST_DEVICE)).logits[0]
    assert_logits_close(forward_logits(ours, prompt), expected)
    assert_logits_close(decode_one_by_one(ours, prompt), expected[-1])


def test_gpt_oss_layer_ranges_compose_and_count_their_parameters(gpt_oss_checkpoint_factory):
    checkpoint = gpt_oss_checkpoint_factory("gpt-oss-e5-top2", max_shard_size="30KB")
    num_layers = checkpoint.config["num_hidden_layers"]
    device, dtype = torch.device(TEST_DEVICE), DTYPES[TEST_DTYPE]
    whole = load_stage(checkpoint.path, None, device, dtype)
    stages = [
        load_stage(checkpoint.path, StageSpec(LayerRange(a, b), num_layers), device, dtype)
        for a, b in itertools.pairwise([0, 1, num_layers])
    ]
    prompt = prompts(checkpoint.config["vocab_size"])[2]
    positions = torch.arange(len(prompt), device=device)[None]
    hidden = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        for stage in stages:
            cache = KVCache.for_model(stage, num_blocks=4)
            hidden = stage(
                hidden, stage.attention_batch(positions, torch.arange(4)[None], len(prompt)), cache
            )
    assert_logits_close(hidden, forward_logits(whole, prompt))
    config = whole.config
    reference_count = sum(p.numel() for p in checkpoint.model.parameters())
    assert sum(p.numel() for p in whole.parameters()) == config.total_parameter_count() == reference_count
    for stage in stages:
        expected = sum(config.layer_parameter_count(i) for i in stage.stage.layers)
        expected += config.embedding_parameter_count() if stage.stage.is_first else 0
        expected += config.head_parameter_count() if stage.stage.is_last else 0
        assert sum(p.numel() for p in stage.parameters()) == expected


def test_gpt_oss_configs_the_engine_cannot_run_are_refused_in_one_line(gpt_oss_checkpoint_factory):
    from tandem.errors import UnsupportedModelError
    from tandem.model.config import parse_model_config

    raw = gpt_oss_checkpoint_factory("gpt-oss-e5-top2").config
    hub_format = dict(raw, quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": []})
    with pytest.raises(
        UnsupportedModelError, match=r"^unsupported quantization_config \(mxfp4\): quant_method"
    ):
        parse_model_config(hub_format)
    layer_types = ["sliding_attention", "chunked_attention", "full_attention", "full_attention"]
    with pytest.raises(UnsupportedModelError, match="unsupported layer_types chunked_attention; supported"):
        parse_model_config(dict(raw, layer_types=layer_types))
    config = parse_model_config({key: value for key, value in raw.items() if key != "layer_types"})
    assert config.sliding_layers == (True, False, True, False)  # transformers' default: even layers slide
    bare = {key: value for key, value in raw.items() if key != "rope_parameters"}
    assert parse_model_config(bare).rope.rope_type == "yarn"  # and its default rope
