"""The diffusion transformer as pipeline stages that pass plain tensors.

A stage is anything with `forward(StepInputs) -> StepOutputs`. What a batch of images needs on
every stage and for every step (the pooled prompt, the guidance, the latent grid) is an
`ImageBatchContext`, sent once per batch; a step then carries only the two hidden-state streams
and the timestep. Each stage computes the step's conditioning vector and keeps the rotary tables
of the batch's shape itself, so nothing else crosses a stage boundary. Stages keep no state
between calls but that cache, so several batches (or micro-batches) can be in flight through
them in any order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

import torch

from tandem.engine.models.flux import FluxTransformerStage, Rotary
from tandem.model.stage import LayerRange, StageSpec, split_evenly


@dataclass(frozen=True)
class ImageBatchContext:
    """Fixed for all steps of one batch of images."""

    pooled: torch.Tensor  # [B, pooled_dim] CLIP's pooled prompt embedding, per image
    guidance: torch.Tensor | None  # [B] float32 guidance scale (models with the guidance embedding)
    grid: tuple[int, int]  # packed latent rows and columns (the image token positions)
    text_length: int  # T5 tokens of the prompt

    @property
    def image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class StepInputs:
    """One denoising step of one batch, as a stage receives it."""

    context: ImageBatchContext
    image: torch.Tensor  # [B, N, in_channels] noisy latents on the first stage; [B, N, D] after
    text: torch.Tensor  # [B, T, joint_dim] T5 embeddings on the first stage; [B, T, D] after
    timestep: torch.Tensor  # [B] sigma of this step, in the latents' dtype


@dataclass(frozen=True)
class StepOutputs:
    """What a stage sends on: both streams, or from the last stage the velocity alone."""

    image: torch.Tensor  # [B, N, D], or the predicted velocity [B, N, out_channels] from the last
    text: torch.Tensor | None  # [B, T, D]; None from the last stage


class ImageStage(Protocol):
    """One stage of the transformer, wherever it runs (this process, or a runner over a wire)."""

    stage: StageSpec

    def forward(self, step: StepInputs) -> StepOutputs: ...


class TransformerStage:
    """A FluxTransformerStage in this process."""

    def __init__(self, model: FluxTransformerStage) -> None:
        self.model = model
        self.stage = model.stage
        self._rotary: dict[tuple[int, tuple[int, int]], Rotary] = {}

    def rotary(self, context: ImageBatchContext, device: torch.device) -> Rotary:
        key = (context.text_length, context.grid)
        if key not in self._rotary:
            self._rotary.clear()  # one shape at a time is what a stage serves; keep one
            self._rotary[key] = self.model.rotary(context.text_length, context.grid, device)
        return self._rotary[key]

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> StepOutputs:
        context = step.context
        device = step.image.device
        conditioning = self.model.conditioning(step.timestep, context.guidance, context.pooled)  # [B, D]
        image, text = self.model(step.image, step.text, conditioning, self.rotary(context, device))
        return StepOutputs(image=image, text=text)


def stage_specs(num_blocks: int, stages: int | list[LayerRange]) -> list[StageSpec]:
    """StageSpecs over the transformer's blocks: `stages` near-equal ranges, or the given ones
    (contiguous, in order, covering every block)."""
    ranges = split_evenly(num_blocks, stages) if isinstance(stages, int) else list(stages)
    if (
        ranges[0].start != 0
        or ranges[-1].end != num_blocks
        or any(a.end != b.start for a, b in itertools.pairwise(ranges))
    ):
        raise ValueError(f"stages {[str(r) for r in ranges]} do not cover blocks [0, {num_blocks}) in order")
    return [StageSpec(r, num_blocks) for r in ranges]


def next_inputs(step: StepInputs, outputs: StepOutputs) -> StepInputs:
    """What the next stage receives after a stage's outputs (same batch, same step)."""
    assert outputs.text is not None, "only the last stage ends the text stream"
    return StepInputs(context=step.context, image=outputs.image, text=outputs.text, timestep=step.timestep)
