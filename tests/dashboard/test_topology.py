"""The cluster view's topology drawing, in real Chromium against real nodes: a box per node, a
line between linked nodes labelled with the bandwidth measured each way, and which stage of
which instance runs on each node (an instance forced across both nodes shows on both)."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from dashboard.pages import open_page, screenshot
from nodes import launch, wait_for


def test_the_topology_draws_nodes_links_and_where_each_stage_runs(browser, cluster):
    alpha, _ = cluster.nodes
    names = dict(zip(cluster.ids, cluster.names, strict=True))
    wait_for(lambda: len(alpha.cluster()["links"]) == 2, timeout=60, what="both links measured")
    instance = launch(alpha, model="demo", devices=[f"{node_id}/cpu" for node_id in cluster.ids])
    try:
        with open_page(browser, alpha.url) as page:
            picture = page.get_by_role("list", name="Cluster topology")
            expect(picture).to_be_visible()
            boxes = picture.get_by_role("listitem")
            expect(boxes).to_have_count(2)
            label = picture.locator(".topology-link-label")
            expect(label).to_have_count(1)
            # Both directions, with the numbers the cluster state holds (as the page rounds them).
            view = alpha.cluster()
            for link in view["links"]:
                source, target = names[link["source"]], names[link["target"]]
                expect(label).to_contain_text(
                    re.compile(rf"{source} → {target} [\d.]+ [kMGT]?bit/s"), timeout=40_000
                )
            for stage_index, stage in enumerate(instance["placement"]["stages"]):
                ((node_id, device),) = stage["members"]
                start, end = stage["layers"]["start"], stage["layers"]["end"]
                span = f"layer {start}" if end - start == 1 else f"layers {start}–{end - 1}"
                box = picture.get_by_role("listitem", name=re.compile(rf"^{names[node_id]}: "))
                expect(box).to_have_attribute(
                    "aria-label", re.compile(rf"demo stage {stage_index + 1} of 2 \({span}\) on {device}")
                )
                expect(box.locator(".topology-stage")).to_have_attribute(
                    "data-instance", instance["instance_id"]
                )
            assert set(cluster.names) == {
                box.get_attribute("aria-label").split(":")[0] for box in boxes.all()
            }
            screenshot(page.locator("#topology"), "topology-two-nodes")
    finally:
        assert alpha.http.delete(f"/v1/instances/{instance['instance_id']}").status_code == 200
    # The instance gone, the boxes say so.
    with open_page(browser, alpha.url) as page:
        expect(
            page.get_by_role("list", name="Cluster topology").get_by_role("listitem").first
        ).to_have_attribute("aria-label", re.compile(r"no stages$"))
