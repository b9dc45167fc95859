"""Request checks: every bad field is refused with one line that names it (the API's 400)."""

from __future__ import annotations

import pytest

from tandem.errors import InvalidRequestError
from tandem.model.image_config import FlowMatchConfig, FluxTransformerConfig, ImageModelConfig, VaeConfig
from tandem.model.image_request import MAX_SEED, check_model_task, image_request, parse_size

DEV = ImageModelConfig(
    name="flux-dev",
    transformer=FluxTransformerConfig(guidance_embeds=True),
    scheduler=FlowMatchConfig(shift=3.0, use_dynamic_shifting=True),
    vae=VaeConfig(),
)


def test_defaults_are_the_models():
    request = image_request(DEV, "a cat")
    assert (request.width, request.height, request.steps, request.guidance, request.n) == (
        1024,
        1024,
        28,
        3.5,
        1,
    )
    assert 0 <= request.seed <= MAX_SEED
    assert request.latent_grid(DEV) == (64, 64) and request.image_tokens(DEV) == 4096


def test_size_and_fields():
    request = image_request(DEV, "a cat", size="512x768", steps=4, guidance=0, seed=7, n=3)
    assert (request.width, request.height, request.steps, request.guidance, request.seed, request.n) == (
        512,
        768,
        4,
        0.0,
        7,
        3,
    )
    assert request.latent_grid(DEV) == (48, 32)
    assert parse_size(" 1024 x 1024 ") == (1024, 1024)


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (dict(size="1000x1024"), "size (width)", "multiple of 16"),
        (dict(size="1024x1030"), "size (height)", "multiple of 16"),
        (dict(size="4096x1024"), "size (width)", "2048"),
        (dict(size="big"), "size", "WIDTHxHEIGHT"),
        (dict(size=1024), "size", "WIDTHxHEIGHT"),
        (dict(size="1024x1024", width=512), "size", "not both"),
        (dict(width=0), "width", "between 16 and 2048"),
        (dict(width=1024.0), "width", "integer"),
        (dict(height=8), "height", "multiple of 16"),
        (dict(height=2064), "height", "2048"),
        (dict(steps=0), "steps", "1 to 100"),
        (dict(steps=101), "steps", "1 to 100"),
        (dict(steps=2.5), "steps", "integer"),
        (dict(steps=True), "steps", "integer"),
        (dict(guidance=-0.5), "guidance", "0 to 20"),
        (dict(guidance=25), "guidance", "0 to 20"),
        (dict(guidance=float("nan")), "guidance", "number"),
        (dict(guidance="high"), "guidance", "number"),
        (dict(n=0), "n", "1 to 10"),
        (dict(n=11), "n", "1 to 10"),
        (dict(seed=-1), "seed", "integer from 0"),
        (dict(seed=2**63), "seed", "integer from 0"),
        (dict(seed="7"), "seed", "integer from 0"),
    ],
)
def test_bad_field_is_named(fields, field, says):
    with pytest.raises(InvalidRequestError) as raised:
        image_request(DEV, "a cat", **fields)
    message = str(raised.value)
    assert message.startswith(field) and says in message
    assert "\n" not in message


@pytest.mark.parametrize("prompt", ["", "   ", None, 42, ["a cat"]])
def test_bad_prompt_is_named(prompt):
    with pytest.raises(InvalidRequestError, match=r"^prompt"):
        image_request(DEV, prompt)


def test_limits_follow_the_vae():
    """A VAE with a scale factor of 4 makes sizes go by 8 pixels."""
    coarse = ImageModelConfig(
        name="small-vae",
        transformer=FluxTransformerConfig(),
        scheduler=FlowMatchConfig(),
        vae=VaeConfig(scale_factor=4),
        limits=DEV.limits.__class__(pixel_multiple=8),
    )
    assert image_request(coarse, "a cat", size="520x264").latent_grid(coarse) == (33, 65)
    with pytest.raises(InvalidRequestError, match="multiple of 8 "):
        image_request(coarse, "a cat", size="524x264")


def test_model_asked_for_the_wrong_task():
    check_model_task("flux-dev", is_image_model=True, wants_images=True)
    check_model_task("llama", is_image_model=False, wants_images=False)
    with pytest.raises(InvalidRequestError, match=r"^model 'flux-dev' makes images"):
        check_model_task("flux-dev", is_image_model=True, wants_images=False)
    with pytest.raises(InvalidRequestError, match=r"^model 'llama' is a text model"):
        check_model_task("llama", is_image_model=False, wants_images=True)
