"""Latents to pixels: diffusers' AutoencoderKL decoder, then 8-bit RGB as FluxPipeline makes it."""

# diffusers and transformers export lazily and type their call signatures loosely for checkers.
# pyright: reportPrivateImportUsage=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tandem.engine.images.latents import unpack_latents
from tandem.errors import ModelFormatError
from tandem.model.image_config import VaeConfig


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → [B, H, W, 3] uint8 (rounded, as diffusers' image processor does)."""
    unit = (images * 0.5 + 0.5).clamp(0, 1)
    array = unit.cpu().permute(0, 2, 3, 1).float().numpy()
    return (array * 255).round().astype(np.uint8)


class ImageDecoder:
    """A diffusers AutoencoderKL (`vae`) and the scaling its latents were trained with."""

    def __init__(self, vae, config: VaeConfig) -> None:
        self.vae, self.config = vae.eval(), config
        self.device = next(vae.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, model_dir: str | Path, config: VaeConfig, device: torch.device, dtype: torch.dtype
    ) -> ImageDecoder:
        """The checkpoint's `vae/`, on `device`."""
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(Path(model_dir) / "vae", dtype=dtype)
        except (OSError, ValueError) as error:
            raise ModelFormatError(f"cannot load the VAE of {model_dir}: {error}") from None
        return cls(vae.to(device), config)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Packed latents [B, N, 4C] → images [B, 3, H, W] in [-1, 1] (unclamped)."""
        latents = unpack_latents(tokens, grid)  # [B, C, 2 rows, 2 columns]
        latents = latents / self.config.scaling_factor + self.config.shift_factor
        return self.vae.decode(latents.to(self.device, self.vae.dtype), return_dict=False)[0]
