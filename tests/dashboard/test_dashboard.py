"""The dashboard in a real headless Chromium against real node processes on loopback: the nodes
and links appear, a launch shows its placement across both nodes, chat streams the same greedy
answer as the API, Stop ends an answer and frees its slot, and cards follow nodes joining and
leaving. Screenshots land in artifacts/screenshots/."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from dashboard.pages import PHONE, open_page, screenshot, unnamed_controls
from nodes import NodeProcess, generate, start_node

LAUNCH_TIMEOUT_MS = 120_000
ANSWER_TIMEOUT_MS = 60_000


def node_cards(page):
    return page.get_by_role("list", name="Nodes").get_by_role("listitem", name=re.compile(r"^node "))


def node_card(page, name: str):
    return page.get_by_role("list", name="Nodes").get_by_role("listitem", name=f"node {name}")


def instance_card(page, model: str):
    return page.get_by_role("list", name="Instances").get_by_role(
        "listitem", name=re.compile(rf"^instance {re.escape(model)} ")
    )


def ask(page, text: str, timeout: float = ANSWER_TIMEOUT_MS):
    """Send a chat message and wait until its answer is complete; the answer's element."""
    answers = page.locator(".message-assistant")
    before = answers.count()
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    answer = answers.nth(before)
    expect(answer).to_have_attribute("aria-busy", "false", timeout=timeout)
    return answer


def api_answer(node: NodeProcess, instance_id: str, messages: list[dict], params: dict) -> str:
    events = generate(node, instance_id, messages=messages, params=params)
    assert events[0]["type"] == "accepted", events
    return "".join(event["text"] for event in events if event["type"] == "token")


def launch_from_ui(page, model_pattern: str, *, devices=(), sequences: str = "", context: str = ""):
    page.get_by_role("radio", name=re.compile(model_pattern)).check()
    options = page.locator("details.options")
    if not options.evaluate("element => element.open"):
        page.get_by_text("Launch options").click()
    page.get_by_label("Sequences at once").fill(sequences)
    page.get_by_label("Context (tokens)").fill(context)
    for box in page.get_by_role("checkbox").all():
        box.uncheck()
    for device in devices:
        page.get_by_role("checkbox", name=device).check()
    page.get_by_role("button", name="Launch", exact=True).click()


def test_the_page_shows_every_node_its_devices_and_the_links(browser, cluster):
    alpha = cluster.nodes[0]
    coordinator = alpha.cluster()["coordinator"]
    with open_page(browser, alpha.url) as page:
        expect(node_cards(page)).to_have_count(2)
        for name, node_id in zip(cluster.names, cluster.ids, strict=True):
            card = node_card(page, name)
            expect(card).to_have_attribute("data-node-id", node_id)
            expect(card.get_by_role("meter", name=f"{name} CPU memory")).to_have_attribute(
                "aria-valuetext", re.compile(r"^[\d.]+ [kMG]?B of [\d.]+ GB used$")
            )
            # CPU load comes from the OS on every node; it shows once a heartbeat has read it.
            expect(card.get_by_role("meter", name=f"{name} CPU utilization")).to_be_visible()
            badge = card.get_by_text("coordinator", exact=True)
            expect(badge).to_have_count(1 if node_id == coordinator else 0)
        expect(node_card(page, "alpha").get_by_text("this node", exact=True)).to_be_visible()
        expect(page.locator("#connection")).to_have_text("live")

        # Both directions of the link, once measured (heartbeat round trips and a timed download).
        rows = page.locator("table.links tbody tr")
        expect(rows).to_have_count(2, timeout=30_000)
        expect(rows.nth(0)).to_contain_text(
            re.compile(r"alpha\s*beta\s*[\d.]+ (µs|ms)\s*[\d.]+ [kMGT]?bit/s")
        )
        expect(rows.nth(1)).to_contain_text(re.compile(r"beta\s*alpha"))
        screenshot(page, "cluster-laptop")
    with open_page(browser, alpha.url, color_scheme="dark") as dark:
        expect(node_cards(dark)).to_have_count(2)
        screenshot(dark, "cluster-laptop-dark")


def test_launch_shows_the_placement_and_chat_streams_the_greedy_answer(browser, cluster):
    alpha, beta = cluster.nodes
    devices = [f"{node_id}/cpu" for node_id in cluster.ids]
    with open_page(browser, alpha.url) as page:
        demo = page.get_by_role("radio", name=re.compile(r"^demo"))
        expect(demo).to_be_visible()
        expect(page.locator(".model", has=demo)).to_contain_text(re.compile(r"fits · ~[\d.]+ tokens/s"))

        # The preview: one bar per node, the layers as the API plans them.
        demo.check()
        page.get_by_text("Launch options").click()
        page.get_by_role("checkbox", name="alpha · CPU").check()
        page.get_by_role("checkbox", name="beta · CPU").check()
        page.get_by_role("button", name="Preview placement").click()
        planned = alpha.http.post("/v1/placements", json={"model": "demo", "devices": devices}).json()
        rows = page.get_by_role("list", name="placement of demo").locator(".placement-row")
        expect(rows).to_have_count(2)
        for row, stage, name in zip(rows.all(), planned["placement"]["stages"], cluster.names, strict=True):
            start, end = stage["layers"]["start"], stage["layers"]["end"]
            span = f"layer {start}" if end - start == 1 else f"layers {start}–{end - 1}"
            expect(row).to_have_attribute("aria-label", f"{name}: {span} of 6")
        expect(page.locator(".preview-summary")).to_contain_text(
            re.compile(r"2 stages .* predicted [\d.]+ tokens/s")
        )
        screenshot(page, "preview-laptop")

        # Launch: the instance appears, starts, and shows where its stages run.
        page.get_by_role("button", name="Launch", exact=True).click()
        card = instance_card(page, "demo")
        expect(card.locator(".card-head .status")).to_have_text("ready", timeout=LAUNCH_TIMEOUT_MS)
        instance_id = card.get_attribute("data-instance-id")
        instance = alpha.http.get(f"/v1/instances/{instance_id}").json()
        assert [runner["node_id"] for runner in instance["runners"]] == cluster.ids
        bars = card.locator(".placement-row")
        expect(bars).to_have_count(2)
        for bar, node_id in zip(bars.all(), cluster.ids, strict=True):
            expect(bar).to_have_attribute("data-node-id", node_id)
            expect(bar.locator(".status")).to_have_text("ready")

        # Chat: greedy answers equal the API's for the same conversation, turn after turn.
        expect(page.get_by_label("Instance", exact=True)).to_have_value(instance_id)
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("40")
        params = {"temperature": 0, "max_tokens": 40}
        conversation: list[dict] = []
        for question in ("To be, or not to be?", "Speak again, bright angel."):
            answer = ask(page, question)
            conversation.append({"role": "user", "content": question})
            text = answer.locator(".message-body").get_attribute("data-markdown")
            assert text and text == api_answer(beta, instance_id, conversation, params)
            conversation.append({"role": "assistant", "content": text})
            expect(answer.locator(".message-body")).not_to_be_empty()
            expect(answer.locator(".message-stats")).to_have_text(
                re.compile(
                    r"^first token [\d.]+ (µs|ms|s) · \d+ tokens · [\d.]+ tokens/s · prompt \d+ tokens · "
                )
            )
        screenshot(page, "chat-laptop")
        assert unnamed_controls(page) == []  # with options open, an instance, and a conversation

        with open_page(
            browser, beta.url, viewport=PHONE, is_mobile=True, has_touch=True, reduced_motion="reduce"
        ) as phone:
            expect(instance_card(phone, "demo").locator(".card-head .status")).to_have_text("ready")
            ask(phone, "Good morrow.")
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            assert unnamed_controls(phone) == []
            screenshot(phone, "dashboard-phone")
            phone.get_by_role("link", name="Chat", exact=True).click()
            screenshot(phone, "chat-phone", full_page=False)

        card.get_by_role("button", name=f"Stop demo {instance_id}").click()
        expect(card).to_have_count(0)
        assert alpha.http.get("/v1/instances").json() == []


def test_stop_ends_an_answer_and_frees_its_slot(browser, cluster):
    alpha = cluster.nodes[0]
    with open_page(browser, alpha.url) as page:
        model = page.get_by_role("radio", name=re.compile(r"^endless-tiny"))
        expect(page.locator(".model", has=model)).to_contain_text(re.compile(r"directory.*fits.*parameters"))
        # One sequence at a time: if the stopped answer kept its slot, the next would wait ~40 s.
        launch_from_ui(page, r"^endless-tiny", sequences="1", context="4096")
        card = instance_card(page, "endless-tiny")
        expect(card.locator(".card-head .status")).to_have_text("ready", timeout=LAUNCH_TIMEOUT_MS)
        instance_id = card.get_attribute("data-instance-id")
        assert alpha.http.get(f"/v1/instances/{instance_id}").json()["num_slots"] == 1

        card.get_by_role("button", name=re.compile(r"^Chat with endless-tiny")).click()
        expect(page.get_by_label("Instance", exact=True)).to_have_value(instance_id)
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("4000")
        page.get_by_label("Message", exact=True).fill("Go on forever.")
        page.get_by_role("button", name="Send").click()
        answer = page.locator(".message-assistant").last
        stats = answer.locator(".message-stats")
        expect(stats).to_have_text(re.compile(r"^first token .* tokens/s"), timeout=ANSWER_TIMEOUT_MS)
        stop = page.get_by_role("button", name="Stop", exact=True)
        expect(stop).to_be_enabled()
        stop.click()
        expect(answer).to_have_attribute("aria-busy", "false", timeout=10_000)
        expect(stats).to_contain_text("stopped")
        expect(stop).to_be_disabled()
        tokens = int(re.search(r"(\d+) tokens? ·", stats.inner_text()).group(1))
        assert 0 < tokens < 4000, stats.inner_text()

        page.get_by_label("Max tokens").fill("5")
        answer = ask(page, "And now briefly.", timeout=20_000)
        expect(answer.locator(".message-stats")).to_contain_text("5 tokens")
        expect(answer.locator(".message-stats")).to_contain_text("reached the token limit")

        card.get_by_role("button", name=f"Stop endless-tiny {instance_id}").click()
        expect(card).to_have_count(0)


def test_cards_follow_a_node_joining_and_leaving(browser, cluster, tmp_path):
    alpha, beta = cluster.nodes
    with open_page(browser, beta.url) as page:
        cards = node_cards(page)
        expect(cards).to_have_count(2)
        gamma = start_node(tmp_path, "gamma", [alpha.address], extra_args=("--name", "gamma"))
        try:
            expect(node_card(page, "gamma")).to_be_visible(timeout=60_000)
            expect(cards).to_have_count(3)
            with open_page(browser, gamma.url, allow_errors=True) as on_gamma:
                expect(on_gamma.locator("#connection")).to_have_text("live")
                expect(node_cards(on_gamma)).to_have_count(3)
                screenshot(page, "three-nodes-laptop")
                gamma.stop()
                # The page gamma served says it lost its node (and keeps retrying).
                expect(on_gamma.locator("#connection")).to_have_text("reconnecting…", timeout=10_000)
        finally:
            gamma.stop()
        # The others notice after the peer timeout (5 s) and the coordinator publishes the change.
        expect(node_card(page, "gamma")).to_have_count(0, timeout=30_000)
        expect(cards).to_have_count(2)
