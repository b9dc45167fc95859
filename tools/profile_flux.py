"""One FLUX.1 denoising step on a GPU, ours against diffusers' FluxTransformer2DModel on the
same random weights: milliseconds per step, and our step's kernels by CUDA time.

    PYTHONPATH=src python tools/profile_flux.py [--shape flux-dev] [--size 1024] [--kernels 25]
"""

from __future__ import annotations

import argparse

import torch

from tandem.bench.image_shapes import IMAGE_SHAPES
from tandem.bench.images import build_models, random_embeddings
from tandem.bench.measure import timed
from tandem.engine.images.pipeline import LocalDriver
from tandem.engine.images.stages import ImageBatchContext, StepInputs, TransformerStage


def check_float32() -> None:
    """The CUDA fast path (Triton kernels) in float32 on the tiny shape against diffusers."""
    device = torch.device("cuda")
    shape = IMAGE_SHAPES["flux-tiny"]
    config = shape.config().transformer
    reference, _vae, model = build_models(shape, device, torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    grid, text_length = (3, 5), 7
    latents = torch.randn(2, 15, config.in_channels, device=device, generator=generator)
    text = torch.randn(2, text_length, config.joint_attention_dim, device=device, generator=generator)
    pooled = torch.randn(2, config.pooled_projection_dim, device=device, generator=generator)
    timestep, guidance = torch.tensor([0.7, 0.2], device=device), torch.tensor([3.5, 4.0], device=device)
    context = ImageBatchContext(pooled, guidance, grid, text_length)
    ours = LocalDriver([TransformerStage(model)]).velocity(StepInputs(context, latents, text, timestep))
    image_ids = torch.zeros(*grid, 3, device=device)
    image_ids[..., 1] += torch.arange(grid[0], device=device)[:, None]
    image_ids[..., 2] += torch.arange(grid[1], device=device)[None, :]
    with torch.inference_mode():
        expected = reference(
            hidden_states=latents,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=timestep,
            img_ids=image_ids.reshape(-1, 3),
            txt_ids=torch.zeros(text_length, 3, device=device),
            guidance=guidance,
            return_dict=False,
        )[0]
    print(
        f"float32 fast path vs diffusers (flux-tiny, CUDA): max velocity difference "
        f"{(ours - expected).abs().max().item():.3g} of {expected.abs().max().item():.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="flux-dev", choices=sorted(IMAGE_SHAPES))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--kernels", type=int, default=25)
    args = parser.parse_args()
    check_float32()
    device, dtype = torch.device("cuda"), torch.bfloat16
    shape = IMAGE_SHAPES[args.shape]
    config = shape.config()
    reference, _vae, model = build_models(shape, device, dtype)
    embeddings = random_embeddings(shape, device, dtype)
    grid = (args.size // 16, args.size // 16)
    tokens = grid[0] * grid[1]
    latents = torch.randn(1, tokens, config.transformer.in_channels, device=device, dtype=dtype)
    guidance = torch.full([1], 3.5, device=device) if config.transformer.guidance_embeds else None
    context = ImageBatchContext(embeddings.pooled, guidance, grid, embeddings.sequence.shape[1])
    step = StepInputs(context, latents, embeddings.sequence, torch.full([1], 0.5, device=device, dtype=dtype))
    driver = LocalDriver([TransformerStage(model)])
    image_ids = torch.zeros(*grid, 3, device=device)
    image_ids[..., 1] += torch.arange(grid[0], device=device)[:, None]
    image_ids[..., 2] += torch.arange(grid[1], device=device)[None, :]

    def theirs():
        with torch.inference_mode():
            return reference(
                hidden_states=latents,
                encoder_hidden_states=embeddings.sequence,
                pooled_projections=embeddings.pooled,
                timestep=step.timestep,
                img_ids=image_ids.reshape(-1, 3),
                txt_ids=torch.zeros(embeddings.sequence.shape[1], 3, device=device),
                guidance=guidance,
                return_dict=False,
            )[0]

    ours_ms = timed(lambda: driver.velocity(step), device, repeats=5) * 1e3
    theirs_ms = timed(theirs, device, repeats=5) * 1e3
    difference = (driver.velocity(step).float() - theirs().float()).abs().max().item()
    flops = config.transformer.step_flops(tokens, embeddings.sequence.shape[1])
    print(
        f"{args.shape} {args.size}x{args.size}: ours {ours_ms:.1f} ms/step, diffusers {theirs_ms:.1f} ms/step "
        f"({ours_ms / theirs_ms:.2f}x); {flops / 1e12:.1f} TFLOP/step -> ours {flops / ours_ms / 1e9:.0f} TFLOP/s; "
        f"max velocity difference {difference:.3g}"
    )
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        driver.velocity(step)
        torch.cuda.synchronize()
    print(
        trace.key_averages().table(
            sort_by="cuda_time_total", row_limit=args.kernels, max_name_column_width=90
        )
    )


if __name__ == "__main__":
    main()
