"""DeepSeek-V3 (and Kimi-K2, the same architecture): multi-head latent attention, the first
`first_k_dense_replace` layers dense, the others sparse blocks of routed experts (sigmoid
router with a correction bias and group-limited top-k) plus shared experts.

Latent attention, per token (see `MLAConfig`): a query per head of `qk_nope_head_dim` +
`qk_rope_head_dim`, from `q_proj` or through the low-rank `q_a_proj` → `q_a_layernorm` →
`q_b_proj`; one latent c of `kv_lora_rank` (`kv_a_proj_with_mqa` → `kv_a_layernorm`) and one
rotary key k_r of `qk_rope_head_dim` shared by all heads. `kv_b_proj` expands c into each head's
key part (W_UK c) and value (W_UV c). The cache keeps only [c, k_r] (`LatentCache`).

Two ways to attend, equal in exact arithmetic:
- expanded (prefill): every cached latent expanded into per-head keys and values, then ordinary
  attention, as the reference computes it;
- absorbed (decode): q·(W_UK c) = (W_UKᵀ q)·c, so each head's query is folded into the latent
  space once (W_UKᵀ q_nope, beside q_r) and attends directly over the cached [c, k_r], values
  being c itself; W_UV is applied to the attention output. A decode step then reads the
  compressed cache only, never expanding it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine import ops
from tandem.engine.attention import AttentionBatch
from tandem.engine.latent_cache import LatentCache
from tandem.engine.models.llama import MLP, RMSNorm
from tandem.engine.models.moe import SparseCausalLM, SparseDecoderLayer, SparseMoE
from tandem.engine.quant.linear import QuantizedLinear
from tandem.engine.rope import apply_rotary
from tandem.model.config import ModelConfig


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Rotary pairs (x0, x1), (x2, x3), … laid out as halves (x0, x2, …, x1, x3, …): rotating
    that by halves is the reference's interleaved rotation, value for value."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class LatentAttention(nn.Module):
    """`self_attn` of a DeepSeek-V3 layer (see the module doc)."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        mla = config.mla
        assert mla is not None
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.layer_index = layer_index
        self.mla = mla
        self.q_proj: nn.Linear | None = None
        self.q_a_proj: nn.Linear | None = None
        self.q_a_layernorm: RMSNorm | None = None
        self.q_b_proj: nn.Linear | None = None
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, heads * mla.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, mla.q_lora_rank, bias=mla.bias)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, heads * mla.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, mla.latent_width, bias=mla.bias)
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(
            mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(heads * mla.v_head_dim, hidden, bias=mla.bias)
        self.latent_width = mla.latent_width  # what the cache keeps per token (KVCache.for_model)
        self.local_heads = heads  # this module's share (tensor parallelism narrows the projections)
        self.key_absorb: torch.Tensor | None = None  # W_UK per head [heads, nope, rank] (fuse)
        self.value_absorb: torch.Tensor | None = None  # W_UV per head [heads, v, rank]

    def fuse(self) -> None:
        """After loading (and any split): the per-head views of kv_b_proj the absorbed form uses."""
        mla = self.mla
        if isinstance(self.kv_b_proj, QuantizedLinear):
            # The absorbed decode multiplies per-head blocks of W_UK and W_UV: held dequantized.
            dense = nn.Linear(
                self.kv_b_proj.in_features, self.kv_b_proj.out_features, bias=False, device="meta"
            )
            dense.weight = nn.Parameter(
                self.kv_b_proj.dequantize(self.kv_a_layernorm.weight.dtype), requires_grad=False
            )
            self.kv_b_proj = dense
        per_head = self.kv_b_proj.weight.view(-1, mla.qk_nope_head_dim + mla.v_head_dim, mla.kv_lora_rank)
        self.local_heads = per_head.shape[0]
        self.key_absorb = per_head[:, : mla.qk_nope_head_dim]  # views: no extra memory
        self.value_absorb = per_head[:, mla.qk_nope_head_dim :]

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_proj is not None:
            return ops.linear(self.q_proj, x)
        assert self.q_a_proj is not None and self.q_a_layernorm is not None and self.q_b_proj is not None
        return ops.linear(self.q_b_proj, self.q_a_layernorm(ops.linear(self.q_a_proj, x)))

    def forward(self, x: torch.Tensor, batch: AttentionBatch, kv_cache: LatentCache) -> torch.Tensor:
        mla, heads = self.mla, self.local_heads
        B, T, _ = x.shape
        q = self._queries(x).view(B, T, heads, mla.qk_head_dim).transpose(1, 2)  # [B, h, T, qk]
        q_nope, q_rope = q.split([mla.qk_nope_head_dim, mla.qk_rope_head_dim], dim=-1)
        compressed = ops.linear(self.kv_a_proj_with_mqa, x)  # [B, T, rank + rope]
        latent, k_rope = compressed.split([mla.kv_lora_rank, mla.qk_rope_head_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)  # [B, T, rank]
        if mla.rope_interleave:
            q_rope, k_rope = _deinterleave(q_rope), _deinterleave(k_rope)
        q_rope = apply_rotary(q_rope, batch.cos, batch.sin)  # [B, h, T, rope]
        k_rope = apply_rotary(k_rope[:, None], batch.cos, batch.sin)[:, 0]  # [B, T, rope]
        cached = kv_cache.update(
            self.layer_index, batch, torch.cat([latent, k_rope], dim=-1)
        )  # [B, S, width]
        if T == 1:
            out = self._absorbed(q_nope, q_rope, cached, batch)
        else:
            out = self._expanded(q_nope, q_rope, cached, batch)  # [B, h, T, v]
        return ops.linear(self.o_proj, out.transpose(1, 2).reshape(B, T, heads * mla.v_head_dim))

    def _expanded(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, cached: torch.Tensor, batch: AttentionBatch
    ) -> torch.Tensor:
        """Attention with every cached latent expanded into per-head keys and values."""
        mla, heads = self.mla, self.local_heads
        B, S, _ = cached.shape
        latent, k_rope = cached.split([mla.kv_lora_rank, mla.qk_rope_head_dim], dim=-1)
        expanded = (
            ops.linear(self.kv_b_proj, latent).view(B, S, heads, -1).transpose(1, 2)
        )  # [B, h, S, nope + v]
        k_nope, values = expanded.split([mla.qk_nope_head_dim, mla.v_head_dim], dim=-1)
        keys = torch.cat([k_nope, k_rope[:, None].expand(B, heads, S, mla.qk_rope_head_dim)], dim=-1)
        queries = torch.cat([q_nope, q_rope], dim=-1)  # [B, h, T, qk]
        if batch.prompt_from_start:  # the prompt attends only to itself
            return F.scaled_dot_product_attention(
                queries, keys, values, is_causal=True, scale=mla.softmax_scale
            )
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=batch.masks[None], scale=mla.softmax_scale
        )

    def _absorbed(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, cached: torch.Tensor, batch: AttentionBatch
    ) -> torch.Tensor:
        """One query a sequence over the compressed cache, W_UK folded into the query and W_UV
        applied after (see the module doc)."""
        mla = self.mla
        assert self.key_absorb is not None and self.value_absorb is not None
        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, self.key_absorb)  # [B, h, 1, rank]
        queries = torch.cat([q_latent, q_rope], dim=-1)  # [B, h, 1, width]
        keys = cached[:, None]  # [B, 1, S, width]: one key/value head for all query heads
        values = keys[..., : mla.kv_lora_rank]  # [B, 1, S, rank]
        if batch.decode_kernels:  # every block of the table, masked by lengths read on the device
            assert batch.lengths is not None
            visible = torch.arange(cached.shape[1], device=cached.device) < batch.lengths[:, None]
            mask = visible[:, None, None, :]  # [B, 1, 1, max_length]
        else:
            mask = batch.masks[None]  # [B, 1, 1, S]
        heads = queries.shape[1]
        out_latent = F.scaled_dot_product_attention(
            queries,
            keys.expand(-1, heads, -1, -1),
            values.expand(-1, heads, -1, -1),
            attn_mask=mask,
            scale=mla.softmax_scale,
        )  # [B, h, 1, rank]
        return torch.einsum("bhtr,hvr->bhtv", out_latent, self.value_absorb)  # [B, h, 1, v]


class DeepseekV3DecoderLayer(SparseDecoderLayer):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        feed_forward = SparseMoE(config) if config.is_sparse_layer(layer_index) else MLP(config)
        super().__init__(config, LatentAttention(config, layer_index), feed_forward)


class DeepseekV3ForCausalLM(SparseCausalLM):
    layer_class = DeepseekV3DecoderLayer

    def decode_kernels_fit(self) -> bool:
        # Latent attention decodes by its own path, which reads lengths on the device; it uses
        # none of the head-size-bound kernels of grouped-query attention.
        return True

    def attention_layers(self) -> dict[int, LatentAttention]:  # type: ignore[override]
        return {int(i): layer.self_attn for i, layer in self.model.layers.items()}  # type: ignore[union-attr]
