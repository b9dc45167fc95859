"""Named model shapes for benchmarks with random weights (no checkpoint needed)."""

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


def named_shape(name: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The engine config and the raw Hugging Face config dict of a named shape."""
    if name not in NAMED_SHAPES:
        raise InvalidRequestError(f"unknown shape {name!r}; known: {', '.join(NAMED_SHAPES)}")
    raw = NAMED_SHAPES[name]
    return parse_model_config(raw), raw


@functools.cache
def shape_dir(name: str) -> Path:
    """A directory named after the shape holding only its `config.json`: what a runner spec with
    random weights names as its model (every rank of a benchmark reads the same one)."""
    named_shape(name)  # refuses unknown names
    directory = Path(tempfile.mkdtemp(prefix="tandem-shape-")) / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(NAMED_SHAPES[name]))
    return directory
