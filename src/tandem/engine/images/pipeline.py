"""FLUX.1 text-to-image in one process: prompt → embeddings (once) → denoising steps through
the transformer's stages → VAE → PNG.

The steps follow FluxPipeline's: the same seeded noise, the same flow-match schedule (diffusers'
FlowMatchEulerDiscreteScheduler, sigmas shifted by mu from the image's token count where the
checkpoint asks for it), the same timestep and guidance rounding, the same VAE scaling. So for
the same weights, prompt and seed the image is the same.

`LocalDriver` runs every stage in this process; `runner/images_pipeline.py`'s driver sends
each step through stages in runner processes instead. A batch can be cut into micro-batches, each with its own
latents and schedule, taken step by step in turn: the order a pipeline of stages on several
devices keeps busy.
"""

# diffusers and transformers export lazily and type their call signatures loosely for checkers.
# pyright: reportPrivateImportUsage=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tandem.engine.images.decode import ImageDecoder, to_pixels
from tandem.engine.images.latents import initial_noise
from tandem.engine.images.loader import load_transformer_stage
from tandem.engine.images.png import encode_png
from tandem.engine.images.stages import (
    ImageBatchContext,
    ImageStage,
    StepInputs,
    TransformerStage,
    next_inputs,
    stage_specs,
)
from tandem.engine.images.text import PromptEmbeddings, PromptEncoder
from tandem.model.image_config import (
    FlowMatchConfig,
    ImageModelConfig,
    load_image_model_config,
    loaded_image_quantize,
)
from tandem.model.image_request import ImageRequest, image_request
from tandem.model.stage import LayerRange

StepCallback = Callable[[int, int], None]  # (steps done, steps in all), after each step


@dataclass(frozen=True)
class GeneratedImages:
    """The images of one request, as 8-bit RGB, with what made them."""

    pixels: np.ndarray  # [n, height, width, 3] uint8
    seed: int
    steps: int
    seconds: float

    def png(self, index: int = 0) -> bytes:
        return encode_png(self.pixels[index])


class StageDriver(Protocol):
    """Takes steps through the transformer's stages and hands back their velocities in the order
    they were submitted; several steps (of different batches) may be in flight at once."""

    def submit(self, batch_id: int, step: StepInputs) -> None: ...

    def collect(self) -> torch.Tensor: ...

    def release(self, batch_ids: Sequence[int]) -> None:
        """The batches are done (their stages may forget them)."""
        ...


class LocalDriver:
    """Runs a step through every stage in turn, in this process, as it is submitted."""

    def __init__(self, stages: Sequence[ImageStage]) -> None:
        self.stages = list(stages)
        self._done: deque[torch.Tensor] = deque()

    def velocity(self, step: StepInputs) -> torch.Tensor:
        """The predicted velocity [B, N, out_channels] of one step of one batch."""
        for stage in self.stages[:-1]:
            step = next_inputs(step, stage.forward(step))
        return self.stages[-1].forward(step).image

    def submit(self, batch_id: int, step: StepInputs) -> None:
        self._done.append(self.velocity(step))

    def collect(self) -> torch.Tensor:
        return self._done.popleft()

    def release(self, batch_ids: Sequence[int]) -> None:
        self._done.clear()


def flow_match_schedule(base, config: FlowMatchConfig, steps: int, image_tokens: int, device: torch.device):
    """A fresh scheduler (its step counter is per batch) set for `steps` steps, as FluxPipeline
    sets it: sigmas evenly from 1 to 1/steps, shifted by mu where the config asks for it."""
    scheduler = type(base).from_config(base.config)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device, mu=config.mu(image_tokens))
    scheduler.set_begin_index(0)
    return scheduler


@dataclass
class _MicroBatch:
    latents: torch.Tensor  # [b, N, in_channels]
    text: torch.Tensor  # [b, T, joint_dim]
    context: ImageBatchContext
    scheduler: object
    batch_id: int = field(default_factory=lambda: next(_batch_ids))


_batch_ids = itertools.count()  # unique within a process: the stages key their contexts by it


def denoise(
    driver: StageDriver,
    base_scheduler,
    schedule_config: FlowMatchConfig,
    latents: torch.Tensor,
    embeddings: PromptEmbeddings,
    guidance: float | None,
    grid: tuple[int, int],
    steps: int,
    micro_batch: int | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Noise [B, N, in_channels] → denoised latents of the same shape, `micro_batch` images at
    a time through the stages (all B at once when None). Every micro-batch's next step is
    submitted as soon as its last one's velocity is back, so with a driver over several devices
    the micro-batches are in flight through the stages together."""
    images = latents.shape[0]
    size = micro_batch or images
    batches = []
    for start in range(0, images, size):
        part = slice(start, min(start + size, images))
        count = part.stop - part.start
        guidance_tensor = (
            torch.full([1], guidance, device=latents.device, dtype=torch.float32).expand(count)
            if guidance is not None
            else None
        )
        context = ImageBatchContext(
            pooled=embeddings.pooled[part],
            guidance=guidance_tensor,
            grid=grid,
            text_length=embeddings.sequence.shape[1],
        )
        scheduler = flow_match_schedule(
            base_scheduler, schedule_config, steps, grid[0] * grid[1], latents.device
        )
        batches.append(_MicroBatch(latents[part], embeddings.sequence[part], context, scheduler))
    timesteps = batches[0].scheduler.timesteps  # type: ignore[attr-defined]

    def submit(index: int, batch: _MicroBatch) -> None:
        # the model's timestep is sigma, rounded to the latents' dtype first (as FluxPipeline does)
        timestep = timesteps[index].expand(batch.latents.shape[0]).to(batch.latents.dtype) / 1000
        step = StepInputs(context=batch.context, image=batch.latents, text=batch.text, timestep=timestep)
        driver.submit(batch.batch_id, step)

    try:
        for batch in batches:
            submit(0, batch)
        for index, t in enumerate(timesteps):
            for batch in batches:
                velocity = driver.collect()
                batch.latents = batch.scheduler.step(velocity, t, batch.latents, return_dict=False)[0]  # type: ignore[attr-defined]
                if index + 1 < len(timesteps):
                    submit(index + 1, batch)
            if on_step is not None:
                on_step(index + 1, len(timesteps))
    finally:
        driver.release([batch.batch_id for batch in batches])
    return torch.cat([batch.latents for batch in batches])


class FluxImagePipeline:
    """A FLUX.1 model in one process: its prompt encoder (None when the caller brings prompt
    embeddings, as the benchmark does), the transformer's stages behind a driver, the
    scheduler and the VAE decoder."""

    def __init__(
        self,
        config: ImageModelConfig,
        driver: StageDriver,
        scheduler,
        decoder: ImageDecoder,
        encoder: PromptEncoder | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.config, self.driver, self.scheduler = config, driver, scheduler
        self.decoder, self.encoder = decoder, encoder
        self.device, self.dtype = device, dtype

    @classmethod
    def from_checkpoint(
        cls,
        model_dir: str | Path,
        device: torch.device,
        dtype: torch.dtype,
        stages: int | list[LayerRange] = 1,
        config: ImageModelConfig | None = None,
        quantize: str | None = None,
    ) -> FluxImagePipeline:
        """A checkpoint in diffusers' layout, its transformer split into `stages` (a count of
        near-equal block ranges, or the ranges themselves), everything on `device`; `quantize`
        (int8, int4) quantizes the transformer's blocks as they load."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = config or load_image_model_config(model_dir)
        quantize = loaded_image_quantize(config, quantize)
        transformer = config.transformer
        driver = LocalDriver(
            [
                TransformerStage(
                    load_transformer_stage(model_dir, transformer, spec, device, dtype, quantize)
                )
                for spec in stage_specs(transformer.num_blocks, stages)
            ]
        )
        return cls(
            config,
            driver,
            FlowMatchEulerDiscreteScheduler.from_pretrained(Path(model_dir) / "scheduler"),
            ImageDecoder.from_checkpoint(model_dir, config.vae, device, dtype),
            PromptEncoder(model_dir, device, dtype, config.max_sequence_length),
            device,
            dtype,
        )

    def request(self, prompt: object, **fields: object) -> ImageRequest:
        """A checked request for this model (see `image_request`)."""
        return image_request(self.config, prompt, **fields)  # type: ignore[arg-type]

    @torch.inference_mode()
    def latents(
        self,
        request: ImageRequest,
        embeddings: PromptEmbeddings | None = None,
        micro_batch: int | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """The denoised packed latents [n, N, in_channels] of a request. The prompt is encoded
        once (or its `embeddings` given) and shared by the request's images."""
        if embeddings is None:
            if self.encoder is None:
                raise ValueError("this pipeline has no prompt encoder: give the prompt's embeddings")
            embeddings = self.encoder.encode(request.prompt)
        embeddings = embeddings.repeated(request.n)
        grid = request.latent_grid(self.config)
        noise = initial_noise(
            request.seed, request.n, self.config.latent_channels, grid, self.device, embeddings.sequence.dtype
        )
        guidance = request.guidance if self.config.transformer.guidance_embeds else None
        return denoise(
            self.driver,
            self.scheduler,
            self.config.scheduler,
            noise,
            embeddings,
            guidance,
            grid,
            request.steps,
            micro_batch,
            on_step,
        )

    def images(self, latents: torch.Tensor, request: ImageRequest) -> torch.Tensor:
        """Decoded images [n, 3, H, W] in [-1, 1] from a request's latents."""
        return self.decoder.decode(latents, request.latent_grid(self.config))

    def generate(
        self,
        request: ImageRequest,
        embeddings: PromptEmbeddings | None = None,
        micro_batch: int | None = None,
        on_step: StepCallback | None = None,
    ) -> GeneratedImages:
        """The request's images as 8-bit RGB."""
        started = time.perf_counter()
        latents = self.latents(request, embeddings, micro_batch, on_step)
        pixels = to_pixels(self.images(latents, request))
        return GeneratedImages(pixels, request.seed, request.steps, time.perf_counter() - started)
