"""Our FLUX.1 transformer and pipeline against diffusers' on the same tiny random weights, in
float32: the transformer's velocity to fp32 tolerance, and the pipeline's image (same prompt,
seed, steps and guidance) to the pixel, whole and split into 2 and 3 stages."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from images.tiny_flux import T5_MAX_LENGTH
from tandem.engine.images.latents import initial_noise, pack_latents, unpack_latents
from tandem.engine.images.loader import load_transformer_stage
from tandem.engine.images.pipeline import FluxImagePipeline, LocalDriver
from tandem.engine.images.stages import (
    ImageBatchContext,
    StepInputs,
    TransformerStage,
    stage_specs,
)
from tandem.model.image_config import load_image_model_config
from tandem.model.stage import LayerRange

CPU = torch.device("cpu")
PROMPT = "a photo of an astronaut riding a horse on the moon"
# 48 × 32 pixels: a 3 × 2 grid of packed latent tokens (rows ≠ columns catches a transposed grid)
HEIGHT, WIDTH = 48, 32
SPLITS = {
    "whole": 1,
    "2 stages": 2,  # [0, 3) [3, 5): the cut falls after the first single-stream block
    "3 stages": 3,  # [0, 2) [2, 4) [4, 5): a cut exactly at the double/single boundary
    "uneven": [LayerRange(0, 1), LayerRange(1, 5)],  # a double block alone, then the rest
}


def _pipeline(checkpoint, stages) -> FluxImagePipeline:
    # the reference is given the same (short) T5 length
    config = replace(load_image_model_config(checkpoint.path), max_sequence_length=T5_MAX_LENGTH)
    return FluxImagePipeline.from_checkpoint(
        checkpoint.path, CPU, torch.float32, stages=stages, config=config
    )


def _reference(checkpoint, seed: int, n: int, steps: int, guidance: float, output_type: str):
    return checkpoint.pipeline(
        PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=T5_MAX_LENGTH,
        num_images_per_prompt=n,
        output_type=output_type,
    ).images


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_velocity_matches_diffusers_transformer(tiny_flux_factory, variant, split):
    """One step through our stages against FluxTransformer2DModel.forward on random inputs."""
    checkpoint = tiny_flux_factory(variant)
    reference = checkpoint.pipeline.transformer
    config = load_image_model_config(checkpoint.path).transformer
    stages = [
        TransformerStage(load_transformer_stage(checkpoint.path, config, spec, CPU, torch.float32))
        for spec in stage_specs(config.num_blocks, SPLITS[split])
    ]
    generator = torch.Generator().manual_seed(3)
    batch, grid, text_length = 2, (3, 2), 5
    latents = torch.randn(batch, grid[0] * grid[1], config.in_channels, generator=generator)
    text = torch.randn(batch, text_length, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(batch, config.pooled_projection_dim, generator=generator)
    timestep = torch.tensor([0.75, 0.3])
    guidance = torch.tensor([3.5, 5.0]) if config.guidance_embeds else None
    context = ImageBatchContext(pooled=pooled, guidance=guidance, grid=grid, text_length=text_length)
    ours = LocalDriver(stages).velocity(StepInputs(context, latents, text, timestep))

    image_ids = torch.zeros(*grid, 3)
    image_ids[..., 1] += torch.arange(grid[0])[:, None]
    image_ids[..., 2] += torch.arange(grid[1])[None, :]
    with torch.no_grad():
        expected = reference(
            hidden_states=latents,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=timestep,
            img_ids=image_ids.reshape(-1, 3),
            txt_ids=torch.zeros(text_length, 3),
            guidance=guidance,
            return_dict=False,
        )[0]
    assert ours.shape == expected.shape == (batch, 6, config.out_channels)
    assert expected.abs().max() > 0.1  # a velocity that says something
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", ["whole", "2 stages", "3 stages"])
def test_image_matches_flux_pipeline(tiny_flux_factory, variant, split, record_property):
    """Same weights, prompt and seed: our pipeline's pixels are FluxPipeline's."""
    checkpoint = tiny_flux_factory(variant)
    pipeline = _pipeline(checkpoint, SPLITS[split])
    steps, guidance = (4, 3.5) if variant == "dev" else (3, 0.0)
    request = pipeline.request(
        PROMPT, width=WIDTH, height=HEIGHT, steps=steps, guidance=guidance, seed=11, n=2
    )

    latents = pipeline.latents(request)
    images = pipeline.images(latents, request)  # [n, 3, H, W] in [-1, 1], before rounding
    expected_latents = _reference(checkpoint, 11, 2, steps, guidance, "latent")
    expected = _reference(checkpoint, 11, 2, steps, guidance, "pt")  # [n, 3, H, W] in [0, 1]
    ours = (images * 0.5 + 0.5).clamp(0, 1)
    float_difference = (ours - expected).abs().max().item()
    pixels = pipeline.generate(request).pixels
    expected_pixels = (expected.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pixel_difference = int(np.abs(pixels.astype(int) - expected_pixels.astype(int)).max())
    record_property("max_float_difference", float_difference)
    record_property("max_pixel_difference", pixel_difference)
    print(f"{variant} {split}: max pixel difference {pixel_difference} (float {float_difference:.2e})")

    assert pixels.shape == (2, HEIGHT, WIDTH, 3)
    assert expected.std() > 0.05 and (expected == 0).float().mean() < 0.2  # an image, not a flat field
    torch.testing.assert_close(latents, expected_latents, rtol=1e-5, atol=1e-5)
    assert float_difference < 1e-5
    assert pixel_difference <= 1


def test_other_seed_other_image(tiny_flux_factory):
    """The comparison above would notice a wrong seed: two seeds give clearly different images."""
    pipeline = _pipeline(tiny_flux_factory("dev"), 1)
    first = pipeline.generate(pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=2, seed=1)).pixels
    again = pipeline.generate(pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=2, seed=1)).pixels
    other = pipeline.generate(pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=2, seed=2)).pixels
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).max() > 50


def test_guidance_changes_dev_image(tiny_flux_factory):
    """dev embeds the guidance scale: another scale, another image (the test above can see it)."""
    pipeline = _pipeline(tiny_flux_factory("dev"), 1)
    low = pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=2, seed=1, guidance=1.0)
    high = pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=2, seed=1, guidance=6.0)
    assert not torch.equal(pipeline.latents(low), pipeline.latents(high))


def test_micro_batches_match_the_whole_batch(tiny_flux_factory):
    """Images taken through the stages one micro-batch at a time (as a pipeline over devices
    keeps them in flight) come out as from one batch."""
    pipeline = _pipeline(tiny_flux_factory("dev"), 2)
    request = pipeline.request(PROMPT, width=WIDTH, height=HEIGHT, steps=3, seed=5, n=3)
    steps_seen: list[tuple[int, int]] = []
    whole = pipeline.latents(request)
    split = pipeline.latents(
        request, micro_batch=1, on_step=lambda done, total: steps_seen.append((done, total))
    )
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]


def test_noise_is_flux_pipelines(tiny_flux_factory):
    """Seeded noise and its packing are exactly FluxPipeline.prepare_latents'."""
    reference = tiny_flux_factory("dev").pipeline
    expected, _ = reference.prepare_latents(
        3, 4, HEIGHT, WIDTH, torch.float32, CPU, torch.Generator().manual_seed(42)
    )
    ours = initial_noise(42, 3, 4, (3, 2), CPU, torch.float32)
    assert torch.equal(ours, expected)
    latents = torch.randn(2, 4, 6, 4)
    assert torch.equal(unpack_latents(pack_latents(latents), (3, 2)), latents)
    assert torch.equal(pack_latents(latents), reference._pack_latents(latents, 2, 4, 6, 4))
