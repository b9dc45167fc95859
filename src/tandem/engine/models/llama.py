"""The Llama decoder, which Mistral, Qwen2 and Qwen3 share with small switches.

Module names mirror the Hugging Face checkpoints (`model.layers.N.self_attn.q_proj`, ...) so
weights load by name. Layers live in a ModuleDict keyed by their global index, so a pipeline
stage that holds layers [8, 16) still names them `model.layers.8` to `model.layers.15`.
The differences between the families are config flags (see `tandem.model.config`):
qkv/o/mlp biases, Qwen3's per-head q/k RMSNorm, and Mistral/Qwen sliding windows.

After loading, `fuse_projections` joins q/k/v into one `qkv_proj` and gate/up into one
`gate_up_proj` (one matrix product each instead of three and two).
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.engine import ops
from tandem.engine.attention import AttentionBatch, attend, attention_masks, cache_places
from tandem.engine.checkpoint import StackedSource
from tandem.engine.kv_cache import KVCache
from tandem.engine.parallel.group import AllReduce
from tandem.engine.parallel.layers import unsummed
from tandem.engine.quant.linear import QuantizedLinear, fuse_quantized
from tandem.engine.rope import inverse_frequencies, rotary_cos_sin
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.add_rms_norm(x, None, self.weight, self.eps)[0]


def _fused_linear(parts: list[nn.Linear]) -> nn.Module | None:
    """One Linear whose output is the concatenation of `parts`' outputs; None where quantized
    parts cannot share one weight (they then run one by one)."""
    if any(isinstance(p, QuantizedLinear) for p in parts):
        return fuse_quantized(parts)  # type: ignore[arg-type]
    weight = torch.cat([p.weight for p in parts], dim=0)
    fused = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=parts[0].bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))  # type: ignore[misc]
    return fused


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.layer_index = layer_index
        self.head_dim = head_dim
        self.sliding_window = config.layer_sliding_window(layer_index)
        self.q_proj: nn.Linear | None = nn.Linear(
            hidden, config.num_attention_heads * head_dim, bias=config.qkv_bias
        )
        self.k_proj: nn.Linear | None = nn.Linear(
            hidden, config.num_kv_heads * head_dim, bias=config.qkv_bias
        )
        self.v_proj: nn.Linear | None = nn.Linear(
            hidden, config.num_kv_heads * head_dim, bias=config.qkv_bias
        )
        self.qkv_proj: nn.Linear | None = None
        self.o_proj = nn.Linear(config.num_attention_heads * head_dim, hidden, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Head counts of this module's share (a tensor-parallel split narrows the projections).
        self.local_heads = config.num_attention_heads
        self.local_kv_heads = config.num_kv_heads

    def fuse(self) -> None:
        assert self.q_proj is not None and self.k_proj is not None and self.v_proj is not None
        self.local_heads = self.q_proj.out_features // self.head_dim
        self.local_kv_heads = self.k_proj.out_features // self.head_dim
        fused = _fused_linear([self.q_proj, self.k_proj, self.v_proj])
        if fused is not None:
            self.qkv_proj = fused  # type: ignore[assignment]
            self.q_proj = self.k_proj = self.v_proj = None

    def forward(self, x: torch.Tensor, batch: AttentionBatch, kv_cache: KVCache) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            qkv = ops.linear(self.qkv_proj, x)  # [B, T, (heads + 2 kv_heads) * head_dim]
        else:
            assert self.q_proj is not None and self.k_proj is not None and self.v_proj is not None
            qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        q_width, kv_width = self.local_heads * self.head_dim, self.local_kv_heads * self.head_dim
        q, k, v = qkv.view(B, T, -1).split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(B, T, -1, self.head_dim)  # [B, T, heads, head_dim]
        k = k.view(B, T, -1, self.head_dim)  # [B, T, kv_heads, head_dim]
        v = v.view(B, T, -1, self.head_dim)
        packed = qkv
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            packed = None
        out = attend(
            self.layer_index, q, k, v, self.sliding_window, batch, kv_cache, packed
        )  # [B, T, H * hd]
        return ops.linear(self.o_proj, out)


class MLP(nn.Module):
    """The gated feed-forward (SiLU(gate) · up, then down), of the model's `intermediate_size`
    unless `intermediate_size` is given (a mixture's shared experts)."""

    def __init__(self, config: ModelConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj: nn.Linear | None = nn.Linear(hidden, inner, bias=config.mlp_bias)
        self.up_proj: nn.Linear | None = nn.Linear(hidden, inner, bias=config.mlp_bias)
        self.gate_up_proj: nn.Linear | None = None
        self.down_proj = nn.Linear(inner, hidden, bias=config.mlp_bias)

    def fuse(self) -> None:
        assert self.gate_proj is not None and self.up_proj is not None
        fused = _fused_linear([self.gate_proj, self.up_proj])
        if fused is not None:
            self.gate_up_proj = fused  # type: ignore[assignment]
            self.gate_proj = self.up_proj = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            return ops.linear(self.down_proj, ops.gated_linear(self.gate_up_proj, x))
        assert self.gate_proj is not None and self.up_proj is not None
        gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
        return ops.linear(self.down_proj, ops.silu_mul(gate_up))


def _add_norm(
    norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None, owed: AllReduce | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual); under tensor parallelism x may be a rank's partial
    product with its all-reduce `owed`, which then runs fused with the add and the norm."""
    if owed is None:
        return ops.add_rms_norm(x, residual, norm.weight, norm.eps)
    return owed.add_rms_norm(x, residual, norm.weight, norm.eps)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        batch: AttentionBatch,
        kv_cache: KVCache,
        owed: AllReduce | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, AllReduce | None]:
        """x: the previous sublayer's output, not yet added to the residual stream (so the add
        fuses into the norm), and not yet summed over the ranks when `owed` is its all-reduce.
        Returns this layer's MLP output, the residual stream and the MLP output's owed all-reduce."""
        normed, residual = _add_norm(self.input_layernorm, x, residual, owed)
        attention = self.self_attn(normed, batch, kv_cache)
        owed = unsummed(self.self_attn.o_proj)
        normed, residual = _add_norm(self.post_attention_layernorm, attention, residual, owed)
        return self.mlp(normed), residual, unsummed(self.mlp.down_proj)


class DecoderStack(nn.Module):
    """`model.*` in the checkpoint: embedding (first stage), layers, final norm (last stage)."""

    def __init__(
        self, config: ModelConfig, stage: StageSpec, layer_class: type[nn.Module] = DecoderLayer
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if stage.is_first else None
        self.layers = nn.ModuleDict({str(i): layer_class(config, i) for i in stage.layers})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if stage.is_last else None


class CausalLM(nn.Module):
    """One pipeline stage of a decoder-only model (the whole model when the stage covers it).

    The first stage takes token ids; later stages take the previous stage's hidden states.
    The last stage returns logits for the rows named by `logit_rows`; others return hidden states.
    A family whose layers differ (mixtures of experts, latent attention) subclasses it with its
    own `layer_class`.
    """

    layer_class: type[nn.Module] = DecoderLayer

    def __init__(self, config: ModelConfig, stage: StageSpec) -> None:
        super().__init__()
        self.config = config
        self.stage = stage
        self.model = DecoderStack(config, stage, self.layer_class)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if stage.is_last else None
        # computed by reset_buffers once the model is on a real device
        self.register_buffer("inv_freq", torch.empty(config.head_dim // 2), persistent=False)
        self.windows = {config.layer_sliding_window(i) for i in stage.layers}

    def reset_buffers(self, device: torch.device) -> None:
        """Recompute non-checkpoint buffers on `device` (a model built on meta has none)."""
        self.inv_freq = inverse_frequencies(self.config.rope, self.config.head_dim).to(device)

    def fuse_projections(self) -> None:
        """Join q/k/v and gate/up into single matrices (after loading, and after any split)."""
        for layer in self.model.layers.values():
            layer.self_attn.fuse()  # type: ignore[union-attr]
            layer.mlp.fuse()  # type: ignore[union-attr]

    def decode_kernels_fit(self) -> bool:
        """Whether this model's attention can take the CUDA decode kernels (their head sizes)."""
        return ops.kernel_head_dim(self.config.head_dim)

    def supports_decode_graphs(self) -> bool:
        """Whether decode steps can be captured in CUDA graphs on this model's device: they need
        the decode kernels, which read each sequence's length on the device."""
        return ops.kernels_available() and self.decode_kernels_fit()

    def supports_prefill_graphs(self) -> bool:
        """Whether short prompts can be captured in CUDA graphs (`engine/cuda/prefill_graphs.py`):
        where decode steps can be, for dense layers (a mixture overrides this)."""
        return self.supports_decode_graphs()

    def checkpoint_sources(self) -> dict[str, StackedSource]:
        """Parameters assembled from several checkpoint tensors (none here; see `StackedSource`)."""
        return {}

    def float32_parameters(self) -> set[str]:
        """Parameters kept in float32 whatever the model's dtype (none here)."""
        return set()

    def attention_layers(self) -> dict[int, Attention]:
        return {int(i): layer.self_attn for i, layer in self.model.layers.items()}  # type: ignore[union-attr]

    def activation_dtype(self) -> torch.dtype:
        # A norm's weight: quantized layers (and a quantized embedding) hold integers or FP8.
        return next(p.dtype for p in self.parameters() if p.is_floating_point() and p.element_size() > 1)

    def attention_batch(
        self,
        positions: torch.Tensor,
        block_table: torch.Tensor,
        kv_length: int,
        prompt_from_start: bool = False,
    ) -> AttentionBatch:
        """Everything attention needs for `positions` ([B, T]) of sequences whose cache blocks
        `block_table` ([B, W]) lists."""
        cos, sin = rotary_cos_sin(
            self.inv_freq, positions, self.activation_dtype(), self.config.rope.cos_sin_scale
        )
        decode_kernels = positions.shape[1] == 1 and ops.use_kernels(positions) and self.decode_kernels_fit()
        prompt_from_start = prompt_from_start and positions.shape[1] > 1
        if decode_kernels:
            needed: set[int | None] = set()
        elif prompt_from_start:
            needed = {w for w in self.windows if w is not None}
        else:
            needed = set(self.windows)
        write_blocks, write_offsets = cache_places(positions, block_table)
        return AttentionBatch(
            positions=positions,
            block_table=block_table,
            write_blocks=write_blocks,
            write_offsets=write_offsets,
            kv_length=kv_length,
            cos=cos,
            sin=sin,
            masks=attention_masks(positions, kv_length, needed),
            prompt_from_start=prompt_from_start,
            decode_kernels=decode_kernels,
            lengths=positions[:, -1] + 1 if decode_kernels else None,
        )

    def forward(
        self,
        inputs: torch.Tensor,
        batch: AttentionBatch,
        kv_cache: KVCache,
        logit_rows: torch.Tensor | None = None,
        with_head: bool = True,
    ) -> torch.Tensor:
        """inputs: token ids [B, T] (first stage) or hidden states [B, T, hidden].

        Returns hidden states [B, T, hidden], or on the last stage logits [R, vocab] for the
        flattened token rows `logit_rows` (all rows when None); without the head, the last
        stage returns those rows' final hidden states [R, hidden] (after the final norm), which
        embedding models pool.
        """
        if self.model.embed_tokens is not None:
            x = self.model.embed_tokens(inputs)  # [B, T, hidden]
        else:
            x = inputs.to(self.activation_dtype())
        residual, owed = None, None
        for layer in self.model.layers.values():
            x, residual, owed = layer(x, residual, batch, kv_cache, owed)
        if self.lm_head is None or self.model.norm is None:
            x = x if owed is None else owed(x)
            return x if residual is None else x + residual
        hidden = x.shape[-1]
        x = x.reshape(-1, hidden)  # [B*T, hidden]
        residual = residual.reshape(-1, hidden) if residual is not None else None
        if logit_rows is not None:
            x = x[logit_rows]  # [R, hidden]
            residual = residual[logit_rows] if residual is not None else None
        normed, _ = _add_norm(self.model.norm, x, residual, owed)  # [R, hidden]
        if not with_head:
            return normed
        return ops.linear(self.lm_head, normed).float()  # [R, vocab]
