"""Tiny random mixture-of-experts checkpoints (Mixtral, Qwen3-MoE, DeepSeek-V3, Kimi-K2), built
with `transformers` as the reference, as `tests/checkpoints.py` builds the dense ones.

Odd sizes, several expert counts and top-k, with and without shared experts and a low-rank
query, a nonzero routing bias and group-limited routing, yarn rope. transformers 5 keeps experts
fused in memory but saves the Hub's layout, one tensor per expert
(`model.layers.N.mlp.experts.E.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.E.w1`);
`build_moe_checkpoint` converts to it where an older transformers saved experts fused, checks
it, and rewrites config.json the way Hub checkpoints spell it (Qwen3-MoE's `num_experts`,
DeepSeek's `rope_scaling`, Kimi-K2's `model_type`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from checkpoints import TinyCheckpoint, randomize, write_tokenizer

COMMON = dict(
    hidden_size=56,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=16.0, original_max_position_embeddings=16)

_DEEPSEEK = dict(
    num_key_value_heads=4,  # every head has its own keys and values
    intermediate_size=72,
    moe_intermediate_size=22,
    kv_lora_rank=20,
    qk_nope_head_dim=12,
    qk_rope_head_dim=8,
    v_head_dim=10,
)

# name -> (transformers model_type, config overrides, model_type written to config.json)
MOE_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral-e5-top2": ("mixtral", dict(intermediate_size=40, num_local_experts=5, num_experts_per_tok=2)),
    "mixtral-window-e3-top1": (
        "mixtral",
        dict(intermediate_size=36, num_local_experts=3, num_experts_per_tok=1, sliding_window=8),
    ),
    "qwen3-moe-e6-top3": (
        "qwen3_moe",
        dict(
            head_dim=16,
            intermediate_size=64,
            moe_intermediate_size=26,
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            mlp_only_layers=[1],
        ),
    ),
    "qwen3-moe-step2-yarn": (
        "qwen3_moe",
        dict(
            head_dim=14,
            intermediate_size=60,
            moe_intermediate_size=18,
            num_experts=7,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            attention_bias=True,
            tie_word_embeddings=True,
            rope_parameters=dict(_YARN),
        ),
    ),
    "deepseek-v3-qlora-groups": (
        "deepseek_v3",
        dict(
            _DEEPSEEK,
            q_lora_rank=24,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            rope_interleave=True,
            rope_parameters=dict(_YARN, mscale=1.0, mscale_all_dim=0.8),
        ),
    ),
    "deepseek-v3-direct-q": (
        "deepseek_v3",
        dict(
            _DEEPSEEK,
            q_lora_rank=None,
            n_routed_experts=6,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            n_shared_experts=2,
            first_k_dense_replace=2,
            routed_scaling_factor=1.5,
            norm_topk_prob=False,
            rope_interleave=False,
        ),
    ),
    "kimi-k2": (
        "kimi_k2",
        dict(
            _DEEPSEEK,
            q_lora_rank=16,
            n_routed_experts=9,
            num_experts_per_tok=4,
            n_group=1,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=2.827,
            norm_topk_prob=True,
            # Kimi-K2 ships yarn with equal mscales (no extra temperature) and beta 1/1.
            rope_parameters=dict(
                _YARN,
                rope_theta=50000.0,
                factor=32.0,
                original_max_position_embeddings=8,
                beta_fast=1.0,
                beta_slow=1.0,
                mscale=1.0,
                mscale_all_dim=1.0,
            ),
        ),
    ),
}


def _reference_model(model_type: str, overrides: dict[str, Any]):
    import transformers

    classes = {
        "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
        "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
        "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM),
        "kimi_k2": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM),  # same architecture
    }
    config_class, model_class = classes[model_type]
    # The eager loop over experts: the grouped-product path needs 16-byte strides (not odd sizes).
    return model_class(config_class(**{**COMMON, **overrides}, experts_implementation="eager"))


def _randomize_routing_bias(model: torch.nn.Module, seed: int) -> None:
    """DeepSeek's correction bias is a buffer (randomize leaves it zero): make it matter."""
    generator = torch.Generator().manual_seed(seed + 1000)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))


def _hub_config(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    """config.json as Hub checkpoints of the family write it."""
    config = dict(config, model_type=model_type)
    if model_type == "qwen3_moe" and "num_local_experts" in config:
        config["num_experts"] = config.pop("num_local_experts")
    if model_type == "kimi_k2":
        # DeepSeek-V3 and Kimi-K2 configs predate rope_parameters: rope_theta and rope_scaling.
        rope = dict(config.pop("rope_parameters"))
        config["rope_theta"] = rope.pop("rope_theta")
        rope["type"] = rope.pop("rope_type")
        config["rope_scaling"] = rope
    return config


def to_hub_layout(directory: Path, model_type: str) -> None:
    """Rewrite experts saved fused, as transformers holds them in memory (`….experts.gate_up_proj`
    [experts, 2 × inner, hidden], `….experts.down_proj`), into the Hub's one tensor per expert;
    Mixtral's block also back to `block_sparse_moe` with w1 (gate), w3 (up), w2 (down). A no-op
    where transformers already saved the Hub's layout (5.24 does)."""
    from safetensors.torch import load_file, save_file

    gate, up, down = ("w1", "w3", "w2") if model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    renamed: dict[str, str] = {}  # new name -> file
    for path in sorted(directory.glob("*.safetensors")):
        tensors = load_file(str(path))
        if not any(name.endswith(("experts.gate_up_proj", "experts.down_proj")) for name in tensors):
            renamed |= dict.fromkeys(tensors, path.name)
            continue
        converted: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if model_type == "mixtral":
                name = name.replace(".mlp.", ".block_sparse_moe.")
            if name.endswith("experts.gate_up_proj"):
                prefix = name.removesuffix("gate_up_proj")
                for expert, rows in enumerate(tensor):
                    gate_rows, up_rows = rows.chunk(2, dim=0)
                    converted[f"{prefix}{expert}.{gate}.weight"] = gate_rows.contiguous()
                    converted[f"{prefix}{expert}.{up}.weight"] = up_rows.contiguous()
            elif name.endswith("experts.down_proj"):
                prefix = name.removesuffix("down_proj")
                for expert, rows in enumerate(tensor):
                    converted[f"{prefix}{expert}.{down}.weight"] = rows.contiguous()
            else:
                converted[name] = tensor
        save_file(converted, str(path), metadata={"format": "pt"})
        renamed |= dict.fromkeys(converted, path.name)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        content = json.loads(index.read_text())
        content["weight_map"] = renamed
        index.write_text(json.dumps(content, indent=2))


def _check_hub_layout(directory: Path) -> None:
    """Saved experts must be the Hub's per-expert tensors, not transformers' fused in-memory ones."""
    names: set[str] = set()
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            names.update(handle.keys())
    fused = [name for name in names if name.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert not fused, f"experts still fused: {fused[:2]}"
    assert any(".experts.0." in name for name in names), "no per-expert tensors saved"


def build_moe_checkpoint(
    directory: Path, family: str, seed: int = 0, max_shard_size: str | None = None, **sizes: Any
) -> TinyCheckpoint:
    """`family` of MOE_FAMILIES, its sizes overridden by `sizes` (hidden_size=64, ...)."""
    model_type, overrides = MOE_FAMILIES[family]
    overrides = {**overrides, **sizes}
    torch.manual_seed(seed)
    model = _reference_model(model_type, overrides)
    randomize(model, seed)
    with torch.no_grad():
        _randomize_routing_bias(model, seed)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    to_hub_layout(directory, model_type)
    _check_hub_layout(directory)
    config_path = directory / "config.json"
    config = _hub_config(json.loads(config_path.read_text()), model_type)
    config_path.write_text(json.dumps(config, indent=2))
    write_tokenizer(directory, model.config.vocab_size)
    return TinyCheckpoint(family, directory, model, config)
