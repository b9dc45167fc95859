"""Getting into the dashboard of a node with an API key, in real Chromium: the page asks for the
key instead of reconnecting forever, says so when the key is wrong, keeps a good key in the
browser and sends it on every call (state stream, model list, placement preview). A browser on
another machine reaching a local-only node gets a page that says how to get in: that is
tests/cluster/test_exposure_nodes.py, across network namespaces."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot, unnamed_controls
from nodes import NodeProcess, start_node, wait_for

API_KEY = "dashboard-test-key-4242"
REFUSED = r"status of 401"  # Chromium's console note on each refused call


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory, slow_model):
    node = start_node(
        tmp_path_factory.mktemp("keyed"),
        "keyed",
        [],
        api_key=API_KEY,
        extra_args=("--name", "keyed", "--models-dir", str(slow_model.parent)),
    )
    try:
        wait_for(node.cluster, timeout=60, what="the keyed node to answer")
        yield node
    finally:
        node.stop()


def test_the_page_asks_for_the_key_and_says_when_it_is_wrong(browser, keyed_node: NodeProcess):
    with open_page(browser, keyed_node.url, expected_errors=REFUSED) as page:
        expect(page.locator("#connection")).to_have_text("API key needed")
        prompt = page.get_by_role("region", name="API key")
        expect(prompt).to_be_visible()
        expect(prompt.get_by_role("status")).to_contain_text("This node requires an API key")
        assert unnamed_controls(page) == []
        screenshot(page, "api-key-prompt")

        prompt.get_by_label("Key", exact=True).fill("not-the-key")
        prompt.get_by_role("button", name="Use key").click()
        expect(prompt.get_by_role("status")).to_have_text(
            "That key is not valid for this node. Enter the key it was started with."
        )
        expect(page.locator("#connection")).to_have_text("API key needed")
        screenshot(page, "api-key-wrong")

        prompt.get_by_label("Key", exact=True).fill(API_KEY)
        prompt.get_by_label("Remember on this browser").check()
        prompt.get_by_role("button", name="Use key").click()
        expect(page.locator("#connection")).to_have_text("live")
        expect(prompt).to_be_hidden()
        # The key reached the other calls too: the node's models are listed and fit.
        expect(page.get_by_role("radio", name=re.compile(r"endless-tiny"))).to_be_visible()
        expect(page.get_by_role("button", name="Forget API key")).to_be_visible()

        # Kept in the browser: a reload goes straight in.
        page.reload()
        expect(page.locator("#connection")).to_have_text("live")
        expect(page.get_by_role("region", name="API key")).to_be_hidden()
        assert page.evaluate("localStorage.getItem('tandem-api-key')") == API_KEY

        # Forgetting it asks again.
        page.get_by_role("button", name="Forget API key").click()
        expect(page.locator("#connection")).to_have_text("API key needed")
        assert page.evaluate("localStorage.getItem('tandem-api-key')") is None


def test_a_launch_from_the_page_carries_the_key(browser, keyed_node: NodeProcess):
    with open_page(browser, keyed_node.url, expected_errors=REFUSED) as page:
        prompt = page.get_by_role("region", name="API key")
        prompt.get_by_label("Key", exact=True).fill(API_KEY)
        prompt.get_by_role("button", name="Use key").click()  # this tab only (sessionStorage)
        expect(page.locator("#connection")).to_have_text("live")
        assert page.evaluate("sessionStorage.getItem('tandem-api-key')") == API_KEY
        assert page.evaluate("localStorage.getItem('tandem-api-key')") is None
        page.get_by_role("radio", name=re.compile(r"endless-tiny")).check()
        page.get_by_role("button", name="Preview placement").click()
        expect(page.locator("#preview")).to_contain_text(
            re.compile(r"Preview: .*endless-tiny"), timeout=30_000
        )
