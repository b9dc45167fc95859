"""The Llama decoder, which Mistral, Qwen2 and Qwen3 share with small switches.

Module names mirror the Hugging Face checkpoints (`model.layers.N.self_attn.q_proj`, ...) so
weights load by name. Layers live in a ModuleDict keyed by their global index, so a pipeline
stage that holds layers [8, 16) still names them `model.layers.8` to `model.layers.15`.
The differences between the families are config flags (see `tandem.engine.config`):
qkv/o/mlp biases, Qwen3's per-head q/k RMSNorm, and Mistral/Qwen sliding windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine.config import ModelConfig
from tandem.engine.kv_cache import AttentionBatch, KVCache, attention_masks, slot_range
from tandem.engine.rope import apply_rotary, inverse_frequencies, rotary_cos_sin
from tandem.engine.stage import StageSpec


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32, scale in the activation dtype (as the reference does).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.layer_index = layer_index
        self.head_dim = head_dim
        self.sliding_window = config.layer_sliding_window(layer_index)
        self.q_proj = nn.Linear(hidden, config.num_attention_heads * head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, config.num_kv_heads * head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, config.num_kv_heads * head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_attention_heads * head_dim, hidden, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, batch: AttentionBatch, kv_cache: KVCache) -> torch.Tensor:
        B, T, _ = x.shape
        # Head counts come from the projections' widths, so a tensor-parallel split needs no edits here.
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # [B, T, heads, head_dim]
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # [B, T, kv_heads, head_dim]
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q.transpose(1, 2), batch.cos, batch.sin)  # [B, heads, T, head_dim]
        k = apply_rotary(k.transpose(1, 2), batch.cos, batch.sin)  # [B, kv_heads, T, head_dim]
        keys, values = kv_cache.update(self.layer_index, batch, k, v.transpose(1, 2))  # [B, kv, S, hd]
        out = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=batch.masks[self.sliding_window],
            scale=self.head_dim**-0.5,
            enable_gqa=q.shape[1] != keys.shape[1],
        )  # [B, heads, T, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=config.mlp_bias)
        self.up_proj = nn.Linear(hidden, inner, bias=config.mlp_bias)
        self.down_proj = nn.Linear(inner, hidden, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, batch: AttentionBatch, kv_cache: KVCache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """`model.*` in the checkpoint: embedding (first stage), layers, final norm (last stage)."""

    def __init__(self, config: ModelConfig, stage: StageSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if stage.is_first else None
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config, i) for i in stage.layers})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if stage.is_last else None


class CausalLM(nn.Module):
    """One pipeline stage of a decoder-only model (the whole model when the stage covers it).

    The first stage takes token ids; later stages take the previous stage's hidden states.
    The last stage returns logits for the rows named by `logit_rows`; others return hidden states.
    """

    def __init__(self, config: ModelConfig, stage: StageSpec) -> None:
        super().__init__()
        self.config = config
        self.stage = stage
        self.model = DecoderStack(config, stage)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if stage.is_last else None
        self.register_buffer("inv_freq", inverse_frequencies(config.rope, config.head_dim), persistent=False)
        self.windows = {config.layer_sliding_window(i) for i in stage.layers}

    def reset_buffers(self, device: torch.device) -> None:
        """Recompute non-checkpoint buffers on `device` (a model built on meta has none)."""
        self.inv_freq = inverse_frequencies(self.config.rope, self.config.head_dim).to(device)

    def attention_layers(self) -> dict[int, Attention]:
        return {int(i): layer.self_attn for i, layer in self.model.layers.items()}  # type: ignore[union-attr]

    def activation_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def attention_batch(self, positions: torch.Tensor, slots: list[int], kv_length: int) -> AttentionBatch:
        dtype = self.activation_dtype()
        cos, sin = rotary_cos_sin(self.inv_freq, positions, dtype)
        return AttentionBatch(
            positions=positions,
            slots=torch.tensor(slots, dtype=torch.long, device=positions.device),
            kv_length=kv_length,
            cos=cos,
            sin=sin,
            masks=attention_masks(positions, kv_length, self.windows),
            contiguous_slots=slot_range(slots),
        )

    def forward(
        self,
        inputs: torch.Tensor,
        batch: AttentionBatch,
        kv_cache: KVCache,
        logit_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs: token ids [B, T] (first stage) or hidden states [B, T, hidden].

        Returns hidden states [B, T, hidden], or on the last stage logits [R, vocab] for the
        flattened token rows `logit_rows` (all rows when None).
        """
        if self.model.embed_tokens is not None:
            x = self.model.embed_tokens(inputs)  # [B, T, hidden]
        else:
            x = inputs.to(self.activation_dtype())
        for layer in self.model.layers.values():
            x = layer(x, batch, kv_cache)
        if self.lm_head is None or self.model.norm is None:
            return x
        x = x.reshape(-1, x.shape[-1])  # [B*T, hidden]
        if logit_rows is not None:
            x = x[logit_rows]  # [R, hidden]
        return self.lm_head(self.model.norm(x)).float()  # [R, vocab]
