"""What placement needs to know of a text-to-image model: block sizes, the work of a step,
what flows between stages, and the parts beside the transformer. Pure Python.

A diffusion step is bound by matrix throughput, not by memory bandwidth as decoding is: every
step runs every block over every image token, so a stage's time per step is its blocks' FLOPs
over its device's matrix rate. Between stages each step sends the image and text hidden states
(`activation_elements`). The text encoders run once per request and the VAE once per image, so
they go wherever they fit (the first stage's node for the encoders, the last's for the VAE).

Counts are parameters and elements, never bytes: bytes depend on the dtype each device runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tandem.errors import ModelFormatError
from tandem.model.image_config import ImageModelConfig
from tandem.model.shapes import LinearRole, ModelShape


@dataclass(frozen=True)
class ImageModelShape:
    """Sizes of a diffusion transformer per block (global index: double-stream blocks first,
    then single-stream), and of the parts around it.

    `conditioning_parameters` is held by every stage (each computes the step's conditioning
    vector itself); `embedder_parameters` only by the first, `head_parameters` only by the last."""

    name: str
    block_parameters: tuple[int, ...]
    block_flops_per_image: tuple[int, ...]  # one step, one image, at `image_tokens`
    # of `block_parameters`, the linear projections' weights (what `quantize` shrinks)
    block_linear_parameters: tuple[int, ...]
    embedder_parameters: int
    conditioning_parameters: int
    head_parameters: int
    hidden_size: int
    image_tokens: int  # of the size the FLOPs were counted for
    text_tokens: int
    text_encoder_parameters: int  # CLIP
    text_encoder_2_parameters: int  # T5
    vae_parameters: int

    def __post_init__(self) -> None:
        if not self.block_parameters:
            raise ModelFormatError(f"image model {self.name!r} has no blocks")
        if len(self.block_flops_per_image) != len(self.block_parameters):
            raise ModelFormatError(f"image model {self.name!r}: FLOPs need one entry per block")
        if len(self.block_linear_parameters) != len(self.block_parameters):
            raise ModelFormatError(f"image model {self.name!r}: linear weights need one entry per block")

    @property
    def num_blocks(self) -> int:
        return len(self.block_parameters)

    def activation_elements(self, images: int) -> int:
        """Elements sent from one stage to the next per step: image and text hidden states."""
        return images * (self.image_tokens + self.text_tokens) * self.hidden_size

    def stage_parameters(self, start: int, end: int) -> int:
        """Parameters of a stage holding blocks [start, end), with its ends and conditioning."""
        if not 0 <= start < end <= self.num_blocks:
            raise ValueError(f"blocks [{start}, {end}) are not within the model's {self.num_blocks}")
        count = sum(self.block_parameters[start:end]) + self.conditioning_parameters
        if start == 0:
            count += self.embedder_parameters
        if end == self.num_blocks:
            count += self.head_parameters
        return count

    def stage_flops(self, start: int, end: int, images: int) -> int:
        """Matrix FLOPs of one step of blocks [start, end) for `images` images."""
        return images * sum(self.block_flops_per_image[start:end])

    def stage_step_seconds(self, start: int, end: int, matrix_flops: float, images: int = 1) -> float:
        """A stage's time for one step, compute-bound: its blocks' FLOPs over its device's
        measured matrix rate (FLOP/s)."""
        if matrix_flops <= 0:
            raise ValueError(f"a matrix rate must be positive, not {matrix_flops}")
        return self.stage_flops(start, end, images) / matrix_flops

    def transformer_parameter_count(self) -> int:
        return self.stage_parameters(0, self.num_blocks)

    def as_model_shape(self) -> ModelShape:
        """The shape in the vocabulary the text placement splits by memory: blocks as layers,
        the embedders as the embedding and the output layers as the head, each end with its
        stage's copy of the conditioning, and no KV cache. A middle stage's copy (0.03 B
        parameters for FLUX.1) is left inside the per-device overhead. A first cut: that
        placement's speed model is bandwidth-bound, where a diffusion step is compute-bound.

        Each block's projections are listed as one linear role, so a `quantize` request counts
        them in its format; the embedders, conditioning and output layers stay in the dtype
        (`quantizes_ends_at_load` False), as the engine holds them."""
        return ModelShape(
            name=self.name,
            layer_parameters=self.block_parameters,
            layer_parameters_read=self.block_parameters,
            layer_kv_elements=(0,) * self.num_blocks,
            embedding_parameters=self.embedder_parameters + self.conditioning_parameters,
            head_parameters=self.head_parameters + self.conditioning_parameters,
            tie_word_embeddings=False,
            hidden_size=self.hidden_size,
            max_context=self.image_tokens + self.text_tokens,
            layer_linears=tuple(
                (LinearRole("projections", count, count),) for count in self.block_linear_parameters
            ),
            quantizes_ends_at_load=False,
        )


def image_model_shape(
    config: ImageModelConfig, width: int | None = None, height: int | None = None
) -> ImageModelShape:
    """The shape of a checkpoint at an image size (default: the model's default size)."""
    width = width or config.default_size
    height = height or config.default_size
    pixels_per_token = 2 * config.vae.scale_factor
    image_tokens = (width // pixels_per_token) * (height // pixels_per_token)
    text_tokens = config.max_sequence_length
    transformer = config.transformer
    blocks = range(transformer.num_blocks)
    return ImageModelShape(
        name=config.name,
        block_parameters=tuple(transformer.block_parameter_count(index) for index in blocks),
        block_flops_per_image=tuple(
            transformer.block_flops(index, image_tokens, text_tokens) for index in blocks
        ),
        block_linear_parameters=tuple(transformer.block_linear_weight_count(index) for index in blocks),
        embedder_parameters=transformer.embedder_parameter_count(),
        conditioning_parameters=transformer.conditioning_parameter_count(),
        head_parameters=transformer.head_parameter_count(),
        hidden_size=transformer.inner_dim,
        image_tokens=image_tokens,
        text_tokens=text_tokens,
        text_encoder_parameters=config.text_encoder_parameters,
        text_encoder_2_parameters=config.text_encoder_2_parameters,
        vae_parameters=config.vae_parameters,
    )


def image_seconds(stage_seconds: Sequence[float], steps: int, images: int = 1) -> float:
    """The transformer's time for `images` images of `steps` steps through stages of the given
    per-image step times, with the images in flight one micro-batch each: the first image's
    step takes every stage in turn, each further one the slowest stage's time more (hops and the
    once-per-request encoders and VAE not counted)."""
    if not stage_seconds:
        raise ValueError("a transformer needs at least one stage")
    return steps * (sum(stage_seconds) + (images - 1) * max(stage_seconds))
