"""One text-to-image request, checked against the model's limits. Pure Python.

Each check is a pure function raising `InvalidRequestError` with one line that names the field
and what it accepts, so the API answers 400 with that line.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from tandem.errors import InvalidRequestError
from tandem.model.image_config import ImageLimits, ImageModelConfig

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class ImageRequest:
    """A checked request: `n` images of `width` × `height` pixels from `prompt`, denoised in
    `steps` steps with embedded guidance `guidance` (models without the guidance embedding,
    FLUX.1 schnell, take none and ignore it), from the noise of `seed`."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    n: int = 1

    def latent_grid(self, config: ImageModelConfig) -> tuple[int, int]:
        """(rows, columns) of packed latent tokens: one per 2×2 latent patch."""
        pixels_per_token = 2 * config.vae.scale_factor
        return self.height // pixels_per_token, self.width // pixels_per_token

    def image_tokens(self, config: ImageModelConfig) -> int:
        rows, columns = self.latent_grid(config)
        return rows * columns


def parse_size(size: Any) -> tuple[int, int]:
    """(width, height) from OpenAI's "WIDTHxHEIGHT" (for example "1024x768")."""
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise InvalidRequestError(f"size must be WIDTHxHEIGHT in pixels, for example 1024x1024, not {size!r}")
    return int(match.group(1)), int(match.group(2))


def check_side(field: str, value: Any, limits: ImageLimits) -> int:
    """A width or height: an integer multiple of the model's pixel step, within its limit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{field} must be an integer number of pixels, not {value!r}")
    step = limits.pixel_multiple
    if value % step != 0 or not step <= value <= limits.max_side:
        raise InvalidRequestError(
            f"{field} must be a multiple of {step} between {step} and {limits.max_side} pixels, not {value}"
        )
    return value


def check_steps(value: Any, limits: ImageLimits) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_steps:
        raise InvalidRequestError(f"steps must be an integer from 1 to {limits.max_steps}, not {value!r}")
    return value


def check_guidance(value: Any, limits: ImageLimits) -> float:
    number = _number(value)
    if number is None or not 0.0 <= number <= limits.max_guidance:
        raise InvalidRequestError(
            f"guidance must be a number from 0 to {limits.max_guidance:g}, not {value!r}"
        )
    return number


def check_n(value: Any, limits: ImageLimits) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_images:
        raise InvalidRequestError(f"n must be an integer from 1 to {limits.max_images}, not {value!r}")
    return value


def check_seed(value: Any) -> int:
    """A seed in [0, 2⁶³ − 1]; None draws one (returned with the images, so they can be remade)."""
    if value is None:
        return random.randrange(MAX_SEED)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InvalidRequestError(f"seed must be an integer from 0 to {MAX_SEED}, not {value!r}")
    return value


def check_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"prompt must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidRequestError("prompt must not be empty")
    return value


def image_request(
    config: ImageModelConfig,
    prompt: Any,
    *,
    size: Any = None,
    width: Any = None,
    height: Any = None,
    steps: Any = None,
    guidance: Any = None,
    seed: Any = None,
    n: Any = 1,
) -> ImageRequest:
    """The checked request, with the model's defaults for what was not given. `size`
    ("WIDTHxHEIGHT") and `width`/`height` are two spellings of the same thing; give one."""
    limits = config.limits
    if size is not None:
        if width is not None or height is not None:
            raise InvalidRequestError("size: give either size or width and height, not both")
        width, height = parse_size(size)
    default = config.default_size
    named = ("size (width)", "size (height)") if size is not None else ("width", "height")
    return ImageRequest(
        prompt=check_prompt(prompt),
        width=check_side(named[0], default if width is None else width, limits),
        height=check_side(named[1], default if height is None else height, limits),
        steps=check_steps(config.default_steps if steps is None else steps, limits),
        guidance=check_guidance(config.default_guidance if guidance is None else guidance, limits),
        seed=check_seed(seed),
        n=check_n(n, limits),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_model_task(model: str, is_image_model: bool, wants_images: bool) -> None:
    """Refuse an image model asked for text (chat, completions) or a text model asked for
    images, naming the request's `model` field."""
    if is_image_model and not wants_images:
        raise InvalidRequestError(
            f"model {model!r} makes images; it cannot chat or complete text (use /v1/images/generations)"
        )
    if wants_images and not is_image_model:
        raise InvalidRequestError(
            f"model {model!r} is a text model; it cannot make images (use an image model)"
        )
