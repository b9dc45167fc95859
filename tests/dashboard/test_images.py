"""The dashboard's images panel in a real headless Chromium: an image model split over two node
processes appears in its picker, a prompt streams step progress and lands in the gallery as a
decodable PNG of the asked size, the same image the API makes for that seed."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image
from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot, unnamed_controls
from nodes import running_nodes, wait_for

PROMPT = "a red kite over green hills"


def test_prompt_streams_progress_into_the_gallery(browser, tmp_path, tmp_path_factory):
    from images.tiny_flux import build_tiny_flux

    checkpoint = build_tiny_flux(tmp_path_factory.mktemp("dashboard-images") / "flux-dev", "dev")
    model = str(checkpoint.path)
    with running_nodes(tmp_path, 2, extra_args=("--models-dir", model)) as nodes:
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 2 for n in nodes), timeout=30, what="2 nodes")
        coordinator = nodes[0].cluster()["coordinator"]
        taker = next(node for node in nodes if node.node_id == coordinator)
        devices = [f"{node.node_id}/cpu" for node in nodes]
        launched = taker.http.post(
            "/v1/instances",
            json={"model": model, "devices": devices, "min_stages": 2, "dtype": "float32", "wait": True},
            timeout=300,
        )
        assert launched.status_code == 200 and launched.json()["status"] == "ready", launched.text
        with open_page(browser, nodes[1].url + "/") as page:
            picker = page.get_by_label("Image model")
            expect(picker).to_contain_text("flux-dev", timeout=30_000)
            page.get_by_label("Width").fill("32")
            page.get_by_label("Height").fill("48")
            page.get_by_label("Steps", exact=True).fill("4")
            page.get_by_label("Seed").fill("21")
            page.get_by_label("Image prompt").fill(PROMPT)
            progress = page.get_by_role("progressbar", name="Denoising progress")
            steps_seen = page.evaluate_handle(
                """() => {
                    const seen = [];
                    const status = document.querySelector("#images .form-status");
                    new MutationObserver(() => seen.push(status.textContent)).observe(status, {childList: true, characterData: true, subtree: true});
                    return seen;
                }"""
            )
            page.get_by_role("button", name="Make image").click()
            item = page.get_by_role("list", name="Gallery").get_by_role(
                "listitem", name=re.compile(re.escape(PROMPT))
            )
            expect(item).to_have_count(1, timeout=60_000)
            expect(item).to_contain_text("32x48 · seed 21")
            expect(page.locator("#images .form-status")).to_contain_text("done in")
            assert progress.get_attribute("value") == "4"
            seen = steps_seen.json_value()
            assert [s for s in seen if s.startswith("step ")] == [f"step {k} of 4" for k in range(1, 5)], seen
            source = item.get_by_role("img").get_attribute("src") or ""
            assert source.startswith("data:image/png;base64,")
            shown = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
            assert shown.size == (32, 48)
            assert unnamed_controls(page) == []
            screenshot(page.locator("#images"), "images-gallery")
        answer = nodes[0].http.post(
            "/v1/images/generations",
            json={"model": model, "prompt": PROMPT, "size": "32x48", "steps": 4, "seed": 21},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"][0]["b64_json"] == source.split(",", 1)[1]
