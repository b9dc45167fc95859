"""From a runner spec to a running rank of an image model (`spec.task == "image"`): a FLUX.1
checkpoint in diffusers' layout whose transformer blocks are the spec's layers.

`spec.quantize` (int8, int4) quantizes the transformer's block projections as they load
(`engine/images/quantized.py`); the text encoders and the VAE stay in the run's dtype.

Rank 0 holds the first stage and everything that runs once per request: the text encoders (the
prompt is encoded once and shared by the request's images), the scheduler and the VAE, so only
hidden states cross the wire and the images come back where the request came in. Every other
rank holds its stage's blocks and serves the ring (`images_pipeline.serve_image_stage`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tandem import settings
from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.images.decode import ImageDecoder
from tandem.engine.images.loader import load_transformer_stage
from tandem.engine.images.pipeline import FluxImagePipeline, LocalDriver, StageDriver
from tandem.engine.images.stages import TransformerStage
from tandem.engine.images.text import PromptEncoder
from tandem.errors import TandemError
from tandem.model.image_config import load_image_model_config, loaded_image_quantize
from tandem.protocol.runner import RunnerSpec, StageReport
from tandem.runner.assemble import join_group
from tandem.runner.images_pipeline import RingDriver, serve_image_stage
from tandem.runner.wire import pipeline_wire


@dataclass
class ImageRank:
    """One rank of an image instance, loaded. Rank 0 holds `pipeline` (and `ring` when the
    transformer is split); every other rank `serve()`s until rank 0 stops the instance."""

    spec: RunnerSpec
    report: StageReport
    pipeline: FluxImagePipeline | None = None
    ring: RingDriver | None = None
    serve_loop: Callable[[], None] | None = None

    def serve(self) -> None:
        if self.serve_loop is None:
            raise RuntimeError("rank 0 drives its pipeline; only the other ranks serve")
        self.serve_loop()

    def keep_alive(self) -> Callable[[], None] | None:
        return self.ring.keep_alive if self.ring is not None else None

    def close(self) -> None:
        if self.ring is not None:
            self.ring.shutdown()


def start_image_rank(
    spec: RunnerSpec,
    on_listening: Callable[[int], None] | None = None,
    rendezvous_token: str | None = None,
) -> ImageRank:
    """Build rank `spec.rank` of an image instance (see the module doc)."""
    if spec.layout.world_size != spec.layout.num_stages:
        raise TandemError("an image model's stages run one rank each (no tensor-parallel groups)")
    settings.use_engine_options(spec.options)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    config = load_image_model_config(spec.model_dir)
    if spec.num_layers != config.transformer.num_blocks:
        raise TandemError(
            f"the spec splits {spec.num_layers} layers, but {spec.model_dir}'s transformer has "
            f"{config.transformer.num_blocks} blocks"
        )
    quantize = loaded_image_quantize(config, spec.quantize)
    dtype = resolve_dtype(spec.dtype, device, config.checkpoint_dtype, quantized=quantize is not None)
    wire = None
    if spec.world_size > 1:
        join_group(spec, rendezvous_token or settings.rendezvous_token(), on_listening)
        wire = pipeline_wire(device)
    stage = TransformerStage(
        load_transformer_stage(spec.model_dir, config.transformer, spec.stage, device, dtype, quantize)
    )
    parameters = sum(p.numel() * p.element_size() for p in stage.model.parameters())
    if not spec.is_driver:
        assert wire is not None
        report = StageReport("torch", str(device), parameters, 0)
        return ImageRank(
            spec, report, serve_loop=lambda: serve_image_stage(stage, wire, spec.layout, spec.stage_index)
        )
    from diffusers import FlowMatchEulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]

    ring = RingDriver(stage, wire, spec.layout) if wire is not None else None
    driver: StageDriver = ring or LocalDriver([stage])
    encoder = PromptEncoder(spec.model_dir, device, dtype, config.max_sequence_length)
    decoder = ImageDecoder.from_checkpoint(spec.model_dir, config.vae, device, dtype)
    for module in (encoder.clip, encoder.t5, decoder.vae):
        parameters += sum(p.numel() * p.element_size() for p in module.parameters())
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(Path(spec.model_dir) / "scheduler")
    pipeline = FluxImagePipeline(config, driver, scheduler, decoder, encoder, device, dtype)
    return ImageRank(spec, StageReport("torch", str(device), parameters, 0), pipeline=pipeline, ring=ring)
