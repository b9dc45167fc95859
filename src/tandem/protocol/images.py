"""The messages of a text-to-image instance: what a node asks its rank 0 for (`ImageFields` in
a `GenerateRequest`), what rank 0 answers (`ImageProgress` after each step, `Images` at the end),
and what its transformer stages pass each other with the hidden states (`runner/images_*.py`).

    rank 0 -> next stage -> ... -> last stage:  ImageBatch | ImageStep | ImageRelease (| KeepAlive | Stop)
    last stage -> rank 0:                       ImageVelocity
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ImageFields:
    """The image settings of a request; None takes the model's default. Checked by rank 0
    against its model's limits (`model.image_request`): a bad one is `Rejected` naming it."""

    size: str | None = None  # "WIDTHxHEIGHT"
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    n: int = 1


# --- rank 0 -> node ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageProgress:
    """`step` of `steps` denoising steps are done for every image of the request."""

    TAG: ClassVar[str] = "image-progress"
    request_id: str
    step: int
    steps: int


@dataclass(frozen=True)
class Images:
    """The request's images, PNG files in base64, with the seed that remakes them."""

    TAG: ClassVar[str] = "images"
    request_id: str
    png_base64: tuple[str, ...]
    width: int
    height: int
    seed: int
    steps: int
    seconds: float


# --- between the stages of an image instance ----------------------------------------------------


@dataclass(frozen=True)
class ImageBatch:
    """A batch of images starts: what every stage keeps for all its steps. The tensor beside it
    is CLIP's pooled prompt embedding [B, pooled_dim]."""

    TAG: ClassVar[str] = "image-batch"
    batch_id: int
    guidance: float | None  # None: the model has no guidance embedding
    grid: tuple[int, int]
    text_length: int


@dataclass(frozen=True)
class ImageStep:
    """One denoising step of batch `batch_id` at `timestep` (sigma, in the hidden states'
    dtype). The tensor beside it is the text and image hidden states joined along the tokens,
    [B, text_length + N, D], text first."""

    TAG: ClassVar[str] = "image-step"
    batch_id: int
    timestep: float


@dataclass(frozen=True)
class ImageVelocity:
    """The last stage's answer to an `ImageStep`: the velocity [B, N, out_channels] beside it."""

    TAG: ClassVar[str] = "image-velocity"
    batch_id: int


@dataclass(frozen=True)
class ImageRelease:
    """Batches that are done: every stage forgets their context."""

    TAG: ClassVar[str] = "image-release"
    batch_ids: tuple[int, ...]


ImageStageMessage = ImageBatch | ImageStep | ImageVelocity | ImageRelease
