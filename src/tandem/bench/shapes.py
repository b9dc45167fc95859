"""Named model shapes for benchmarks with random weights (no checkpoint needed).

A name may end in `:N` to keep only the first N decoder layers (`deepseek-v3:4`: three dense
layers and one sparse), so that a mixture-of-experts shape fits one device."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from tandem.errors import InvalidRequestError
from tandem.model.config import ModelConfig, parse_model_config

_LLAMA3 = dict(
    model_type="llama",
    vocab_size=128256,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    bos_token_id=128000,
    eos_token_id=128001,
    rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
)

NAMED_SHAPES: dict[str, dict[str, Any]] = {
    # CPU-sized: the demo model's shape, and a Llama of 100M parameters
    "demo": dict(
        _LLAMA3,
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    "llama-100m": dict(
        _LLAMA3,
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # a toy for tests of the benchmark itself
    "tiny": dict(
        _LLAMA3,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
    "llama3-8b": dict(
        _LLAMA3,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "llama3-70b": dict(
        _LLAMA3,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
    "llama3.2-1b": dict(
        _LLAMA3,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "llama3.2-3b": dict(
        _LLAMA3,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
    ),
    "qwen3-8b": dict(
        model_type="qwen3",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
    ),
}

_QWEN3_MOE = dict(
    model_type="qwen3_moe",
    vocab_size=151936,
    head_dim=128,
    num_key_value_heads=4,
    num_experts=128,
    num_experts_per_tok=8,
    norm_topk_prob=True,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=40960,
)
_DEEPSEEK_V3 = dict(
    model_type="deepseek_v3",
    vocab_size=129280,
    hidden_size=7168,
    intermediate_size=18432,
    moe_intermediate_size=2048,
    num_hidden_layers=61,
    num_attention_heads=128,
    num_key_value_heads=128,
    n_shared_experts=1,
    n_routed_experts=256,
    num_experts_per_tok=8,
    routed_scaling_factor=2.5,
    first_k_dense_replace=3,
    n_group=8,
    topk_group=4,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=dict(
        type="yarn",
        factor=40.0,
        beta_fast=32,
        beta_slow=1,
        mscale=1.0,
        mscale_all_dim=1.0,
        original_max_position_embeddings=4096,
    ),
    max_position_embeddings=163840,
)

NAMED_SHAPES |= {
    # a toy mixture with latent attention, for tests of the benchmark itself
    "tiny-deepseek": dict(
        _DEEPSEEK_V3,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        n_group=2,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=16,
        max_position_embeddings=4096,
    ),
    "qwen3-30b-a3b": dict(
        _QWEN3_MOE,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
    ),
    "qwen3-235b-a22b": dict(
        _QWEN3_MOE,
        hidden_size=4096,
        intermediate_size=12288,
        moe_intermediate_size=1536,
        num_hidden_layers=94,
        num_attention_heads=64,
    ),
    "deepseek-v3": _DEEPSEEK_V3,
    "kimi-k2": dict(
        _DEEPSEEK_V3,
        model_type="kimi_k2",
        vocab_size=163840,
        num_attention_heads=64,
        num_key_value_heads=64,
        n_routed_experts=384,
        routed_scaling_factor=2.827,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        rope_theta=50000.0,
        rope_scaling=dict(
            type="yarn",
            factor=32.0,
            beta_fast=1.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
            original_max_position_embeddings=4096,
        ),
        max_position_embeddings=131072,
    ),
}


# gpt-oss in 16 bits (the Hub ships its experts in MXFP4, which the engine refuses): 24 layers
# of 32 experts (20b) or 36 of 128 (120b), 4 per token, sliding and full attention alternating.
_GPT_OSS = dict(
    model_type="gpt_oss",
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    head_dim=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    num_experts_per_tok=4,
    sliding_window=128,
    swiglu_limit=7.0,
    attention_bias=True,
    rms_norm_eps=1e-5,
    rope_theta=150000.0,
    rope_scaling=dict(
        rope_type="yarn",
        factor=32.0,
        beta_fast=32.0,
        beta_slow=1.0,
        truncate=False,
        original_max_position_embeddings=4096,
    ),
    max_position_embeddings=131072,
    eos_token_id=200002,
)

NAMED_SHAPES |= {
    "gpt-oss-20b": dict(_GPT_OSS, num_hidden_layers=24, num_local_experts=32),
    "gpt-oss-120b": dict(_GPT_OSS, num_hidden_layers=36, num_local_experts=128),
}


def named_shape(name: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The engine config and the raw Hugging Face config dict of a named shape (`NAME:N`: its
    first N layers only)."""
    base, _, layers = name.partition(":")
    if base not in NAMED_SHAPES:
        raise InvalidRequestError(
            f"unknown shape {name!r}; known: {', '.join(NAMED_SHAPES)} (NAME:N for N layers)"
        )
    raw = dict(NAMED_SHAPES[base])
    if layers:
        if not layers.isdigit() or not 1 <= int(layers) <= raw["num_hidden_layers"]:
            raise InvalidRequestError(
                f"shape {name!r}: the layer count must be between 1 and {raw['num_hidden_layers']}"
            )
        raw["num_hidden_layers"] = int(layers)
    return parse_model_config(raw), raw


@functools.cache
def shape_dir(name: str) -> Path:
    """A directory named after the shape holding only its `config.json`: what a runner spec with
    random weights names as its model (every rank of a benchmark reads the same one)."""
    _, raw = named_shape(name)  # refuses unknown names
    directory = Path(tempfile.mkdtemp(prefix="tandem-shape-")) / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(raw))
    return directory


# --- what fits this machine ------------------------------------------------------------------

# Without --shape: the largest of these that fits (a GPU has always been given llama3-8b).
CPU_CHOICES = ("llama3-8b", "llama3.2-3b", "llama3.2-1b", "llama-100m", "demo")
GPU_DEFAULT = "llama3-8b"
HEADROOM = 0.8  # of the free memory a benchmark may fill: activations, the allocator, the OS
CPU_PROMPT_LENGTHS, GPU_PROMPT_LENGTHS = "128,512", "128,2048,8192"
CPU_DECODE_TOKENS, GPU_DECODE_TOKENS = 64, 256


def shape_bytes(name: str, weight_bytes: float, kv_bytes: int, context: int) -> int:
    """What the engine holds for shape `name`: its weights at `weight_bytes` a parameter, and a KV
    cache of `context` tokens for one sequence at `kv_bytes` an element."""
    from tandem.model.shapes import shape_from_model_config

    config, _ = named_shape(name)
    kv = sum(shape_from_model_config(config, name).layer_kv_elements) * context * kv_bytes
    return round(config.total_parameter_count() * weight_bytes + kv)


def fit_problem(
    name: str, weight_bytes: float, kv_bytes: int, context: int, available: int, device: str
) -> str | None:
    """One line saying why shape `name` does not fit `available` free bytes of `device`, or None."""
    needed = shape_bytes(name, weight_bytes, kv_bytes, context)
    if needed <= available * HEADROOM:
        return None
    smaller = next(
        (
            choice
            for choice in CPU_CHOICES
            if shape_bytes(choice, weight_bytes, kv_bytes, context) <= available * HEADROOM
        ),
        None,
    )
    advice = f"--shape {smaller} fits" if smaller else "no named shape fits; free some memory"
    return (
        f"shape {name} needs {needed / 1e9:.1f} GB on {device} ({weight_bytes:g} bytes a parameter and a "
        f"{context}-token KV cache), more than {HEADROOM:.0%} of the {available / 1e9:.1f} GB free there: "
        f"{advice}, or NAME:N keeps the first N layers"
    )


def default_shape(device: str, weight_bytes: float, kv_bytes: int, context: int, available: int) -> str:
    """The shape `tandem bench` runs without --shape: llama3-8b on a GPU, else the largest of
    `CPU_CHOICES` that fits the free RAM (the smallest when none does: its check then says so)."""
    if device != "cpu":
        return GPU_DEFAULT
    return next(
        (
            choice
            for choice in CPU_CHOICES
            if fit_problem(choice, weight_bytes, kv_bytes, context, available, device) is None
        ),
        CPU_CHOICES[-1],
    )
