"""FLUX.1 with its transformer's blocks quantized as they load (`quantize: int8|int4`): the tiny
random checkpoint gives the image of diffusers' FluxPipeline run on the same weights quantized
and dequantized by the test (its own rule, `tests/quant_checkpoints.py`), whole and in 2 stages;
the embedders, conditioning, output layers, text encoders and VAE stay in their dtype."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from images.dequantized import BLOCKS, dequantized_reference
from images.tiny_flux import T5_MAX_LENGTH
from tandem.engine.images.loader import load_transformer_stage
from tandem.engine.images.pipeline import FluxImagePipeline
from tandem.engine.quant.linear import QuantizedLinear
from tandem.errors import InvalidRequestError
from tandem.model.image_config import load_image_model_config, loaded_image_quantize

CPU = torch.device("cpu")
PROMPT = "a photo of an astronaut riding a horse on the moon"
HEIGHT, WIDTH = 48, 32
STEPS, GUIDANCE, SEED = 3, 3.5, 11


def reference_pixels(pipeline, n: int) -> np.ndarray:
    images = pipeline(
        PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        max_sequence_length=T5_MAX_LENGTH,
        num_images_per_prompt=n,
        output_type="pt",
    ).images
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("stages", [1, 2])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_image_matches_dequantized_flux_pipeline(tiny_flux_factory, mode, stages, record_property):
    checkpoint = tiny_flux_factory("dev")
    config = replace(load_image_model_config(checkpoint.path), max_sequence_length=T5_MAX_LENGTH)
    pipeline = FluxImagePipeline.from_checkpoint(
        checkpoint.path, CPU, torch.float32, stages=stages, config=config, quantize=mode
    )
    request = pipeline.request(
        PROMPT, width=WIDTH, height=HEIGHT, steps=STEPS, guidance=GUIDANCE, seed=SEED, n=2
    )
    pixels = pipeline.generate(request).pixels
    expected = reference_pixels(dequantized_reference(checkpoint, mode), 2)
    unquantized = reference_pixels(checkpoint.pipeline, 2)
    difference = int(np.abs(pixels.astype(int) - expected.astype(int)).max())
    moved = int(np.abs(unquantized.astype(int) - expected.astype(int)).max())
    record_property("max_pixel_difference", difference)
    print(
        f"{mode}, {stages} stage(s): max pixel difference {difference} (quantizing moved pixels by {moved})"
    )
    assert expected.std() > 10  # an image, not a flat field
    assert moved > 1  # the comparison can tell quantized weights from the 16/32-bit ones
    assert difference <= 1


@pytest.mark.parametrize("mode", ["int8", "int4", "fp8"])
def test_only_block_projections_are_quantized(tiny_flux_factory, mode):
    checkpoint = tiny_flux_factory("dev")
    config = load_image_model_config(checkpoint.path).transformer
    model = load_transformer_stage(checkpoint.path, config, None, CPU, torch.bfloat16, mode)
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    dense = {name for name, m in model.named_modules() if type(m) is nn.Linear}
    assert quantized and all(name.startswith(BLOCKS) for name in quantized)
    assert not any(name.startswith(BLOCKS) for name in dense)
    assert {"x_embedder", "context_embedder", "proj_out", "norm_out.linear"} <= dense
    assert any(name.startswith("time_text_embed.") for name in dense)
    # q/k/v (and the single blocks' MLP input) still run as one product
    assert "transformer_blocks.0.attn.to_qkv" in quantized
    assert "single_transformer_blocks.0.qkv_mlp" in quantized
    kinds = {m.kind for m in model.modules() if isinstance(m, QuantizedLinear)}
    assert kinds == {mode}
    dense_model = load_transformer_stage(checkpoint.path, config, None, CPU, torch.bfloat16)
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    assert held < sum(p.numel() * p.element_size() for p in dense_model.parameters())


def _quantized_config(checkpoint_path, tmp_path, key: str, value):
    directory = tmp_path / f"stored-{key}"
    import shutil

    shutil.copytree(checkpoint_path, directory)
    config_path = directory / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    return directory


def test_quantize_on_a_stored_quantized_transformer_is_one_line(tiny_flux_factory, tmp_path):
    checkpoint = tiny_flux_factory("schnell")
    assert loaded_image_quantize(load_image_model_config(checkpoint.path), "int4") == "int4"
    assert loaded_image_quantize(load_image_model_config(checkpoint.path), None) is None
    stored = {
        "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True},
        "quantization": {"group_size": 64, "bits": 4},  # MLX's affine-quantized layout
    }
    for key, value in stored.items():
        config = load_image_model_config(_quantized_config(checkpoint.path, tmp_path, key, value))
        with pytest.raises(InvalidRequestError, match=r"^quantize int8: .*already quantized"):
            loaded_image_quantize(config, "int8")
    with pytest.raises(InvalidRequestError, match=r"^unsupported quantize 'fp8' for an image model"):
        loaded_image_quantize(load_image_model_config(checkpoint.path), "fp8")
