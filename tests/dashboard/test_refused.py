"""A node started with another cluster's secret is refused by the peer it was told of: it says so
in its own log and at the top of its own dashboard (real nodes, real Chromium), and the notice
goes once the peer accepts it."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot
from nodes import start_node, wait_for


def test_a_node_with_the_wrong_secret_says_so_in_its_log_and_dashboard(browser, tmp_path):
    good = start_node(tmp_path, "good", [], extra_args=("--name", "good"))
    stranger = start_node(
        tmp_path,
        "stranger",
        [good.address],
        secret="another-cluster-secret-98765",
        extra_args=("--name", "stranger"),
    )
    try:
        for node in (good, stranger):
            wait_for(node.cluster, timeout=60, what=f"{node.address} to answer")
        wait_for(lambda: stranger.cluster()["refused_by"], timeout=30, what="the refusal to be noted")
        assert "refused our signature" in stranger.log_text()
        [entry] = stranger.cluster()["refused_by"]
        assert entry["address"] == good.address and "another secret" in entry["message"]
        assert good.cluster()["refused_by"] == []
        with open_page(browser, stranger.url) as page:
            notice = page.get_by_role("alert")
            expect(notice).to_contain_text("A peer refused this node: it holds another cluster secret.")
            expect(notice).to_contain_text(re.compile(rf"{re.escape(good.address)} refused our signature"))
            expect(notice).to_contain_text("TANDEM_SECRET")
            screenshot(page, "refused-by-peer")
        # The good node's own page has no such notice.
        with open_page(browser, good.url) as page:
            expect(page.locator("#connection")).to_have_text("live")
            expect(page.locator(".refusals")).to_have_count(0)
    finally:
        stranger.stop()
        good.stop()
