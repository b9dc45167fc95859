"""Rotary position embeddings: inverse frequencies per rope type, and their application.

The arithmetic follows the reference implementation step for step (float32 frequencies, cos/sin
cast to the activation dtype) so that logits agree to floating-point tolerance.
"""

from __future__ import annotations

import math

import torch

from tandem.model.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies for the configured rope type."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float) / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    if rope.rope_type == "yarn":
        return _yarn(rope, head_dim)
    return inv_freq


def _yarn(rope: RopeConfig, dim: int) -> torch.Tensor:
    # YaRN: frequencies that turn fewer than `beta_slow` times over the original context are
    # interpolated (divided by `factor`), those that turn more than `beta_fast` times kept, and a
    # linear ramp over the dimensions between blends the two.
    original = rope.original_max_position_embeddings or 2048

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the ramp needs a width
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    positions = rope.theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / positions, 1.0 / (rope.factor * positions)
    kept = 1 - ramp
    return interpolation * (1 - kept) + extrapolation * kept


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the middle band blended.
    original = rope.original_max_position_embeddings or 8192
    low_freq_wavelen = original / rope.low_freq_factor
    high_freq_wavelen = original / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (original / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ([B, T, head_dim]) for integer `positions` ([B, T]), multiplied by
    `scale` (YaRN's attention factor) before rounding to `dtype`."""
    freqs = positions[..., None].float() * inv_freq.float()  # [B, T, head_dim/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, head_dim]
    if scale == 1.0:
        return angles.cos().to(dtype), angles.sin().to(dtype)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` ([B, heads, T, head_dim]) by the angles in cos/sin ([B, T, head_dim])."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, head_dim]
    return x * cos + _rotate_half(x) * sin
