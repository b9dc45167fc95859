"""Ollama's image generation on POST /api/generate: an image model's `prompt` with the
(experimental) `width`, `height` and `steps` fields and `options.seed`, answered as Ollama
answers it: JSON lines with `completed`/`total` steps while it runs, then a last line with the
base64 PNG in `image` (or that line alone with `stream: false`). One image a request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tandem.api.errors import APIError
from tandem.api.generation import Generation, GenerationFailed
from tandem.api.images import collect_images, start_images
from tandem.api.ollama_schemas import OllamaGenerateRequest
from tandem.api.serving import serving_of, without_default_tag
from tandem.api.streaming import GenerationResponse, json_line
from tandem.protocol.images import ImageFields, ImageProgress, Images

NDJSON = "application/x-ndjson"
IMAGE_FIELDS = ("width", "height", "steps")
IMAGE_MODEL_REFUSAL = "makes images; it cannot chat"  # how an image model refuses text (check_model_task)


def asks_for_an_image(body: OllamaGenerateRequest) -> bool:
    """Whether the request carries one of Ollama's image-generation fields."""
    extra = body.model_extra or {}
    return any(extra.get(name) not in (None, 0) for name in IMAGE_FIELDS)


def ollama_image_fields(body: OllamaGenerateRequest) -> ImageFields:
    """Ollama's fields as the image request's; 0 or absent takes the model's default."""
    extra = body.model_extra or {}
    values = {name: extra.get(name) or None for name in IMAGE_FIELDS}
    seed = body.options.seed if body.options is not None else None
    return ImageFields(width=values["width"], height=values["height"], steps=values["steps"], seed=seed)


def _stamp(model: str) -> dict[str, Any]:
    return {"model": model, "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}


def final_line(model: str, images: Images, arrived: float) -> dict[str, Any]:
    return {
        **_stamp(model),
        "response": "",
        "image": images.png_base64[0],
        "done": True,
        "done_reason": "stop",
        "total_duration": int((time.monotonic() - arrived) * 1e9),
        "load_duration": 0,
    }


async def progress_lines(generation: Generation, model: str, arrived: float) -> AsyncIterator[bytes]:
    try:
        async for event in generation.image_events():
            if isinstance(event, ImageProgress):
                line = {**_stamp(model), "response": "", "done": False}
                yield json_line({**line, "completed": event.step, "total": event.steps})
            else:
                yield json_line(final_line(model, event, arrived))
    except GenerationFailed as error:
        yield json_line({"error": str(error)})


async def ollama_generate_image(body: OllamaGenerateRequest, request: Request) -> Any:
    """An image from an image model, as Ollama answers /api/generate for one."""
    arrived = time.monotonic()
    if not body.prompt.strip():
        raise APIError(400, "prompt: describe the image to generate", param="prompt")
    fields = ollama_image_fields(body)
    generation = await start_images(serving_of(request), without_default_tag(body.model), body.prompt, fields)
    if body.stream is not False:
        return GenerationResponse(progress_lines(generation, body.model, arrived), generation, NDJSON)
    # a response of its own: the route's response model (a text reply) would drop `image`
    return JSONResponse(final_line(body.model, await collect_images(generation), arrived))
