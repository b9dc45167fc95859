"""PNG files: what we write decodes (with Pillow, an independent reader) to the same pixels."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from images.tiny_flux import T5_MAX_LENGTH
from tandem.engine.images.png import encode_png


def test_png_round_trip():
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(pixels)))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (40, 24)
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_refuses_other_arrays():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="3"):
        encode_png(np.zeros((4, 4), dtype=np.uint8))


def test_generated_png_decodes(tiny_flux_factory):
    """A generated image, as the API will send it (base64 PNG), decodes to its pixels."""
    import torch

    from tandem.engine.images.pipeline import FluxImagePipeline
    from tandem.model.image_config import load_image_model_config

    path = tiny_flux_factory("schnell").path
    config = replace(load_image_model_config(path), max_sequence_length=T5_MAX_LENGTH)
    pipeline = FluxImagePipeline.from_checkpoint(path, torch.device("cpu"), torch.float32, config=config)
    result = pipeline.generate(pipeline.request("a red tree", size="32x48", steps=2, seed=3, n=2))
    for index in range(2):
        b64_json = base64.b64encode(result.png(index)).decode()
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_json))))
        assert decoded.shape == (48, 32, 3)
        assert np.array_equal(decoded, result.pixels[index])
    assert result.seed == 3 and result.steps == 2 and result.seconds > 0
