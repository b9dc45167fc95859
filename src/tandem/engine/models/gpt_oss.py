"""gpt-oss: grouped-query attention with biases and attention sinks, layers alternating between
a sliding window and the whole context (`layer_types`), and a sparse feed-forward on every layer.

- **Sinks**: each head has one learned logit (`self_attn.sinks`) that joins the softmax over the
  keys and is then dropped, so a head may give part of its attention to nothing.
- **Router** (`mlp.router`, with a bias): the `num_experts_per_tok` largest logits, softmaxed
  among themselves.
- **Experts** (`mlp.experts`), stored stacked as transformers holds them: `gate_up_proj`
  [experts, hidden, 2 × inner] with gate and up columns interleaved, `down_proj` [experts,
  inner, hidden], and a bias for each. Their activation is the clamped SwiGLU: gate clamped
  above at `swiglu_limit`, up to ±`swiglu_limit`, then gate · sigmoid(alpha · gate) · (up + 1).
- YaRN rope (transformers' default for the family when config.json names none).

Sinks have no place in the CUDA decode kernels, so this family attends through the masked path
on every device and decodes without CUDA graphs; the experts loop over those that got tokens,
as the reference does. The Hub's MXFP4 experts are refused at load (`quant_method` 'mxfp4').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine import ops
from tandem.engine.attention import AttentionBatch
from tandem.engine.kv_cache import KVCache
from tandem.engine.models.llama import Attention, CausalLM, RMSNorm, _add_norm
from tandem.engine.parallel.group import AllReduce
from tandem.engine.parallel.layers import unsummed
from tandem.engine.rope import apply_rotary
from tandem.model.config import ModelConfig


def attend_with_sinks(
    layer_index: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    window: int | None,
    batch: AttentionBatch,
    kv_cache: KVCache,
) -> torch.Tensor:
    """As `attention.attend` on its masked path, with each head's sink logit ([heads]) in the
    softmax. q: [B, T, heads, head_dim], k and v: [B, T, kv_heads, head_dim], before rotary.
    Returns [B, T, heads * head_dim]."""
    B, T, heads, head_dim = q.shape
    q = apply_rotary(q.transpose(1, 2), batch.cos, batch.sin)  # [B, heads, T, head_dim]
    k = apply_rotary(k.transpose(1, 2), batch.cos, batch.sin)  # [B, kv_heads, T, head_dim]
    kv_cache.update(layer_index, batch, k, v.transpose(1, 2))
    keys, values = kv_cache.read(layer_index, batch)  # [B, kv_heads, S, head_dim]
    groups = heads // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) * head_dim**-0.5  # [B, heads, T, S]
    scores = scores.masked_fill(~batch.masks[window], float("-inf"))
    sink = sinks.to(scores.dtype).view(1, heads, 1, 1).expand(B, heads, T, 1)
    combined = torch.cat([scores, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probabilities = torch.softmax(combined, dim=-1)[..., :-1]  # the sink's share dropped
    out = torch.matmul(probabilities.to(values.dtype), values)  # [B, heads, T, head_dim]
    return out.transpose(1, 2).reshape(B, T, heads * head_dim)


class GptOssAttention(Attention):
    """Llama's projections (biased) plus one sink logit per head."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__(config, layer_index)
        self.sinks = nn.Parameter(torch.empty(config.num_attention_heads))

    def forward(self, x: torch.Tensor, batch: AttentionBatch, kv_cache: KVCache) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            qkv = ops.linear(self.qkv_proj, x)
        else:
            assert self.q_proj is not None and self.k_proj is not None and self.v_proj is not None
            qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        q_width, kv_width = self.local_heads * self.head_dim, self.local_kv_heads * self.head_dim
        q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
        out = attend_with_sinks(
            self.layer_index,
            q.reshape(B, T, -1, self.head_dim),
            k.reshape(B, T, -1, self.head_dim),
            v.reshape(B, T, -1, self.head_dim),
            self.sinks,
            self.sliding_window,
            batch,
            kv_cache,
        )
        return ops.linear(self.o_proj, out)


class GptOssRouter(nn.Module):
    """`mlp.router`: the top-k logits (with the router's bias), softmaxed among themselves."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.top_k = moe.top_k
        self.weight = nn.Parameter(torch.empty(moe.num_experts, config.hidden_size))
        self.bias = nn.Parameter(torch.empty(moe.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, hidden]. Returns the weights ([N, k]) and the experts ([N, k])."""
        logits = F.linear(x, self.weight, self.bias)  # [N, experts]
        top, experts = torch.topk(logits, self.top_k, dim=-1)
        return torch.softmax(top, dim=1), experts


class GptOssExperts(nn.Module):
    """`mlp.experts`: every expert of the layer, in the checkpoint's stacked layout (module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None and moe.swiglu_limit is not None
        hidden, inner, count = config.hidden_size, moe.expert_intermediate_size, moe.num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(count, hidden, 2 * inner))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(count, 2 * inner))
        self.down_proj = nn.Parameter(torch.empty(count, inner, hidden))
        self.down_proj_bias = nn.Parameter(torch.empty(count, hidden))
        self.limit, self.alpha = moe.swiglu_limit, moe.swiglu_alpha

    def activation(self, gate_up: torch.Tensor) -> torch.Tensor:
        """The clamped SwiGLU of interleaved gate and up columns ([n, 2 × inner] → [n, inner])."""
        gate = gate_up[..., ::2].clamp(max=self.limit)
        up = gate_up[..., 1::2].clamp(min=-self.limit, max=self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden]; experts, weights: [N, k]. The weighted sum of each token's experts,
        summed in ascending expert order as transformers does ([N, hidden])."""
        out = torch.zeros_like(x)
        for expert in torch.unique(experts).tolist():
            slot, token = torch.where(experts.T.eq(expert))
            gate_up = x[token] @ self.gate_up_proj[expert] + self.gate_up_proj_bias[expert]
            y = self.activation(gate_up) @ self.down_proj[expert] + self.down_proj_bias[expert]
            out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
        return out


class GptOssMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.router = GptOssRouter(config)
        self.experts = GptOssExperts(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, hidden]
        weights, experts = self.router(flat)
        return self.experts(flat, experts, weights.to(flat.dtype)).view(shape)


class GptOssDecoderLayer(nn.Module):
    """Same conventions as `llama.DecoderLayer` (x: the previous sublayer's unadded output)."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GptOssAttention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GptOssMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: AttentionBatch,
        kv_cache: KVCache,
        owed: AllReduce | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, AllReduce | None]:
        normed, residual = _add_norm(self.input_layernorm, x, residual, owed)
        attention = self.self_attn(normed, batch, kv_cache)
        owed = unsummed(self.self_attn.o_proj)
        normed, residual = _add_norm(self.post_attention_layernorm, attention, residual, owed)
        return self.mlp(normed), residual, None


class GptOssForCausalLM(CausalLM):
    layer_class = GptOssDecoderLayer

    def fuse_projections(self) -> None:
        for layer in self.model.layers.values():
            layer.self_attn.fuse()  # type: ignore[operator]

    def decode_kernels_fit(self) -> bool:
        return False  # the CUDA decode kernels have no sinks

    def attention_batch(
        self,
        positions: torch.Tensor,
        block_table: torch.Tensor,
        kv_length: int,
        prompt_from_start: bool = False,
    ) -> AttentionBatch:
        # Every layer attends through the masked path (the sinks), full-context ones included.
        return super().attention_batch(positions, block_table, kv_length, prompt_from_start=False)
