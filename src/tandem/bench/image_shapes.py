"""Named text-to-image shapes for `tandem bench` with random weights: the diffusers configs of
their transformer, VAE and scheduler (what `model_index.json`'s folders would hold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tandem.model.image_config import (
    ImageLimits,
    ImageModelConfig,
    parse_flow_match_config,
    parse_flux_transformer_config,
    parse_vae_config,
)

# FLUX.1's VAE (black-forest-labs/FLUX.1-dev, vae/config.json)
FLUX_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
FLUX_TRANSFORMER: dict[str, Any] = dict(
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=[16, 56, 56],
)
DEV_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
SCHNELL_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


@dataclass(frozen=True)
class ImageBenchShape:
    """A text-to-image model to build with random weights, and the run it is timed at."""

    name: str
    transformer: dict[str, Any]  # FluxTransformer2DModel's config
    vae: dict[str, Any]  # AutoencoderKL's config
    scheduler: dict[str, Any]  # FlowMatchEulerDiscreteScheduler's config
    max_sequence_length: int  # T5 tokens beside the image
    size: int = 1024  # pixels per side
    steps: int = 28
    guidance: float = 3.5

    def config(self) -> ImageModelConfig:
        """The ImageModelConfig a checkpoint of this shape would have."""
        vae = parse_vae_config(self.vae)
        return ImageModelConfig(
            name=self.name,
            transformer=parse_flux_transformer_config(self.transformer),
            scheduler=parse_flow_match_config(self.scheduler),
            vae=vae,
            max_sequence_length=self.max_sequence_length,
            default_steps=self.steps,
            default_guidance=self.guidance,
            default_size=self.size,
            limits=ImageLimits(pixel_multiple=2 * vae.scale_factor),
        )


IMAGE_SHAPES: dict[str, ImageBenchShape] = {
    "flux-dev": ImageBenchShape(
        "flux-dev", dict(FLUX_TRANSFORMER, guidance_embeds=True), FLUX_VAE, DEV_SCHEDULER, 512
    ),
    "flux-schnell": ImageBenchShape(
        "flux-schnell",
        dict(FLUX_TRANSFORMER, guidance_embeds=False),
        FLUX_VAE,
        SCHNELL_SCHEDULER,
        256,
        steps=4,
        guidance=0.0,
    ),
    # a toy for tests of the benchmark itself (CPU, seconds)
    "flux-tiny": ImageBenchShape(
        "flux-tiny",
        dict(
            in_channels=16,
            num_layers=2,
            num_single_layers=3,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=24,
            guidance_embeds=True,
            axes_dims_rope=[4, 6, 6],
        ),
        dict(
            FLUX_VAE,
            block_out_channels=[8, 16, 16, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        ),
        DEV_SCHEDULER,
        16,
        size=64,
        steps=4,
    ),
}
