"""FLUX.1 served by a cluster of node processes: the tiny random checkpoint's transformer split
over 2 and 3 nodes (a runner process each), asked through the API with the official `openai`
client, gives FluxPipeline's image on the same files and seed (float32, max pixel difference
reported); bad fields are 400s naming them; step progress streams."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import ollama
import openai
import pytest
import torch
from PIL import Image

from nodes import launch, running_nodes, wait_for

PROMPT = "a lighthouse on a cliff at dusk"
WIDTH, HEIGHT = 32, 48
STEPS, SEED, GUIDANCE = 3, 11, 4.0
IMAGES = 4  # in flight through the stages together: more than the ring holds at once


def reference_pixels(checkpoint, n: int) -> np.ndarray:
    """FluxPipeline's images on the same files and seed, as 8-bit RGB [n, H, W, 3]."""
    images = checkpoint.pipeline(
        PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        num_images_per_prompt=n,
        output_type="pt",
    ).images
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def decoded(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def launch_split(nodes, model: str, **options) -> dict:
    """The model over every node's CPU, one stage each, launched through the coordinator
    (`options`: more fields of the launch body)."""
    wait_for(
        lambda: all(len(node.cluster()["nodes"]) == len(nodes) for node in nodes),
        timeout=30,
        what=f"{len(nodes)} nodes to meet",
    )
    coordinator = nodes[0].cluster()["coordinator"]
    taker = next(node for node in nodes if node.node_id == coordinator)
    devices = [f"{node.node_id}/cpu" for node in nodes]
    return launch(taker, model=model, devices=devices, min_stages=len(nodes), dtype="float32", **options)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from images.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("served") / "flux-dev", "dev")


@pytest.mark.parametrize("stages", [2, 3])
def test_split_over_nodes_matches_flux_pipeline(checkpoint, tmp_path, stages, record_property):
    model = str(checkpoint.path)
    with running_nodes(tmp_path, stages, extra_args=("--models-dir", model)) as nodes:
        instance = launch_split(nodes, model)
        assert len({runner["node_id"] for runner in instance["runners"]}) == stages
        assert any(note.startswith("compute-bound steps") for note in instance["placement"]["notes"])
        client = openai.OpenAI(base_url=f"{nodes[-1].url}/v1", api_key="unused", max_retries=0)
        response = client.images.generate(
            model=model,
            prompt=PROMPT,
            size=f"{WIDTH}x{HEIGHT}",
            n=IMAGES,
            response_format="b64_json",
            extra_body={"seed": SEED, "steps": STEPS, "guidance": GUIDANCE},
        )
        assert response.data is not None and len(response.data) == IMAGES
        pixels = np.stack([decoded(image.b64_json or "") for image in response.data])
    expected = reference_pixels(checkpoint, IMAGES)
    difference = int(np.abs(pixels.astype(int) - expected.astype(int)).max())
    record_property("max_pixel_difference", difference)
    print(f"{stages} node processes: max pixel difference {difference}")
    assert pixels.shape == (IMAGES, HEIGHT, WIDTH, 3)
    assert expected.std() > 10  # an image, not a flat field
    assert difference <= 1


def test_bad_fields_progress_tasks_and_ollama(checkpoint, tmp_path):
    """Over 2 nodes: each bad field is a 400 naming it, a text model refuses images and the
    image model refuses chat, a streamed request reports every step before its image, and the
    official `ollama` client gets the same image through Ollama's image fields."""
    model = str(checkpoint.path)
    with running_nodes(tmp_path, 2, extra_args=("--models-dir", model)) as nodes:
        instance = launch_split(nodes, model)
        http = nodes[1].http
        base = {"model": model, "prompt": PROMPT, "size": f"{WIDTH}x{HEIGHT}", "steps": 2}
        bad = {
            "size": {"size": "30x48"},
            "steps": {"steps": 0},
            "guidance": {"guidance": 99},
            "n": {"n": 11},
            "response_format": {"response_format": "url"},
            "prompt": {"prompt": " "},
        }
        for field, change in bad.items():
            answer = http.post("/v1/images/generations", json={**base, **change}, timeout=120)
            assert answer.status_code == 400, (field, answer.text)
            error = answer.json()["error"]
            assert error["param"] == field and field in error["message"], error
        too_big = http.post("/v1/images/generations", json={**base, "size": "4096x4096"}, timeout=120)
        assert too_big.status_code == 400 and "2048" in too_big.json()["error"]["message"]

        chat = http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )
        assert chat.status_code == 400 and "makes images" in chat.json()["error"]["message"], chat.text
        text_model = http.post("/v1/images/generations", json={**base, "model": "demo"}, timeout=300)
        assert text_model.status_code == 400, text_model.text
        assert text_model.json()["error"]["param"] == "model"

        events = []
        with http.stream(
            "POST", "/v1/images/generations", json={**base, "stream": True}, timeout=120
        ) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
        kinds = [event["type"] for event in events]
        assert kinds == ["image_generation.progress"] * 2 + ["image_generation.completed"], kinds
        assert [(e["step"], e["steps"]) for e in events[:2]] == [(1, 2), (2, 2)]
        assert decoded(events[-1]["b64_json"]).shape == (HEIGHT, WIDTH, 3)

        client = ollama.Client(host=nodes[1].url)
        reply = client.generate(
            model=model, prompt=PROMPT, width=WIDTH, height=HEIGHT, steps=2, options={"seed": 9}
        )
        assert reply.done and reply.image
        parts = list(
            client.generate(
                model=model,
                prompt=PROMPT,
                width=WIDTH,
                height=HEIGHT,
                steps=2,
                options={"seed": 9},
                stream=True,
            )
        )
        assert [(p.completed, p.total) for p in parts[:-1]] == [(1, 2), (2, 2)]
        assert parts[-1].image == reply.image  # the same seed, the same image
        unnamed = client.generate(
            model=model, prompt=PROMPT, options={"seed": 9}
        )  # no image field: the defaults
        assert decoded(unnamed.image or "").shape == (1024, 1024, 3)

        # a client that leaves mid-request: its request stops after the current step
        long = {**base, "size": "512x512", "steps": 100, "stream": True}
        with http.stream("POST", "/v1/images/generations", json=long, timeout=120) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line.removeprefix("data: "))["step"] == 1
                    break
        load = f"/v1/instances/{instance['instance_id']}/load"
        wait_for(lambda: http.get(load).json()["requests"] == 0, timeout=30, what="the request to stop")
        assert "the client left after 0 tokens; aborting its request" in nodes[1].log_text()
        again = http.post("/v1/images/generations", json={**base, "seed": 1}, timeout=120)
        assert again.status_code == 200 and decoded(again.json()["data"][0]["b64_json"]).shape == (
            HEIGHT,
            WIDTH,
            3,
        )
