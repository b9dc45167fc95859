"""The model list stays compact with many models, in real Chromium: a node offering 15 checkpoint
folders beside the bundled demo and the catalog (more than 40 in all) lists those that fit first,
keeps each reason it does not fit folded until asked, filters by a search, and keeps Preview and
Launch in reach without scrolling past the list."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot, unnamed_controls
from nodes import NodeProcess, start_node, wait_for

SMALL, HUGE = 10, 5


@pytest.fixture(scope="module")
def library(tmp_path_factory, slow_model):
    """Checkpoint folders: small ones (the slow model's config, fewer layers) and huge ones (the
    same family, wide and deep: far beyond this machine). Listing reads configs and file sizes."""
    folder = tmp_path_factory.mktemp("library")
    config = json.loads((slow_model / "config.json").read_text())
    weights = next(slow_model.glob("*.safetensors"))
    for index in range(SMALL + HUGE):
        huge = index >= SMALL
        target = folder / (f"giant-{index:02d}" if huge else f"pocket-{index:02d}")
        target.mkdir()
        shape = (
            {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126}
            if huge
            else {"num_hidden_layers": 1 + index % 8}
        )
        (target / "config.json").write_text(json.dumps({**config, **shape}))
        shutil.copy(weights, target / weights.name)
    node = start_node(
        tmp_path_factory.mktemp("library-node"),
        "library",
        [],
        extra_args=("--name", "library", "--models-dir", str(folder)),
    )
    try:
        wait_for(node.cluster, timeout=60, what="the library node to answer")
        yield node
    finally:
        node.stop()


def rows(page):
    return page.locator("#model-list .model")


def test_many_models_fits_first_reasons_folded_search_and_launch_in_reach(browser, library: NodeProcess):
    listed = library.http.get("/v1/cluster/models").json()["models"]
    assert len(listed) > 40
    fitting = sum(1 for model in listed if model["fits"])
    with open_page(browser, library.url) as page:
        expect(rows(page)).to_have_count(len(listed), timeout=60_000)
        expect(page.locator("#model-count")).to_have_text(f"{len(listed)} models · {fitting} fit now")
        # Fits first: every fitting row comes before every other.
        fits = [
            status == "fits" or status.startswith("fits ·")
            for status in rows(page).locator(".status").all_inner_texts()
        ]
        assert fits == sorted(fits, reverse=True) and fits.count(True) == fitting
        # The first choice is a model that fits.
        assert page.locator("#model-list input:checked").get_attribute("value") in {
            m["name"] for m in listed if m["fits"]
        }

        # Preview and Launch are in view with the models section at the top of the window.
        page.locator("#models").evaluate("element => element.scrollIntoView({block: 'start'})")
        for name in ("Preview placement", "Launch"):
            expect(page.get_by_role("button", name=name, exact=True)).to_be_in_viewport()
        screenshot(page, "models-many-laptop", full_page=False)

        # A reason is folded until asked for.
        giant = rows(page).filter(has_text="giant-10")
        reason = giant.locator(".model-reason")
        expect(reason).to_be_hidden()
        giant.get_by_text("Why it does not fit").click()
        expect(reason).to_be_visible()
        expect(reason).to_have_text(re.compile(r"\d"))  # in numbers
        screenshot(giant, "model-why-not")

        # Search: every word must match; the chosen model stays chosen.
        search = page.get_by_role("searchbox", name="Search models")
        search.fill("pocket")
        visible = page.locator("#model-list .model:not([hidden])")
        expect(visible).to_have_count(SMALL)
        expect(page.locator("#model-count")).to_have_text(f"{SMALL} of {len(listed)} shown · {SMALL} fit now")
        search.fill("giant 1")
        expect(visible).to_have_count(HUGE)  # giant-10 … giant-14
        search.press("Enter")  # not a launch
        expect(page.locator("#launch-status")).to_have_text("")
        search.fill("")
        expect(visible).to_have_count(len(listed))

        visible.filter(has_text="pocket-03").get_by_role("radio").check()
        page.get_by_role("button", name="Preview placement").click()
        expect(page.locator("#preview")).to_contain_text(re.compile(r"Preview: .*pocket-03"), timeout=30_000)
        assert unnamed_controls(page) == []
