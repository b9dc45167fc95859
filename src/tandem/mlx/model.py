"""One pipeline stage of a dense decoder on MLX, built from mlx-lm's own decoder blocks.

mlx-lm's blocks (attention with rotary and grouped queries, SwiGLU MLP, RMSNorm) give the same
numbers as `transformers` for the families Tandem supports, so they are imported, not copied.
What differs is around them, and written here: a stage holds only its layers (plus the
embedding on the first stage, the final norm and head on the last), attention reads and writes
Tandem's slot cache through `LayerCache`, masks come from positions (sliding windows included),
and the last stage computes logits only for the rows that are sampled.

Families: llama and mistral use `mlx_lm.models.llama` (mistral is llama with a window, which
our masks carry), qwen2 `qwen2` (q/k/v biases), qwen3 `qwen3` (per-head q/k RMSNorm).
"""

from __future__ import annotations

import importlib
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from tandem.errors import UnsupportedModelError
from tandem.mlx.cache import LayerCache, PagedCache, StepBatch
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec

# model_type -> the mlx-lm module whose TransformerBlock computes that family's layers
BLOCK_MODULES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def _rope_scaling(config: ModelConfig) -> dict[str, Any] | None:
    """mlx-lm's `rope_scaling` for our parsed rope (it reads the same keys as transformers)."""
    rope = config.rope
    if rope.rope_type == "default":
        return None
    if rope.rope_type == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {
        "rope_type": "llama3",
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        # transformers' default when a llama3 config leaves it out
        "original_max_position_embeddings": rope.original_max_position_embeddings or 8192,
    }


def _check_expressible(config: ModelConfig) -> None:
    """Refuse, in one line, a variant that the family's mlx-lm block cannot compute."""
    family = config.model_type
    problem = None
    if family in ("llama", "mistral") and config.qkv_bias != config.o_bias:
        problem = "q/k/v biases without an output bias"
    elif family == "qwen2" and config.head_dim != config.hidden_size // config.num_attention_heads:
        problem = f"head_dim {config.head_dim} other than hidden_size / num_attention_heads"
    elif family == "qwen2" and (config.o_bias or config.mlp_bias):
        problem = "output or MLP biases"
    elif family == "qwen3" and (config.qkv_bias or config.o_bias or config.mlp_bias):
        problem = "attention_bias"
    if problem:
        raise UnsupportedModelError(f"the MLX engine does not support {family} with {problem}")


def block_args(config: ModelConfig) -> tuple[Any, Any]:
    """The family's mlx-lm module and ModelArgs, from Tandem's parsed config (not the raw config.json, so
    that both engines read every option, such as transformers 5's `rope_parameters`, alike)."""
    _check_expressible(config)
    module = importlib.import_module(f"mlx_lm.models.{BLOCK_MODULES[config.model_type]}")
    fields = dict(
        model_type=config.model_type,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        attention_bias=config.qkv_bias,
        mlp_bias=config.mlp_bias,
        rope_theta=config.rope.theta,
        rope_traditional=False,
        rope_scaling=_rope_scaling(config),
        tie_word_embeddings=config.tie_word_embeddings,
    )
    return module, module.ModelArgs.from_dict(fields)


class StageModel(nn.Module):
    """One pipeline stage (the whole model when the stage covers it).

    Module paths mirror the checkpoint's after `checkpoint_name`: `layers.k` is global layer
    `stage.layers.start + k`; a tied head on a stage without the embedding is a Linear that
    loads `model.embed_tokens`.
    """

    def __init__(self, config: ModelConfig, stage: StageSpec) -> None:
        super().__init__()
        module, args = block_args(config)
        self.config = config
        self.stage = stage
        # Underscored: mlx.nn.Module takes public lists and dicts for trees of parameters.
        self._layer_indices = list(stage.layers)
        self._windows = {i: config.layer_sliding_window(i) for i in stage.layers}
        if stage.is_first:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [module.TransformerBlock(args) for _ in stage.layers]
        self.shares_embedding = config.tie_word_embeddings and stage.is_first and stage.is_last
        if stage.is_last:
            self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            if not self.shares_embedding:
                self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def checkpoint_name(self, path: str) -> str:
        """The checkpoint name of a module path or parameter path of this stage."""
        head, _, rest = path.partition(".")
        if head == "layers":
            local, _, rest = rest.partition(".")
            name = f"model.layers.{self._layer_indices[int(local)]}"
            return f"{name}.{rest}" if rest else name
        if head in ("embed_tokens", "norm"):
            return f"model.{path}"
        return path  # lm_head (the loader reads a tied one from the embedding)

    def __call__(
        self, inputs: mx.array, batch: StepBatch, cache: PagedCache, logit_rows: mx.array | None = None
    ) -> mx.array:
        """inputs: token ids [B, T] (first stage) or hidden states [B, T, hidden].

        Returns hidden states [B, T, hidden], or on the last stage float32 logits [R, vocab]
        for the flattened token rows `logit_rows` (all rows when None)."""
        x = self.embed_tokens(inputs) if self.stage.is_first else inputs  # [B, T, hidden]
        masks: dict[int | None, mx.array | str] = {}
        for index, layer in zip(self._layer_indices, self.layers, strict=True):
            window = self._windows[index]
            if window not in masks:
                masks[window] = batch.mask(window)
            x = layer(x, masks[window], LayerCache(cache, index, batch, window))  # [B, T, hidden]
        if not self.stage.is_last:
            return x
        if logit_rows is not None and logit_rows.size == 0:
            # Nothing sampled (a prompt chunk before its last): the step only fills the cache.
            # (MLX's CPU quantized matmul also fails on zero rows.)
            return mx.zeros((0, self.config.vocab_size), dtype=mx.float32)
        x = x.reshape(-1, x.shape[-1])  # [B*T, hidden]
        if logit_rows is not None:
            x = x[logit_rows]  # [R, hidden]
        x = self.norm(x)
        logits = self.embed_tokens.as_linear(x) if self.shares_embedding else self.lm_head(x)
        return logits.astype(mx.float32)  # [R, vocab]
