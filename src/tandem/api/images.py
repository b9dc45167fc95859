"""Text-to-image: OpenAI's POST /v1/images/generations, answered whole (`b64_json`) or, with
`"stream": true`, as server-sent events: one `image_generation.progress` per denoising step,
then one `image_generation.completed` per image.

Besides OpenAI's fields (`prompt`, `model`, `n`, `size`, `response_format`), a request may give
`seed`, `steps` (`num_inference_steps`) and `guidance` (`guidance_scale`); the official client
sends them in `extra_body`. The image model's rank 0 checks them against the model's limits, so a
bad one is a 400 whose message starts with the field's name. Images come back in the response
only: `response_format: "url"` is refused (there is nowhere to host them).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tandem.api.errors import APIError
from tandem.api.generation import Generation, GenerationFailed
from tandem.api.serving import Serving, serving_of, without_default_tag
from tandem.api.streaming import GenerationResponse, sse
from tandem.protocol.images import ImageFields, ImageProgress, Images
from tandem.protocol.runner import GenerateRequest

router = APIRouter(tags=["OpenAI"])

SSE = "text/event-stream"


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    prompt: str = Field(description="what to draw")
    model: str = Field(min_length=1, description="an image model (FLUX.1 dev or schnell)")
    n: int | None = Field(None, description="images of the prompt, 1 to 10 (one batch)")
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of 16; default the model's")
    response_format: str | None = Field(None, description="b64_json (the only one: url is refused)")
    seed: int | None = Field(None, description="the noise's seed; drawn at random when absent")
    steps: int | None = Field(None, alias="num_inference_steps", description="denoising steps")
    guidance: float | None = Field(None, alias="guidance_scale", description="embedded guidance (dev)")
    stream: bool | None = Field(None, description="server-sent events: progress per step, then the images")
    quality: str | None = Field(None, description="accepted and ignored")
    style: str | None = Field(None, description="accepted and ignored")
    user: str | None = Field(None, description="accepted and ignored")


def image_fields(body: ImageGenerationRequest) -> ImageFields:
    """The request's image settings; a `response_format` other than b64_json is a 400."""
    if body.response_format not in (None, "b64_json"):
        raise APIError(
            400,
            f"response_format: only b64_json is supported (the images come back in the response), "
            f"not {body.response_format!r}",
            param="response_format",
        )
    extra = body.model_extra or {}
    steps = body.steps if body.steps is not None else extra.get("steps")
    guidance = body.guidance if body.guidance is not None else extra.get("guidance")
    for name, value, kind in (("steps", steps, int), ("guidance", guidance, (int, float))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise APIError(400, f"{name} must be a number, not {value!r}", param=name)
    return ImageFields(
        size=body.size,
        steps=steps,
        guidance=None if guidance is None else float(guidance),
        seed=body.seed,
        n=1 if body.n is None else body.n,
    )


async def start_images(serving: Serving, model: str, prompt: str, fields: ImageFields) -> Generation:
    """Start an image request on the model's instance (launched if need be); a text model, or a
    field the model refuses, is a 400 naming it."""
    try:
        return await serving.start(model, GenerateRequest(prompt=prompt, image=fields))
    except APIError as error:
        if error.status == 400 and error.param is None:
            error.param = error.message.split(" ", 1)[0].split(":", 1)[0] or None
        raise


async def collect_images(generation: Generation) -> Images:
    """Run an image request to its end; a failure is a 503. Closes the generation."""
    try:
        async for event in generation.image_events():
            if isinstance(event, Images):
                return event
    except GenerationFailed as error:
        raise APIError(
            503, f"the request failed on instance {generation.instance.instance_id}: {error}"
        ) from None
    finally:
        await generation.aclose()
    raise APIError(503, "the instance ended the request without its images")


def openai_images(images: Images, prompt: str) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": png, "revised_prompt": prompt} for png in images.png_base64],
        "output_format": "png",
        "size": f"{images.width}x{images.height}",
        "seed": images.seed,
        "steps": images.steps,
    }


async def image_stream(generation: Generation) -> AsyncIterator[bytes]:
    created = int(time.time())
    try:
        async for event in generation.image_events():
            if isinstance(event, ImageProgress):
                progress = {"type": "image_generation.progress", "step": event.step, "steps": event.steps}
                yield sse(progress, event="image_generation.progress")
                continue
            for index, png in enumerate(event.png_base64):
                completed = {
                    "type": "image_generation.completed",
                    "index": index,
                    "b64_json": png,
                    "created_at": created,
                    "output_format": "png",
                    "size": f"{event.width}x{event.height}",
                    "seed": event.seed,
                    "seconds": event.seconds,
                }
                yield sse(completed, event="image_generation.completed")
    except GenerationFailed as error:
        yield sse({"type": "error", "error": {"message": str(error)}}, event="error")


@router.post("/v1/images/generations", summary="Images from a prompt (OpenAI-compatible)")
async def images_generations(body: ImageGenerationRequest, request: Request) -> Any:
    fields = image_fields(body)
    model = without_default_tag(body.model)
    generation = await start_images(serving_of(request), model, body.prompt, fields)
    if body.stream:
        return GenerationResponse(image_stream(generation), generation, SSE)
    return openai_images(await collect_images(generation), body.prompt)
