"""A FLUX.1 launch with `quantize: int4` over 2 node processes (a runner each), asked through the
API with the official `openai` client: decodable PNGs equal to FluxPipeline's on the same files
with the block projections quantized and dequantized by the test; a format images do not take
and a transformer stored quantized are 400s naming `quantize`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openai
import pytest
import torch

from images.dequantized import dequantized_reference
from images.test_serving import decoded, launch_split
from images.tiny_flux import build_tiny_flux
from nodes import running_nodes

PROMPT = "a lighthouse on a cliff at dusk"
WIDTH, HEIGHT = 32, 48
STEPS, SEED, GUIDANCE = 3, 11, 4.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models directory with the tiny checkpoint and a copy whose transformer says it is
    stored quantized (bitsandbytes)."""
    root = tmp_path_factory.mktemp("quantized-models")
    checkpoint = build_tiny_flux(root / "flux-dev", "dev")
    stored = root / "flux-stored-quantized"
    shutil.copytree(checkpoint.path, stored)
    config_path = stored / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config_path.write_text(json.dumps(config))
    return root, checkpoint, stored


def test_int4_launch_over_two_nodes_matches_the_dequantized_pipeline(models, tmp_path, record_property):
    root, checkpoint, stored = models
    model = str(checkpoint.path)
    with running_nodes(tmp_path, 2, extra_args=("--models-dir", str(root))) as nodes:
        http = nodes[1].http
        bad_format = http.post("/v1/instances", json={"model": model, "quantize": "fp8"}, timeout=60)
        assert bad_format.status_code == 400, bad_format.text
        assert bad_format.json()["error"].startswith("quantize: "), bad_format.text
        already = http.post("/v1/placements", json={"model": str(stored), "quantize": "int8"}, timeout=60)
        assert already.status_code == 400, already.text
        assert already.json()["error"].startswith(
            "quantize int8: this checkpoint's transformer is already quantized (bitsandbytes)"
        )

        instance = launch_split(nodes, model, quantize="int4")
        assert instance["placement"]["request"]["quantize"] == "int4"
        assert instance["placement"]["weight_format"] == "int4 (groups of 128, asymmetric), quantized at load"
        client = openai.OpenAI(base_url=f"{nodes[-1].url}/v1", api_key="unused", max_retries=0)
        response = client.images.generate(
            model=model,
            prompt=PROMPT,
            size=f"{WIDTH}x{HEIGHT}",
            n=2,
            response_format="b64_json",
            extra_body={"seed": SEED, "steps": STEPS, "guidance": GUIDANCE},
        )
        assert response.data is not None and len(response.data) == 2
        pixels = np.stack([decoded(image.b64_json or "") for image in response.data])
    images = dequantized_reference(checkpoint, "int4")(
        PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        num_images_per_prompt=2,
        output_type="pt",
    ).images
    expected = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    difference = int(np.abs(pixels.astype(int) - expected.astype(int)).max())
    record_property("max_pixel_difference", difference)
    print(f"int4 over 2 node processes: max pixel difference {difference}")
    assert pixels.shape == (2, HEIGHT, WIDTH, 3)
    assert expected.std() > 10  # an image, not a flat field
    assert difference <= 1
