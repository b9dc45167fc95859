"""Tiny random gpt-oss checkpoints, built with `transformers` (`GptOssForCausalLM`) as the
reference, as `tests/moe_checkpoints.py` builds the other mixtures.

gpt-oss checkpoints hold experts stacked (`model.layers.N.mlp.experts.gate_up_proj` [experts,
hidden, 2 × inner], gate and up interleaved, with biases), as transformers holds them in memory,
so what `save_pretrained` writes is the Hub's 16-bit layout. Odd sizes, a window shorter than
the prompts, a SwiGLU limit low enough that the clamps bite, random sinks and router biases,
YaRN rope with a short original context.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from checkpoints import TinyCheckpoint, randomize, write_tokenizer

COMMON = dict(
    hidden_size=56,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=14,
    vocab_size=300,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

GPT_OSS_FAMILIES: dict[str, dict[str, Any]] = {
    "gpt-oss-e5-top2": dict(
        intermediate_size=22,
        num_local_experts=5,
        num_experts_per_tok=2,
        sliding_window=6,
        swiglu_limit=1.5,
        rope_parameters=dict(
            rope_type="yarn",
            rope_theta=10000.0,
            factor=16.0,
            original_max_position_embeddings=16,
            beta_fast=32.0,
            beta_slow=1.0,
            truncate=False,
        ),
    ),
    # Full attention first, then a window; three experts of seven.
    "gpt-oss-e7-top3-full-first": dict(
        intermediate_size=18,
        num_local_experts=7,
        num_experts_per_tok=3,
        sliding_window=5,
        swiglu_limit=2.0,
        swiglu_alpha=1.3,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    ),
}


def build_gpt_oss_checkpoint(
    directory: Path, family: str, seed: int = 0, max_shard_size: str | None = None
) -> TinyCheckpoint:
    import transformers

    torch.manual_seed(seed)
    config = transformers.GptOssConfig(
        **{**COMMON, **GPT_OSS_FAMILIES[family]}, experts_implementation="eager"
    )
    model = transformers.GptOssForCausalLM(config)
    randomize(model, seed)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    write_tokenizer(directory, model.config.vocab_size)
    saved = json.loads((directory / "config.json").read_text())
    return TinyCheckpoint(family, directory, model, saved)
