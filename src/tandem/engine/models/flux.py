"""The FLUX.1 diffusion transformer (dev and schnell), one pipeline stage at a time.

Module names mirror diffusers' `FluxTransformer2DModel` state dict, so its checkpoints
(`transformer/diffusion_pytorch_model*.safetensors`) load by name. Blocks have one global index:
the double-stream `transformer_blocks` first, then the single-stream `single_transformer_blocks`;
a stage holds a contiguous range of it and keeps each block under its checkpoint name (global
block 20 of FLUX.1 is `single_transformer_blocks.1`). The first stage also holds the input
embedders, the last `norm_out`/`proj_out`, and every stage `time_text_embed`, so each computes
the step's conditioning vector from the timestep, guidance and pooled text itself.

Between stages flow two plain tensors, the image and the text hidden states; single-stream
blocks run over their concatenation (text first), joined once where a stage enters them.

After loading, `fuse_projections` joins each block's q/k/v (and, in single-stream blocks, the
MLP's input projection beside them) into one matrix product. Every projection goes through
`ops.linear`, where quantized layers plug in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine import ops
from tandem.model.image_config import FluxTransformerConfig
from tandem.model.stage import StageSpec

Rotary = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [S, head_dim] float32, pairs interleaved

TIMESTEP_CHANNELS = 256  # the sinusoidal embedding of a timestep (and of the guidance scale)


def timestep_sinusoids(timesteps: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """[B] → [B, channels]: cos then sin of the timestep over geometric frequencies (diffusers'
    `get_timestep_embedding` with flip_sin_to_cos and no frequency shift), in float32."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rotary_tables(ids: torch.Tensor, axes_dims: tuple[int, ...], theta: float) -> Rotary:
    """cos and sin [S, head_dim] for position ids [S, axes]: each axis rotates its own slice of
    the head at frequencies theta^(-2i/dim), each angle repeated for the pair it turns. Computed
    in float64 (as the reference does: image positions reach a few hundred) and kept in float32."""
    positions = ids.to(torch.float64)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dims):
        frequencies = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles = torch.outer(positions[:, axis], frequencies)  # [S, dim / 2]
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate each (even, odd) pair of x [B, S, H, D] by its position's angle, in float32."""
    cos, sin = rotary[0][None, :, None, :], rotary[1][None, :, None, :]  # [1, S, 1, D]
    real, imaginary = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, H, D / 2] each
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)  # [B, S, H, D]
    return (x.float() * cos + rotated * sin).to(x.dtype)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without its own scale and shift (the modulation supplies them)."""
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """norm(x) · (1 + scale) + shift, per image: x [B, S, D], shift and scale [B, D]."""
    if ops.use_kernels(x) and x.is_contiguous():
        from tandem.engine.cuda.flux_kernels import modulate as fused

        return fused(x, shift, scale)
    return layer_norm(x) * (1 + scale[:, None]) + shift[:, None]


def gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate · y, per image: x and y [B, S, D], gate [B, D]. One kernel on CUDA (rounded once,
    where the reference's two operations round twice)."""
    if ops.use_kernels(x):
        return torch.addcmul(x, gate[:, None], y)
    return x + gate[:, None] * y


def norm_rope_into(x: torch.Tensor, norm: RMSNorm, rotary: Rotary, out: torch.Tensor, offset: int) -> None:
    """out[:, offset : offset + S] = rotary(norm(x)) for x [B, S, H, hd] (a slice of a fused
    projection), by one kernel on CUDA."""
    if ops.use_kernels(x):
        from tandem.engine.cuda.flux_kernels import norm_rope

        norm_rope(x, norm.weight, norm.eps, rotary[0], rotary[1], out, offset)
        return
    tokens = x.shape[1]
    part = (rotary[0][offset : offset + tokens], rotary[1][offset : offset + tokens])
    out[:, offset : offset + tokens] = apply_rotary(norm(x), part)


class RMSNorm(nn.Module):
    """The per-head RMSNorm on queries and keys (`norm_q`, `norm_k`, ...)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Embedder(nn.Module):
    """linear_1 → SiLU → linear_2: diffusers' TimestepEmbedding and PixArtAlphaTextProjection."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(self.linear_2, F.silu(ops.linear(self.linear_1, x)))


class TimeTextEmbedding(nn.Module):
    """`time_text_embed`: the conditioning vector of a step, from its timestep, the guidance
    scale (dev only) and the prompt's pooled CLIP embedding."""

    def __init__(self, config: FluxTransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.timestep_embedder = Embedder(TIMESTEP_CHANNELS, dim)
        self.guidance_embedder = Embedder(TIMESTEP_CHANNELS, dim) if config.guidance_embeds else None
        self.text_embedder = Embedder(config.pooled_projection_dim, dim)

    def forward(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor
    ) -> torch.Tensor:
        """timestep and guidance [B], already × 1000; pooled [B, pooled_dim] → [B, dim]."""
        conditioning = self.timestep_embedder(timestep_sinusoids(timestep).to(pooled.dtype))
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this model embeds a guidance scale; the step needs one")
            conditioning = conditioning + self.guidance_embedder(
                timestep_sinusoids(guidance).to(pooled.dtype)
            )
        return conditioning + self.text_embedder(pooled)


class Modulation(nn.Module):
    """`norm1`, `norm1_context`, `norm`, `norm_out`: shifts, scales and gates from the
    conditioning vector (the LayerNorm they modulate has no parameters)."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.count = count
        self.linear = nn.Linear(dim, count * dim)

    def forward(self, conditioning: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ops.linear(self.linear, F.silu(conditioning)).chunk(self.count, dim=1)  # count × [B, D]


class GeluProjection(nn.Module):
    """The feed-forward's input projection (`ff.net.0.proj`) with its tanh GELU."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(ops.linear(self.proj, x), approximate="tanh")


class FeedForward(nn.Module):
    """`ff.net.0.proj` → GELU → `ff.net.2`; index 1 (a dropout in diffusers) holds nothing."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProjection(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(self.net[2], self.net[0](x))


def _fused_linear(parts: list[nn.Module]) -> nn.Module | None:
    """One layer whose output is the concatenation of `parts`' outputs (all have biases), or
    None where quantized parts cannot share one weight (they then run one by one)."""
    if not all(type(part) is nn.Linear for part in parts):
        from tandem.engine.quant.linear import fuse_quantized

        return fuse_quantized(parts)
    linears: list[nn.Linear] = parts  # type: ignore[assignment]
    weight = torch.cat([part.weight for part in linears], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(torch.cat([part.bias for part in linears]))  # type: ignore[misc]
    return fused


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) attention of q, k, v [B, S, H, D] → [B, S, H * D] (flash on CUDA)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)  # [B, S, H * D]


class JointAttention(nn.Module):
    """The double-stream blocks' attention: each stream projects its own q/k/v (image `to_*`,
    text `add_*_proj`), they attend as one sequence (text first), and each projects its part out."""

    def __init__(self, config: FluxTransformerConfig) -> None:
        super().__init__()
        dim, head = config.inner_dim, config.attention_head_dim
        self.head_dim = head
        self.to_q: nn.Linear | None = nn.Linear(dim, dim)
        self.to_k: nn.Linear | None = nn.Linear(dim, dim)
        self.to_v: nn.Linear | None = nn.Linear(dim, dim)
        self.add_q_proj: nn.Linear | None = nn.Linear(dim, dim)
        self.add_k_proj: nn.Linear | None = nn.Linear(dim, dim)
        self.add_v_proj: nn.Linear | None = nn.Linear(dim, dim)
        self.to_qkv: nn.Module | None = None
        self.to_added_qkv: nn.Module | None = None
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers' [Linear, Dropout]
        self.to_add_out = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(head), RMSNorm(head)
        self.norm_added_q, self.norm_added_k = RMSNorm(head), RMSNorm(head)

    def fuse(self) -> None:
        assert self.to_q is not None and self.to_k is not None and self.to_v is not None
        assert self.add_q_proj is not None and self.add_k_proj is not None and self.add_v_proj is not None
        to_qkv = _fused_linear([self.to_q, self.to_k, self.to_v])
        to_added_qkv = _fused_linear([self.add_q_proj, self.add_k_proj, self.add_v_proj])
        if to_qkv is None or to_added_qkv is None:
            return
        self.to_qkv, self.to_added_qkv = to_qkv, to_added_qkv
        self.to_q = self.to_k = self.to_v = None
        self.add_q_proj = self.add_k_proj = self.add_v_proj = None

    def _qkv(self, x: torch.Tensor, text: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fused = self.to_added_qkv if text else self.to_qkv
        if fused is not None:
            q, k, v = ops.linear(fused, x).chunk(3, dim=-1)  # 3 × [B, S, D]
        else:
            parts = (
                (self.add_q_proj, self.add_k_proj, self.add_v_proj)
                if text
                else (self.to_q, self.to_k, self.to_v)
            )
            q, k, v = (ops.linear(part, x) for part in parts)  # type: ignore[arg-type]
        shape = (-1, self.head_dim)
        q, k, v = q.unflatten(-1, shape), k.unflatten(-1, shape), v.unflatten(-1, shape)  # [B, S, H, hd]
        if text:
            return self.norm_added_q(q), self.norm_added_k(k), v
        return self.norm_q(q), self.norm_k(k), v

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, rotary: Rotary
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, N, D], text [B, T, D] (both normalized) → their attention outputs."""
        if self.to_qkv is not None and self.to_added_qkv is not None and ops.use_kernels(image):
            return self._fused_forward(image, text, rotary)
        image_q, image_k, image_v = self._qkv(image, text=False)
        text_q, text_k, text_v = self._qkv(text, text=True)
        q = apply_rotary(torch.cat([text_q, image_q], dim=1), rotary)  # [B, T + N, H, hd]
        k = apply_rotary(torch.cat([text_k, image_k], dim=1), rotary)
        v = torch.cat([text_v, image_v], dim=1)
        out = attend(q, k, v)  # [B, T + N, D]
        text_length = text.shape[1]
        text_out, image_out = out[:, :text_length], out[:, text_length:]
        return ops.linear(self.to_out[0], image_out), ops.linear(self.to_add_out, text_out)

    def _fused_forward(
        self, image: torch.Tensor, text: torch.Tensor, rotary: Rotary
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same on CUDA: each stream's normalized, rotated q and k written by one kernel
        straight into the joint sequence's buffers."""
        assert self.to_qkv is not None and self.to_added_qkv is not None
        image_qkv = ops.linear(self.to_qkv, image)  # [B, N, 3 D]
        text_qkv = ops.linear(self.to_added_qkv, text)  # [B, T, 3 D]
        (batch, image_length, width), text_length = image_qkv.shape, text.shape[1]
        dim, shape = width // 3, (-1, self.head_dim)
        q = image.new_empty(batch, text_length + image_length, dim // self.head_dim, self.head_dim)
        k = torch.empty_like(q)
        for out, part, text_norm, image_norm in (
            (q, slice(0, dim), self.norm_added_q, self.norm_q),
            (k, slice(dim, 2 * dim), self.norm_added_k, self.norm_k),
        ):
            norm_rope_into(text_qkv[..., part].unflatten(-1, shape), text_norm, rotary, out, 0)
            norm_rope_into(image_qkv[..., part].unflatten(-1, shape), image_norm, rotary, out, text_length)
        v = torch.cat([text_qkv[..., 2 * dim :], image_qkv[..., 2 * dim :]], dim=1).unflatten(-1, shape)
        out = attend(q, k, v)  # [B, T + N, D]
        text_out, image_out = out[:, :text_length], out[:, text_length:]
        return ops.linear(self.to_out[0], image_out), ops.linear(self.to_add_out, text_out)


class DoubleStreamBlock(nn.Module):
    """`transformer_blocks.N`: image and text keep their own weights and modulations and meet
    only in attention (diffusers' FluxTransformerBlock)."""

    def __init__(self, config: FluxTransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.norm1 = Modulation(dim, 6)
        self.norm1_context = Modulation(dim, 6)
        self.attn = JointAttention(config)
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, conditioning: torch.Tensor, rotary: Rotary
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = self.norm1(conditioning)
        t_shift, t_scale, t_gate, t_mlp_shift, t_mlp_scale, t_mlp_gate = self.norm1_context(conditioning)
        image_attention, text_attention = self.attn(
            modulate(image, shift, scale), modulate(text, t_shift, t_scale), rotary
        )
        image = gated_add(image, gate, image_attention)  # [B, N, D]
        image = gated_add(image, mlp_gate, self.ff(modulate(image, mlp_shift, mlp_scale)))
        text = gated_add(text, t_gate, text_attention)  # [B, T, D]
        text = gated_add(text, t_mlp_gate, self.ff_context(modulate(text, t_mlp_shift, t_mlp_scale)))
        return image, text


class SingleStreamAttention(nn.Module):
    """The single-stream blocks' q/k/v with per-head norms (their output projection is the
    block's `proj_out`, shared with the MLP)."""

    def __init__(self, config: FluxTransformerConfig) -> None:
        super().__init__()
        dim, head = config.inner_dim, config.attention_head_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(head), RMSNorm(head)


class SingleStreamBlock(nn.Module):
    """`single_transformer_blocks.N`: one sequence (text then image), attention and MLP side by
    side from the same normalized input, one output projection over both (diffusers'
    FluxSingleTransformerBlock)."""

    def __init__(self, config: FluxTransformerConfig) -> None:
        super().__init__()
        dim = config.inner_dim
        self.dim, self.head_dim = dim, config.attention_head_dim
        self.norm = Modulation(dim, 3)
        self.proj_mlp: nn.Linear | None = nn.Linear(dim, config.mlp_hidden_dim)
        self.proj_out = nn.Linear(dim + config.mlp_hidden_dim, dim)
        self.attn = SingleStreamAttention(config)
        self.qkv_mlp: nn.Module | None = None  # after fuse: to_q, to_k, to_v and proj_mlp as one

    def fuse(self) -> None:
        assert self.proj_mlp is not None
        fused = _fused_linear([self.attn.to_q, self.attn.to_k, self.attn.to_v, self.proj_mlp])
        if fused is None:
            return
        self.qkv_mlp = fused
        del self.attn.to_q, self.attn.to_k, self.attn.to_v
        self.proj_mlp = None

    def forward(self, hidden: torch.Tensor, conditioning: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """hidden [B, T + N, D] → the same, after this block."""
        shift, scale, gate = self.norm(conditioning)
        normed = modulate(hidden, shift, scale)
        if self.qkv_mlp is not None and ops.use_kernels(hidden):
            return gated_add(hidden, gate, ops.linear(self.proj_out, self._fused_mix(normed, rotary)))
        if self.qkv_mlp is not None:
            projected = ops.linear(self.qkv_mlp, normed)  # [B, S, 3 D + mlp]
            q, k, v, mlp = projected.split(
                [self.dim, self.dim, self.dim, projected.shape[-1] - 3 * self.dim], -1
            )
        else:
            assert self.proj_mlp is not None
            q, k, v = (ops.linear(part, normed) for part in (self.attn.to_q, self.attn.to_k, self.attn.to_v))
            mlp = ops.linear(self.proj_mlp, normed)
        shape = (-1, self.head_dim)
        q = apply_rotary(self.attn.norm_q(q.unflatten(-1, shape)), rotary)  # [B, S, H, hd]
        k = apply_rotary(self.attn.norm_k(k.unflatten(-1, shape)), rotary)
        out = attend(q, k, v.unflatten(-1, shape))  # [B, S, D]
        mixed = torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=-1)  # [B, S, D + mlp]
        return hidden + gate[:, None] * ops.linear(self.proj_out, mixed)

    def _fused_mix(self, normed: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """proj_out's input [B, S, D + mlp] on CUDA: q and k normalized and rotated by one kernel
        each, then attention and the GELU written side by side by one more."""
        assert self.qkv_mlp is not None
        projected = ops.linear(self.qkv_mlp, normed)  # [B, S, 3 D + mlp]
        batch, tokens, _ = projected.shape
        dim, shape = self.dim, (-1, self.head_dim)
        q = normed.new_empty(batch, tokens, dim // self.head_dim, self.head_dim)
        k = torch.empty_like(q)
        norm_rope_into(projected[..., :dim].unflatten(-1, shape), self.attn.norm_q, rotary, q, 0)
        norm_rope_into(projected[..., dim : 2 * dim].unflatten(-1, shape), self.attn.norm_k, rotary, k, 0)
        from tandem.engine.cuda.flux_kernels import attention_gelu

        attention = attend(q, k, projected[..., 2 * dim : 3 * dim].unflatten(-1, shape))  # [B, S, D]
        return attention_gelu(attention.contiguous(), projected[..., 3 * dim :])


class OutputNorm(nn.Module):
    """`norm_out`: the last LayerNorm, scaled then shifted by the conditioning (this order is
    the reverse of the blocks' modulations)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        scale, shift = ops.linear(self.linear, F.silu(conditioning)).chunk(2, dim=1)
        return modulate(x, shift, scale)


class FluxTransformerStage(nn.Module):
    """Blocks `stage.layers` of a FLUX.1 transformer (the whole one when the stage covers it).

    `forward` takes the image and text streams: on the first stage the packed noisy latents
    [B, N, in_channels] and the T5 prompt embeddings [B, T, joint_dim]; later, the previous
    stage's hidden states [B, N, D] and [B, T, D]. It returns the streams after its blocks, or on
    the last stage the predicted velocity [B, N, out_channels] (and no text).
    """

    def __init__(self, config: FluxTransformerConfig, stage: StageSpec) -> None:
        super().__init__()
        if stage.num_layers != config.num_blocks:
            raise ValueError(f"a stage of {stage.num_layers} blocks for a model of {config.num_blocks}")
        dim = config.inner_dim
        self.config, self.stage = config, stage
        self.x_embedder = nn.Linear(config.in_channels, dim) if stage.is_first else None
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim) if stage.is_first else None
        self.time_text_embed = TimeTextEmbedding(config)
        double = [i for i in stage.layers if config.is_double(i)]
        single = [i - config.num_layers for i in stage.layers if not config.is_double(i)]
        self.transformer_blocks = nn.ModuleDict({str(i): DoubleStreamBlock(config) for i in double})
        self.single_transformer_blocks = nn.ModuleDict({str(i): SingleStreamBlock(config) for i in single})
        self.norm_out = OutputNorm(dim) if stage.is_last else None
        self.proj_out = nn.Linear(dim, config.out_channels) if stage.is_last else None

    def fuse_projections(self) -> None:
        """Join q/k/v (and the single blocks' MLP input) into single matrices, after loading."""
        for block in self.transformer_blocks.values():
            block.attn.fuse()  # type: ignore[union-attr]
        for block in self.single_transformer_blocks.values():
            block.fuse()  # type: ignore[operator]

    def activation_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def conditioning(
        self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor
    ) -> torch.Tensor:
        """The step's conditioning vector [B, D]. timestep [B] is sigma in [0, 1] and guidance
        [B] the scale, both scaled by 1000 here in the activation dtype (as the reference does)."""
        dtype = self.activation_dtype()
        timestep = timestep.to(dtype) * 1000
        guidance = guidance.to(dtype) * 1000 if guidance is not None else None
        return self.time_text_embed(timestep, guidance, pooled.to(dtype))

    def rotary(self, text_length: int, grid: tuple[int, int], device: torch.device) -> Rotary:
        """Rotary tables for the joint sequence: text tokens all at position (0, 0, 0), then the
        image tokens at (0, row, column) of the packed latent grid."""
        rows, columns = grid
        image_ids = torch.zeros(rows, columns, 3, device=device)
        image_ids[..., 1] = torch.arange(rows, device=device)[:, None]
        image_ids[..., 2] = torch.arange(columns, device=device)[None, :]
        text_ids = torch.zeros(text_length, 3, device=device)
        ids = torch.cat([text_ids, image_ids.reshape(rows * columns, 3)])  # [T + N, 3]
        return rotary_tables(ids, self.config.axes_dims_rope, self.config.rope_theta)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, conditioning: torch.Tensor, rotary: Rotary
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = self.activation_dtype()
        if self.x_embedder is not None and self.context_embedder is not None:
            image = ops.linear(self.x_embedder, image.to(dtype))  # [B, N, D]
            text = ops.linear(self.context_embedder, text.to(dtype))  # [B, T, D]
        for block in self.transformer_blocks.values():
            image, text = block(image, text, conditioning, rotary)
        if len(self.single_transformer_blocks):
            text_length = text.shape[1]
            hidden = torch.cat([text, image], dim=1)  # [B, T + N, D]
            for block in self.single_transformer_blocks.values():
                hidden = block(hidden, conditioning, rotary)
            text, image = hidden[:, :text_length], hidden[:, text_length:]
        if self.norm_out is None or self.proj_out is None:
            return image.contiguous(), text.contiguous()
        return ops.linear(self.proj_out, self.norm_out(image, conditioning)), None  # [B, N, out]
