"""`tandem bench --shape flux-dev`: seconds per image of our FLUX.1 pipeline beside the matrix
throughput floor and diffusers' own FluxPipeline, on the same random weights in the same run.

Both pipelines get the same prompt embeddings (random tensors of T5's and CLIP's shapes): the
text encoders run once per request, are `transformers`' own modules in both, and would only add
the same time to each. What is timed is the rest of a request: seeded noise, every denoising
step, the VAE decode and the 8-bit image (diffusers: its `pil` output).

The floor is the transformer's matrix FLOPs of every step (projections and attention, see
`FluxTransformerConfig.step_flops`) over the measured bfloat16 matrix rate: the time the steps
would take if every FLOP ran at the rate of one large matrix product.
"""

# diffusers and transformers export lazily and type their call signatures loosely for checkers.
# pyright: reportPrivateImportUsage=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from tandem.bench.image_shapes import IMAGE_SHAPES, ImageBenchShape
from tandem.bench.measure import matmul_flops, synchronize, timed
from tandem.engine.device import DTYPE_NAMES
from tandem.engine.images.decode import ImageDecoder
from tandem.engine.images.loader import build_empty_stage, fill_stage
from tandem.engine.images.pipeline import FluxImagePipeline, LocalDriver
from tandem.engine.images.stages import TransformerStage
from tandem.engine.images.text import PromptEmbeddings
from tandem.engine.models.flux import FluxTransformerStage
from tandem.model.image_request import image_request
from tandem.model.stage import StageSpec
from tandem.sizes import format_bytes


@dataclass
class ImageBenchReport:
    device: str
    torch_version: str
    shape: str
    dtype: str
    width: int
    height: int
    steps: int
    parameters: int
    flops_per_step: int
    matmul_flops: float
    floor_seconds: float  # the steps' FLOPs at the measured matrix rate
    engine: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    max_pixel_difference: int | None = None  # our image against diffusers' (same seed)
    peak_memory_bytes: int = 0
    quantize: str | None = None  # the engine's transformer blocks (the baseline stays in `dtype`)
    weight_bytes: int = 0  # the engine's transformer, as held

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class _StateCheckpoint:
    """The part of `engine.checkpoint.Checkpoint` that `fill_stage` reads, over a state dict."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def _random_module(build, device: torch.device, dtype: torch.dtype):
    """A diffusers module built directly on `device` in `dtype`, with its own random init."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return build().eval()
    finally:
        torch.set_default_dtype(previous)


def build_models(
    shape: ImageBenchShape, device: torch.device, dtype: torch.dtype, quantize: str | None = None
):
    """diffusers' transformer and VAE with random weights, and our transformer on the very same
    tensors (loaded by name; only the fused projections are new copies), its blocks' projections
    quantized as the loader quantizes them with `quantize` (int8, int4, fp8)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    reference = _random_module(lambda: FluxTransformer2DModel(**shape.transformer), device, dtype)
    vae = _random_module(lambda: AutoencoderKL(**shape.vae), device, dtype)
    config = shape.config()
    ours = build_empty_stage(config.transformer, StageSpec.whole(config.transformer.num_blocks))
    tensors = _StateCheckpoint(dict(reference.state_dict()))
    return reference, vae, fill_stage(ours, tensors, device, dtype, quantize)


def our_pipeline(
    shape: ImageBenchShape, model: FluxTransformerStage, vae, device: torch.device, dtype: torch.dtype
) -> FluxImagePipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = shape.config()
    return FluxImagePipeline(
        config,
        LocalDriver([TransformerStage(model)]),
        FlowMatchEulerDiscreteScheduler(**shape.scheduler),
        ImageDecoder(vae, config.vae),
        None,
        device,
        dtype,
    )


def diffusers_pipeline(shape: ImageBenchShape, transformer, vae):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**shape.scheduler),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def random_embeddings(shape: ImageBenchShape, device: torch.device, dtype: torch.dtype) -> PromptEmbeddings:
    generator = torch.Generator(device=device).manual_seed(0)
    transformer = shape.config().transformer
    sequence = torch.randn(
        1, shape.max_sequence_length, transformer.joint_attention_dim, generator=generator, device=device
    )
    pooled = torch.randn(1, transformer.pooled_projection_dim, generator=generator, device=device)
    return PromptEmbeddings(sequence=sequence.to(dtype), pooled=pooled.to(dtype))


def run_image_benchmark(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    size: int | None = None,
    steps: int | None = None,
    baseline: bool = True,
    repeats: int = 3,
    quantize: str | None = None,
) -> ImageBenchReport:
    """Time one image of `size`² pixels at `steps` steps (the shape's defaults when None), the
    engine's transformer blocks quantized with `quantize` (int8, int4, fp8; the baseline stays
    in `dtype`, so the pixel difference then measures what quantizing changed)."""
    shape = IMAGE_SHAPES[name]
    config = shape.config()
    request = image_request(config, "benchmark", width=size, height=size, steps=steps, seed=0)
    text_tokens = shape.max_sequence_length
    flops_per_step = config.transformer.step_flops(request.image_tokens(config), text_tokens)
    rate = matmul_flops(device, dtype)
    report = ImageBenchReport(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch_version=torch.__version__,
        shape=name,
        dtype=DTYPE_NAMES[dtype],
        width=request.width,
        height=request.height,
        steps=request.steps,
        parameters=config.transformer.total_parameter_count(),
        flops_per_step=flops_per_step,
        matmul_flops=rate,
        floor_seconds=request.steps * flops_per_step / rate,
        quantize=quantize,
    )
    reference, vae, model = build_models(shape, device, dtype, quantize)
    report.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embeddings = random_embeddings(shape, device, dtype)
    ours = our_pipeline(shape, model, vae, device, dtype)
    warmup = image_request(config, "warm-up", width=request.width, height=request.height, steps=2, seed=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def engine_image() -> np.ndarray:
        return ours.generate(request, embeddings).pixels

    ours.generate(warmup, embeddings)
    seconds = timed(engine_image, device, repeats=repeats, warmup=0)
    pixels = engine_image()
    steps_only = timed(lambda: ours.latents(request, embeddings), device, repeats=1, warmup=0)
    report.engine = {
        "seconds_per_image": seconds,
        "denoise_seconds": steps_only,
        "seconds_per_step": steps_only / request.steps,
        "fraction_of_floor": report.floor_seconds / seconds,
    }
    if device.type == "cuda":
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    if baseline:
        reference_pipeline = diffusers_pipeline(shape, reference, vae)

        def reference_image(run=request) -> np.ndarray:
            images = reference_pipeline(
                prompt_embeds=embeddings.sequence,
                pooled_prompt_embeds=embeddings.pooled,
                height=run.height,
                width=run.width,
                num_inference_steps=run.steps,
                guidance_scale=run.guidance,
                generator=torch.Generator().manual_seed(run.seed),
                output_type="pil",
            ).images
            synchronize(device)
            return np.stack([np.asarray(image) for image in images])

        reference_image(warmup)
        base = timed(reference_image, device, repeats=repeats, warmup=0)
        report.baseline = {"name": "diffusers FluxPipeline", "seconds_per_image": base}
        report.max_pixel_difference = int(np.abs(reference_image().astype(int) - pixels.astype(int)).max())
    return report


def format_image_report(report: ImageBenchReport) -> list[str]:
    engine = report.engine
    blocks = f", blocks {report.quantize}" if report.quantize else ""
    lines = [
        f"{report.shape} {report.dtype}{blocks} on {report.device} (torch {report.torch_version}): "
        f"one {report.width}x{report.height} image, {report.steps} steps; transformer weights "
        f"{format_bytes(report.weight_bytes)}",
        f"floor: {report.flops_per_step / 1e12:.1f} TFLOP per step at the measured "
        f"{report.matmul_flops / 1e12:.0f} TFLOP/s matmul -> {report.floor_seconds:.2f} s",
        f"engine: {engine['seconds_per_image']:.2f} s per image ({engine['seconds_per_step'] * 1e3:.0f} ms "
        f"per step), {engine['fraction_of_floor'] * 100:.0f}% of the floor",
    ]
    if report.baseline:
        base = report.baseline["seconds_per_image"]
        lines.append(
            f"baseline ({report.baseline['name']}): {base:.2f} s per image -> engine takes "
            f"{engine['seconds_per_image'] / base:.2f}x its time; max pixel difference "
            f"{report.max_pixel_difference}"
        )
    if report.peak_memory_bytes:
        lines.append(f"peak GPU memory (engine): {report.peak_memory_bytes / 1e9:.1f} GB")
    return lines


def run_image_bench_command(args) -> int:
    """`tandem bench --shape flux-*` (the arguments of `cli/bench.py`)."""
    from tandem.engine.device import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    report = run_image_benchmark(
        args.shape, device, dtype, args.size, args.steps, baseline=args.baseline, quantize=args.quantize
    )
    print("\n".join(format_image_report(report)))
    if args.json:
        args.json.write_text(report.to_json())
    return 0
