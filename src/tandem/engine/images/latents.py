"""Latents of FLUX.1: seeded noise, and packing each 2×2 latent patch into one token.

The VAE's latents are [B, C, H, W]; the transformer reads them as [B, (H/2)·(W/2), 4C] tokens,
row-major over the patch grid, each token's channels ordered (C, patch row, patch column).
"""

from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)(W/2), 4C]."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # [B, H/2, W/2, C, 2, 2]
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, rows·columns, 4C] → [B, C, 2·rows, 2·columns]: the inverse of `pack_latents`."""
    rows, columns = grid
    batch, _, packed = tokens.shape
    patches = tokens.view(batch, rows, columns, packed // 4, 2, 2)
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # [B, C, rows, 2, columns, 2]
    return patches.reshape(batch, packed // 4, rows * 2, columns * 2)


def initial_noise(
    seed: int,
    images: int,
    channels: int,
    grid: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Packed Gaussian noise [images, rows·columns, 4·channels] for `seed`: drawn on the CPU in
    `dtype` as one [images, channels, 2·rows, 2·columns] tensor, exactly as FluxPipeline draws it
    from `torch.Generator("cpu").manual_seed(seed)`, so the same seed gives the same image."""
    rows, columns = grid
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((images, channels, 2 * rows, 2 * columns), generator=generator, dtype=dtype)
    return pack_latents(noise.to(device))
